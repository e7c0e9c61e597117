"""Documents and the readers that turn text files, JSONL and Parquet into them.

A `Document` is the unit every data step works on. Readers are generators, so a corpus larger
than memory streams through the pipeline; each fills a `ReadStats` as it goes, because a reader
that skips a malformed line or a binary file must say so rather than lose it quietly.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zstandard

from scratchlm.errors import UserError

StrPath = str | os.PathLike[str]
Paths = StrPath | Iterable[StrPath]

MAX_EXAMPLES = 100
"""How many malformed lines or binary files `ReadStats` lists by name; all are counted."""

_BINARY_SNIFF_BYTES = 8192
_JSONL_SUFFIXES = (".jsonl", ".json", ".zst", ".gz")
_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass
class Document:
    """One text with a stable id and free-form metadata (source, title, scores, ...)."""

    id: str
    text: str
    meta: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        """One JSON line (no newline), the on-disk form of a documents/ shard."""
        # Parquet metadata can hold dates or decimals; keep them readable instead of failing.
        return json.dumps(
            {"id": self.id, "text": self.text, "meta": self.meta}, ensure_ascii=False, default=str
        )

    @classmethod
    def from_json(cls, line: str) -> Document:
        """Parse a line written by `to_json`; raises ValueError on anything else."""
        record = json.loads(line)
        if not isinstance(record, dict):
            raise ValueError("not a JSON object")
        doc_id, text, meta = record.get("id"), record.get("text"), record.get("meta", {})
        if not isinstance(doc_id, str) or not isinstance(text, str) or not isinstance(meta, dict):
            raise ValueError('expected {"id": str, "text": str, "meta": object}')
        return cls(id=doc_id, text=text, meta=meta)


@dataclass
class ReadStats:
    """What readers saw and skipped, so a run can report every line it did not keep.

    `bytes` counts the UTF-8 bytes of the yielded texts (not of the files, which may be
    compressed), because that is the size later stages and bits-per-byte are measured in.
    """

    files: int = 0
    documents: int = 0
    bytes: int = 0
    malformed_lines: int = 0
    malformed_examples: list[str] = field(default_factory=list)
    invalid_utf8_documents: int = 0
    empty_files: int = 0
    binary_files: int = 0
    binary_examples: list[str] = field(default_factory=list)

    def add_document(self, size: int, invalid_utf8: bool) -> None:
        """Count a yielded document of `size` UTF-8 bytes."""
        self.documents += 1
        self.bytes += size
        if invalid_utf8:
            self.invalid_utf8_documents += 1

    def add_malformed(self, where: str, reason: str) -> None:
        """Count a skipped line; `where` is "file:line"."""
        self.malformed_lines += 1
        if len(self.malformed_examples) < MAX_EXAMPLES:
            self.malformed_examples.append(f"{where}: {reason}")

    def add_binary(self, path: Path) -> None:
        """Count a file skipped because it looks binary."""
        self.binary_files += 1
        if len(self.binary_examples) < MAX_EXAMPLES:
            self.binary_examples.append(str(path))

    def skipped(self) -> str:
        """What was skipped, by reason, with the first file (or file:line) of each kind, e.g.
        "2 malformed lines (first: a.jsonl:1: bad JSON (...)) and 1 binary file (first: /bin/ls,
        NUL bytes in its first 8192 bytes)"; "" when nothing was."""
        parts = []
        if self.malformed_lines:
            s = "s" if self.malformed_lines != 1 else ""
            parts.append(f"{self.malformed_lines:,} malformed line{s} (first: {self.malformed_examples[0]})")
        if self.binary_files:
            s = "s" if self.binary_files != 1 else ""
            parts.append(f"{self.binary_files:,} binary file{s} (first: {self.binary_examples[0]}, NUL bytes in its first {_BINARY_SNIFF_BYTES} bytes)")
        if self.empty_files:
            s = "s" if self.empty_files != 1 else ""
            parts.append(f"{self.empty_files:,} empty file{s}")
        return ", ".join(parts[:-1]) + " and " + parts[-1] if len(parts) > 1 else "".join(parts)

    def summary(self) -> str:
        """One line for the terminal, naming the first skipped item of each kind."""
        parts = [
            f"{self.documents:,} documents ({self.bytes / 1e6:,.1f} MB) from "
            f"{self.files:,} file{'s' if self.files != 1 else ''}"
        ]
        if self.malformed_lines:
            parts.append(
                f"{self.malformed_lines:,} malformed lines skipped "
                f"(first: {self.malformed_examples[0]})"
            )
        if self.binary_files:
            parts.append(
                f"{self.binary_files:,} binary files skipped (first: {self.binary_examples[0]})"
            )
        if self.empty_files:
            parts.append(f"{self.empty_files:,} empty files")
        if self.invalid_utf8_documents:
            parts.append(
                f"{self.invalid_utf8_documents:,} documents had invalid UTF-8 replaced by U+FFFD"
            )
        return "; ".join(parts)


def read_text(paths: Paths, stats: ReadStats) -> Iterator[Document]:
    """Read every file (directories recursively, hidden entries skipped) as one document each.

    The id is the path relative to the directory given, or the file name for a file given
    directly. Checks that every path exists before reading any.
    """
    files = expand_paths(paths)
    return (doc for path, name in files for doc in _read_text_file(path, name, stats))


def read_jsonl(
    paths: Paths, stats: ReadStats, text_field: str = "text", id_field: str = "id"
) -> Iterator[Document]:
    """Read JSON lines (plain, .zst or .gz), one document per line.

    Fields other than the text and id go to `meta`; a `meta` object is merged in rather than
    nested, so documents written by `Document.to_json` read back unchanged. A line without an
    id gets "{file}:{line}". Malformed lines are counted with their location and skipped.
    """
    files = expand_paths(paths)
    return (
        doc
        for path, name in files
        for doc in _read_jsonl_file(path, name, stats, text_field, id_field)
    )


def read_parquet(
    paths: Paths, stats: ReadStats, text_field: str = "text", id_field: str = "id"
) -> Iterator[Document]:
    """Read Parquet files by record batch, one document per row (other columns go to `meta`)."""
    files = expand_paths(paths)
    return (
        doc
        for path, name in files
        for doc in _read_parquet_file(path, name, stats, text_field, id_field)
    )


def read_documents(
    paths: Paths, stats: ReadStats, text_field: str = "text", id_field: str = "id"
) -> Iterator[Document]:
    """Read any mix of inputs, choosing the reader per file by its extension.

    .jsonl/.json/.zst/.gz are JSON lines, .parquet is Parquet, anything else is a text file.
    Files inside directories are dispatched the same way, so a directory of JSONL shards reads
    as records rather than as raw text. Checks that every path exists before reading any.
    """
    files = expand_paths(paths)
    return (
        doc
        for path, name in files
        for doc in read_file(path, name, stats, text_field, id_field)
    )


def read_file(
    path: Path, name: str, stats: ReadStats, text_field: str = "text", id_field: str = "id"
) -> Iterator[Document]:
    """The documents of one file, read by its extension; `name` is the id (or id prefix) it gets."""
    if path.name.endswith(_JSONL_SUFFIXES):
        return _read_jsonl_file(path, name, stats, text_field, id_field)
    if path.name.endswith(".parquet"):
        return _read_parquet_file(path, name, stats, text_field, id_field)
    return _read_text_file(path, name, stats)


def expand_paths(paths: Paths) -> list[tuple[Path, str]]:
    """(file, name) pairs for files and directory trees, sorted; a missing path is an error.

    Eager on purpose: a typo in the last input must fail before hours spent on the first.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    roots = [Path(p) for p in paths]
    for root in roots:
        if not root.exists():
            raise UserError(f"No such file or directory: {root}; check the input path.")
    files: list[tuple[Path, str]] = []
    for root in roots:
        if root.is_dir():
            files.extend(_walk(root))
        else:
            files.append((root, root.name))
    return files


def _walk(root: Path) -> list[tuple[Path, str]]:
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for filename in filenames:
            path = Path(dirpath, filename)
            if not filename.startswith(".") and path.is_file():
                found.append((path, path.relative_to(root).as_posix()))
    return sorted(found, key=lambda pair: pair[1])


def _read_text_file(path: Path, name: str, stats: ReadStats) -> Iterator[Document]:
    stats.files += 1
    data = path.read_bytes()
    if not data:
        stats.empty_files += 1
        return
    if b"\x00" in data[:_BINARY_SNIFF_BYTES]:
        stats.add_binary(path)
        return
    text, invalid = decode_utf8(data)
    yield _emit(Document(id=name, text=text), stats, invalid)


def _read_jsonl_file(
    path: Path, name: str, stats: ReadStats, text_field: str, id_field: str
) -> Iterator[Document]:
    stats.files += 1
    records = line_number = 0
    try:
        for line_number, raw in enumerate(_lines(path), start=1):
            if not raw.strip():
                continue
            records += 1
            where = f"{path}:{line_number}"
            line, invalid = decode_utf8(raw)
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                stats.add_malformed(where, f"bad JSON ({e.msg})")
                continue
            doc = _record_to_document(
                record, text_field, id_field, f"{name}:{line_number}", where, stats
            )
            if doc is not None:
                yield _emit(doc, stats, invalid)
    except (zstandard.ZstdError, gzip.BadGzipFile, zlib.error, EOFError) as e:
        raise UserError(
            f"Cannot decompress {path} after line {line_number} ({e}); "
            "re-create the file or leave it out of the inputs."
        ) from e
    if records == 0:
        stats.empty_files += 1


def _lines(path: Path) -> Iterator[bytes]:
    """The lines of a plain, gzip- or zstd-compressed file, streamed."""
    if path.name.endswith(".zst"):
        yield from _split_lines(_zstd_chunks(path))
        return
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rb") as f:
        yield from f


def _zstd_chunks(path: Path) -> Iterator[bytes]:
    """Decompressed chunks of every frame, failing on a cut-off last frame.

    zstandard's stream readers stop after the first frame and end quietly on truncated input,
    which would drop the rest of a file without a word.
    """
    decompressor = zstandard.ZstdDecompressor()
    frame, in_frame = decompressor.decompressobj(), False
    with path.open("rb") as f:
        while chunk := f.read(1 << 16):
            while chunk:
                in_frame = True
                yield frame.decompress(chunk)
                chunk = b""
                if frame.eof:
                    chunk = frame.unused_data
                    frame, in_frame = decompressor.decompressobj(), False
    if in_frame:
        raise EOFError("the last zstd frame is cut short")


def _split_lines(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """Lines (without their newline) from chunks that break anywhere, in linear time."""
    pending: list[bytes] = []
    for chunk in chunks:
        *complete, last = chunk.split(b"\n")
        if complete:
            yield b"".join([*pending, complete[0]])
            yield from complete[1:]
            pending = []
        pending.append(last)
    tail = b"".join(pending)
    if tail:
        yield tail


def _read_parquet_file(
    path: Path, name: str, stats: ReadStats, text_field: str, id_field: str
) -> Iterator[Document]:
    import pyarrow as pa  # imported here: pyarrow takes ~0.2 s to load and most runs skip it
    import pyarrow.parquet as pq

    stats.files += 1
    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise UserError(f"Cannot read {path} as Parquet ({e}); check the file.") from e
    columns = parquet.schema_arrow.names
    if text_field not in columns:
        raise UserError(
            f"{path} has no column {text_field!r} (its columns are {', '.join(columns)}); "
            "set the text field to one of them."
        )
    row = 0
    for batch in parquet.iter_batches():
        for record in batch.to_pylist():
            row += 1
            where = f"{path}:{row}"
            doc = _record_to_document(record, text_field, id_field, f"{name}:{row}", where, stats)
            if doc is not None:
                yield _emit(doc, stats, invalid=False)
    if row == 0:
        stats.empty_files += 1


def _record_to_document(
    record: Any, text_field: str, id_field: str, default_id: str, where: str, stats: ReadStats
) -> Document | None:
    """Build a Document from one parsed record, or count it as malformed and return None."""
    if not isinstance(record, dict):
        stats.add_malformed(where, f"not a JSON object but {type(record).__name__}")
        return None
    text = record.get(text_field)
    if not isinstance(text, str):
        reason = "missing" if text is None else f"a {type(text).__name__}, not a string"
        stats.add_malformed(where, f"field {text_field!r} is {reason}")
        return None
    doc_id = record.get(id_field)
    if doc_id is None:
        doc_id = default_id
    elif isinstance(doc_id, (str, int)) and not isinstance(doc_id, bool):
        doc_id = str(doc_id)
    else:
        stats.add_malformed(where, f"field {id_field!r} is a {type(doc_id).__name__}")
        return None
    nested = record.get("meta")
    meta = dict(nested) if isinstance(nested, dict) else {}
    meta.update(
        (k, v)
        for k, v in record.items()
        if k not in (text_field, id_field) and not (k == "meta" and isinstance(v, dict))
    )
    return Document(id=doc_id, text=text, meta=meta)


def decode_utf8(data: bytes) -> tuple[str, bool]:
    """UTF-8 text without a BOM, and whether invalid bytes had to be replaced by U+FFFD.

    Replacing rather than failing keeps the rest of a document; the flag lets readers count it.
    """
    try:
        return data.decode("utf-8-sig"), False
    except UnicodeDecodeError:
        return data.decode("utf-8-sig", errors="replace"), True


def _emit(doc: Document, stats: ReadStats, invalid: bool) -> Document:
    """Count a document on its way out, replacing lone surrogates that cannot be encoded."""
    try:
        size = len(doc.text.encode("utf-8"))
    except UnicodeEncodeError:
        # JSON escapes like "\ud800" decode to lone surrogates, which no UTF-8 writer accepts.
        doc.text = _SURROGATE.sub("\ufffd", doc.text)
        size = len(doc.text.encode("utf-8"))
        invalid = True
    stats.add_document(size, invalid)
    return doc
