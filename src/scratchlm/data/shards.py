"""Token shards: the on-disk format between tokenization and training, and the writer.

A shards directory holds, for each split (`train`, and `val` unless `val_fraction` is 0):

`{split}_{NNNNNN}.bin`, llm.c's token file, so llm.c can train on our shards. It starts with a
header of 256 little-endian int32 and then the tokens:

    header[0]  magic        20240520 for uint16 tokens, 20240801 for uint32 tokens
    header[1]  version      1 with the uint16 magic, 7 with the uint32 magic
    header[2]  token count
    header[3]  vocabulary size  (ours; llm.c ignores every slot past 2)
    header[4]  end-of-text id   (ours)

The magic/version pairs are exactly the ones llm.c writes (`dev/data/data_common.py`: "gpt-2"
and "llama-3"). Tokens are uint16 whenever the vocabulary fits (at most 65536 ids), else uint32.
The tokens are documents each followed by the end-of-text token: doc0 EOT doc1 EOT ...
Documents never span files, so every file is a whole number of documents.

`{split}_{NNNNNN}.idx`, where each document of the .bin starts:

    bytes 0-7    magic b"SLMIDX\\0\\0"
    int64        version (1)
    int64        document count N
    N x int64    token index of each document's first token, increasing, the first one 0

(all little-endian). Document i is `tokens[start[i] : start[i+1] - 1]`; the token it leaves out
is its end-of-text.

`manifest.json`: the format name and version, the tokenizer's hash, vocabulary size, end-of-text
id and token dtype; per split its files (name, tokens, documents) and totals of tokens,
documents and UTF-8 bytes of the original text (bits per byte needs the bytes; `tokens` counts
one end-of-text per document); how many documents came in and how many were empty (skipped);
and the split rule with the group keys that went to val.

The split is by document group (`val_key`), so near-copies such as two spellings of one play
never straddle train and val. Groups are ordered by SHA-256 of (seed, key), which does not depend
on the input order, and val takes groups in that order while that brings its token count closer
to `val_fraction` of the total (always at least one group). Hitting the fraction needs the total
first, so documents are tokenized into a spool file in one streaming pass and copied into the
split files in a second; the corpus never has to fit in memory.

Between the passes, with `decontaminate_val` (the default), the val split is cleaned of train:
GPT-3's rule, every word 13-gram a val document shares with a train document is cut out with 200
characters either side (pieces under 200 characters dropped, the rest kept as documents). It
indexes the val documents' n-grams, scans every train document (decoded from the spool) for them,
and cuts with an index of only the train documents that matched; the manifest's
`val_decontamination` says what it cut.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from array import array
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from scratchlm.console import info, progress_bar
from scratchlm.data.documents import Document
from scratchlm.errors import UserError
from scratchlm.tokenizer.tokenizer import EOT, Tokenizer

FORMAT_NAME = "scratchlm-shards"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"

HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
# (magic, version) -> token dtype, as llm.c writes them; the pair alone decides the dtype.
LAYOUTS: dict[tuple[int, int], type[np.unsignedinteger]] = {
    (20240520, 1): np.uint16,
    (20240801, 7): np.uint32,
}
MAX_FILE_TOKENS = 2**31 - 1
"""The header stores the token count as an int32."""

INDEX_MAGIC = b"SLMIDX\0\0"
INDEX_VERSION = 1
INDEX_HEADER_BYTES = 24

_CHECK_CHUNK = 1 << 24
"""Tokens per numpy pass when scanning for out-of-range ids: bounded memory on huge shards."""
_BATCH_DOCUMENTS = 1024
_BATCH_CHARS = 1 << 24
"""Documents go to the tokenizer threads in batches of at most this many documents / characters."""


@dataclass
class ShardConfig:
    """Settings for tokenizing documents into train and val shards."""

    shard_tokens: int = 100_000_000
    """Most tokens per shard file (llm.c uses 100 M); documents never span files, so a longer document gets a file of its own."""
    val_fraction: float = 0.1
    """Share of the tokens that goes to the val split, whole groups at a time; 0 writes no val split."""
    val_key: str = ""
    """Document meta field whose value groups documents for the split (e.g. "work", so both spellings of a play land on one side); "" = the document id."""
    val_keys: list[str] = field(default_factory=list)
    """Group keys (values of val_key) that go to val; when given, val_fraction is not used."""
    seed: int = 0
    """Seed of the group order that decides which groups go to val."""
    workers: int = 0
    """Tokenizer threads; 0 means one per CPU core."""
    decontaminate_val: bool = True
    """Cut every word 13-gram that a val document shares with a train document out of val (GPT-3's rule, ±200 characters), so val measures text the model has not seen."""

    def __post_init__(self) -> None:
        if not 1 <= self.shard_tokens <= MAX_FILE_TOKENS:
            raise UserError(f"shard_tokens must be between 1 and {MAX_FILE_TOKENS:,} (llm.c's header holds an int32 count).")
        if not 0 <= self.val_fraction < 1:
            raise UserError(f"val_fraction is {self.val_fraction}; set it to at least 0 and below 1.")
        if self.workers < 0:
            raise UserError("workers must be 0 (one per CPU core) or more.")


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits in 16 bits (halves disk and page cache), else uint32."""
    return np.dtype(np.uint16 if vocab_size <= 2**16 else np.uint32)


# ---- writing ----------------------------------------------------------------------------------


class ShardWriter:
    """Writes one split's documents into `{split}_{NNNNNN}.bin` + `.idx` files.

    Tokens stream straight to disk and the header's count is filled in when a file is closed,
    so memory stays small whatever `shard_tokens` is.
    """

    def __init__(self, directory: Path, split: str, vocab_size: int, eot_id: int, shard_tokens: int) -> None:
        self.directory, self.split, self.shard_tokens = Path(directory), split, shard_tokens
        self.vocab_size, self.eot_id = vocab_size, eot_id
        self.dtype = token_dtype(vocab_size)
        self._eot = np.array([eot_id], dtype=self.dtype).tobytes()
        self.files: list[dict[str, Any]] = []
        self.tokens = self.documents = self.bytes = 0
        self._file: BinaryIO | None = None
        self._starts: list[int] = []
        self._filled = 0

    def add(self, tokens: Sequence[int] | np.ndarray, n_bytes: int) -> None:
        """Append one document (ids below vocab_size, without end-of-text) of `n_bytes` UTF-8 bytes."""
        tokens = np.asarray(tokens, dtype=self.dtype)
        length = len(tokens) + 1
        if length > MAX_FILE_TOKENS:
            raise UserError(f"A document has {length:,} tokens, more than one shard file can hold ({MAX_FILE_TOKENS:,}); split it into smaller documents.")
        if self._file is not None and self._filled + length > self.shard_tokens:
            self._close_file()
        if self._file is None:
            self._file = self._path(".bin").open("wb")
            self._file.write(bytes(HEADER_BYTES))  # the real header is written on close
        self._starts.append(self._filled)
        self._file.write(tokens.tobytes())
        self._file.write(self._eot)
        self._filled += length
        self.tokens += length
        self.documents += 1
        self.bytes += n_bytes

    def close(self) -> dict[str, Any]:
        """Finish the last file; returns the split's entry for the manifest."""
        if self._file is not None:
            self._close_file()
        return {"files": self.files, "tokens": self.tokens, "documents": self.documents, "bytes": self.bytes}

    def _path(self, suffix: str) -> Path:
        return self.directory / f"{self.split}_{len(self.files):06d}{suffix}"

    def _close_file(self) -> None:
        assert self._file is not None
        self._file.seek(0)
        self._file.write(_header(self.dtype, self._filled, self.vocab_size, self.eot_id))
        self._file.close()
        self._file = None
        index = np.array(self._starts, dtype="<i8")
        self._path(".idx").write_bytes(INDEX_MAGIC + np.array([INDEX_VERSION, len(index)], dtype="<i8").tobytes() + index.tobytes())
        self.files.append({"name": self._path(".bin").name, "tokens": self._filled, "documents": len(self._starts)})
        self._starts, self._filled = [], 0


def _header(dtype: np.dtype, n_tokens: int, vocab_size: int, eot_id: int) -> bytes:
    magic, version = next(pair for pair, kind in LAYOUTS.items() if np.dtype(kind) == dtype)
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[:5] = [magic, version, n_tokens, vocab_size, eot_id]
    return header.tobytes()


@dataclass
class _Spool:
    """Every non-empty document's tokens, in input order, plus what the split needs to know."""

    path: Path
    group_index: dict[str, int] = field(default_factory=dict)
    group_tokens: list[int] = field(default_factory=list)
    doc_group: array = field(default_factory=lambda: array("q"))
    doc_tokens: array = field(default_factory=lambda: array("q"))
    doc_bytes: array = field(default_factory=lambda: array("q"))
    documents_in: int = 0
    empty: int = 0

    def add(self, key: str, n_tokens: int, n_bytes: int) -> None:
        group = self.group_index.setdefault(key, len(self.group_index))
        if group == len(self.group_tokens):
            self.group_tokens.append(0)
        self.group_tokens[group] += n_tokens
        self.doc_group.append(group)
        self.doc_tokens.append(n_tokens)
        self.doc_bytes.append(n_bytes)


def write_shards(documents: Iterable[Document], tokenizer: Tokenizer, output: str | Path, config: ShardConfig | None = None) -> dict[str, Any]:
    """Tokenize documents into train/val shards under `output`; returns the manifest.

    Everything is written to a temporary directory beside `output` and renamed at the end, so a
    crash never leaves a half-written shards directory (an older one stays intact until then).
    """
    config = config or ShardConfig()
    if tokenizer.eot_id is None:
        raise UserError(f"The tokenizer has no {EOT} token to separate documents; train or load one that has it.")
    output = Path(output)
    _check_replaceable(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.parent / f".{output.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        spool = _tokenize(documents, tokenizer, tmp / "spool.bin", config)
        is_val, rule = _choose_val_groups(spool, config)
        doc_is_val = is_val[np.frombuffer(spool.doc_group, dtype=np.int64)]
        replacements, cleaning = _decontaminate_val(spool, doc_is_val, tokenizer) if config.decontaminate_val and doc_is_val.any() else ({}, None)
        splits = _write_splits(spool, doc_is_val, tokenizer, tmp, config, replacements)
        spool.path.unlink()
        manifest = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "tokenizer_hash": tokenizer.hash,
            "tokenizer_name": tokenizer.name,
            "vocab_size": tokenizer.vocab_size,
            "eot_id": tokenizer.eot_id,
            "dtype": token_dtype(tokenizer.vocab_size).name,
            "shard_tokens": config.shard_tokens,
            "documents_in": spool.documents_in,
            "empty_documents": spool.empty,
            "split_rule": rule,
            "val_decontamination": cleaning,
            "splits": splits,
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
        _replace(tmp, output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    summary = ", ".join(f"{name} {s['tokens']:,} tokens in {s['documents']:,} documents" for name, s in splits.items())
    info(f"wrote {summary} to {output}" + (f" ({spool.empty:,} empty documents skipped)" if spool.empty else ""))
    return manifest


def _tokenize(documents: Iterable[Document], tokenizer: Tokenizer, path: Path, config: ShardConfig) -> _Spool:
    """Pass one: encode in parallel batches and append each non-empty document to the spool."""
    spool = _Spool(path)
    dtype = token_dtype(tokenizer.vocab_size)
    threads = config.workers or os.cpu_count() or 1
    with path.open("wb") as f, progress_bar("tokenizing documents", total=None) as advance:
        for batch in _batches(documents):
            spool.documents_in += len(batch)
            kept = [doc for doc in batch if doc.text]
            spool.empty += len(batch) - len(kept)
            encoded = tokenizer.encode_batch([doc.text for doc in kept], num_threads=threads)
            for doc, ids in zip(kept, encoded):
                f.write(np.array(ids, dtype=dtype).tobytes())
                spool.add(_group_key(doc, config.val_key), len(ids), len(doc.text.encode("utf-8")))
            advance(len(batch))
    if not spool.doc_tokens:
        raise UserError(f"None of the {spool.documents_in:,} documents has any text to tokenize; check the inputs.")
    return spool


def _batches(documents: Iterable[Document]) -> Iterator[list[Document]]:
    batch: list[Document] = []
    chars = 0
    for doc in documents:
        batch.append(doc)
        chars += len(doc.text)
        if len(batch) >= _BATCH_DOCUMENTS or chars >= _BATCH_CHARS:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


def _group_key(doc: Document, val_key: str) -> str:
    if not val_key:
        return doc.id
    if val_key not in doc.meta:
        raise UserError(f'Document {doc.id!r} has no meta field {val_key!r} to split by; set val_key to a field every document has, or to "" to split by document id.')
    return str(doc.meta[val_key])


def _choose_val_groups(spool: _Spool, config: ShardConfig) -> tuple[np.ndarray, dict[str, Any]]:
    """Which groups go to val (a bool per group), and the rule as the manifest records it."""
    keys = list(spool.group_index)
    is_val = np.zeros(len(keys), dtype=bool)
    by = f"meta[{config.val_key!r}]" if config.val_key else "document id"
    rule: dict[str, Any] = {"val_key": config.val_key, "seed": config.seed}
    if config.val_keys:
        unknown = [key for key in config.val_keys if key not in spool.group_index]
        if unknown:
            raise UserError(f"No document with text has {by} {', '.join(map(repr, unknown[:5]))}; list val_keys that occur in the data.")
        is_val[[spool.group_index[key] for key in config.val_keys]] = True
        rule["rule"] = f"val is the groups (by {by}) listed in val_keys"
    elif config.val_fraction > 0:
        target = config.val_fraction * sum(spool.group_tokens)
        taken = 0
        for group in sorted(range(len(keys)), key=lambda g: _group_rank(config.seed, keys[g])):
            tokens = spool.group_tokens[group]
            if is_val.any() and taken + tokens - target > target - taken:
                break
            is_val[group] = True
            taken += tokens
        rule["rule"] = f"groups (by {by}) in SHA-256(seed, key) order go to val while that brings val closer to {config.val_fraction:g} of the tokens"
        rule["val_fraction"] = config.val_fraction
    else:
        rule["rule"] = "no val split (val_fraction 0)"
    if is_val.all():
        raise UserError(f"The train split would be empty: all {len(keys):,} group(s) of documents (by {by}) went to val; lower val_fraction or val_keys, add documents, or split by a finer val_key.")
    rule["val_groups"] = sorted(keys[g] for g in np.flatnonzero(is_val))
    return is_val, rule


def _group_rank(seed: int, key: str) -> bytes:
    # SHA-256, not hash(): Python salts str hashes per process, and the split must be reproducible.
    return hashlib.sha256(f"{seed}\0{key}".encode()).digest()


def _spooled_texts(spool: _Spool, rows: Iterable[int], tokenizer: Tokenizer) -> Iterator[tuple[int, str]]:
    """(row, text) of spooled documents, decoded back (byte-level BPE gives back the exact text)."""
    tokens = np.memmap(spool.path, dtype=token_dtype(tokenizer.vocab_size), mode="r")
    ends = np.cumsum(spool.doc_tokens)
    for row in rows:
        end = int(ends[row])
        yield row, tokenizer.decode(tokens[end - spool.doc_tokens[row] : end].tolist())


def _decontaminate_val(spool: _Spool, doc_is_val: np.ndarray, tokenizer: Tokenizer) -> tuple[dict[int, list[str]], dict[str, Any]]:
    """Val documents that share a 13-gram with train, each with the pieces that stay (see the module docstring)."""
    from scratchlm.data.decontaminate import Decontaminate, DecontaminateConfig, NGramIndex

    settings = DecontaminateConfig(mode="cut", max_pieces=1 << 62, min_item_words=13)
    val_rows = np.flatnonzero(doc_is_val).tolist()
    train_rows = np.flatnonzero(~doc_is_val).tolist()
    val_index = NGramIndex.from_texts(((str(row), text) for row, text in _spooled_texts(spool, val_rows, tokenizer)), settings.ngram, settings.min_item_words)
    # Only the train passages that match go into the cutting index, not whole train documents:
    # a corpus whose val repeats much of train would otherwise index all of train again.
    passages: list[tuple[str, str]] = []
    sharing = 0
    with progress_bar("checking val against train", total=len(train_rows)) as advance:
        for row, text in _spooled_texts(spool, train_rows, tokenizer):
            spans = val_index._spans(text)
            if spans:
                sharing += 1
                passages.extend((str(row), text[start:end]) for start, end in _merged(spans))
            advance(1)
    report: dict[str, Any] = {"ngram": settings.ngram, "train_documents_sharing": sharing, "val_documents_cut": 0, "val_bytes_cut": 0, "examples": []}
    if not passages:
        return {}, report
    keys = list(spool.group_index)
    cut = Decontaminate(settings, index=NGramIndex.from_texts(passages, settings.ngram, settings.min_item_words))
    replacements: dict[int, list[str]] = {}
    for row, text in _spooled_texts(spool, val_rows, tokenizer):
        pieces = [d.text for d in cut.run([Document(str(row), text)])]
        if pieces != [text]:
            replacements[row] = pieces
            report["val_bytes_cut"] += len(text.encode("utf-8")) - sum(len(p.encode("utf-8")) for p in pieces)
    report["val_documents_cut"] = len(replacements)
    report["examples"] = [{"val_group": keys[spool.doc_group[int(m["document_id"])]], "train_group": keys[spool.doc_group[int(m["benchmark_item"])]], "ngram_example": m["ngram_example"]} for m in cut.matches[:20]]
    return replacements, report


def _merged(spans: list[tuple[int, int, int]]) -> list[tuple[int, int]]:
    """(start, end) of the overlapping runs of sorted (start, end, item) spans."""
    runs: list[list[int]] = []
    for start, end, _ in spans:
        if runs and start <= runs[-1][1]:
            runs[-1][1] = max(runs[-1][1], end)
        else:
            runs.append([start, end])
    return [(start, end) for start, end in runs]


def _write_splits(spool: _Spool, doc_is_val: np.ndarray, tokenizer: Tokenizer, directory: Path, config: ShardConfig, replacements: dict[int, list[str]]) -> dict[str, dict[str, Any]]:
    """Pass two: copy each document from the spool into its split's shard files, in input order
    (a val document that decontamination cut goes in as its pieces, encoded again)."""
    assert tokenizer.eot_id is not None
    names = ["train", "val"] if doc_is_val.any() else ["train"]
    writers = {name: ShardWriter(directory, name, tokenizer.vocab_size, tokenizer.eot_id, config.shard_tokens) for name in names}
    tokens = np.memmap(spool.path, dtype=token_dtype(tokenizer.vocab_size), mode="r")
    ends = np.cumsum(spool.doc_tokens)
    with progress_bar("writing shards", total=len(tokens)) as advance:
        for row, (end, length, n_bytes, val) in enumerate(zip(ends.tolist(), spool.doc_tokens, spool.doc_bytes, doc_is_val.tolist())):
            if row in replacements:
                for piece, ids in zip(replacements[row], tokenizer.encode_batch(replacements[row], num_threads=1)):
                    writers["val"].add(ids, len(piece.encode("utf-8")))
            else:
                writers["val" if val else "train"].add(tokens[end - length : end], n_bytes)
            advance(length)
    del tokens  # release the memory map before the spool file is deleted
    return {name: writer.close() for name, writer in writers.items()}


def _check_replaceable(output: Path) -> None:
    """Refuse, before any work, to replace anything but an empty or a shards directory."""
    if not output.exists():
        return
    if output.is_dir() and not any(output.iterdir()):
        return
    try:
        read_manifest(output)
    except UserError:
        raise UserError(f"{output} exists and is not a shards directory; choose another output path or remove it.") from None


def _replace(tmp: Path, output: Path) -> None:
    if not output.exists():
        tmp.rename(output)
        return
    old = output.parent / f".{output.name}.old-{os.getpid()}"
    output.rename(old)
    tmp.rename(output)
    shutil.rmtree(old)


# ---- reading ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShardHeader:
    """What a .bin file's header says, after checking it against the file's size."""

    dtype: np.dtype
    tokens: int
    vocab_size: int
    """0 in files written by llm.c, which does not record it."""
    eot_id: int


def read_header(path: str | Path) -> ShardHeader:
    """Read and check a .bin header: magic, version and a file size that matches the count."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"No shard file at {path}; check the path or re-create the shards.")
    size = path.stat().st_size
    if size < HEADER_BYTES:
        raise UserError(f"{path} is {size:,} bytes, shorter than the {HEADER_BYTES:,}-byte header; the shard is truncated, regenerate it.")
    magic, version, count, vocab_size, eot_id = (int(v) for v in np.fromfile(path, dtype="<i4", count=5))
    kind = LAYOUTS.get((magic, version))
    if kind is None:
        if magic not in {m for m, _ in LAYOUTS}:
            raise UserError(f"{path} is not a token shard (magic number {magic}); point to a .bin written by scratchlm or llm.c.")
        raise UserError(f"{path} has unknown version {version} for magic {magic} (known: 20240520 version 1, 20240801 version 7); regenerate it with this scratchlm.")
    dtype = np.dtype(kind)
    present = (size - HEADER_BYTES) // dtype.itemsize
    if count < 0 or present < count:
        raise UserError(f"{path} is truncated: its header promises {count:,} tokens but {present:,} are present; regenerate it.")
    if size != HEADER_BYTES + count * dtype.itemsize:
        raise UserError(f"{path} has {size - HEADER_BYTES - count * dtype.itemsize:,} bytes after its {count:,} tokens; the shard is corrupt, regenerate it.")
    return ShardHeader(dtype, count, vocab_size, eot_id)


def open_shard(path: str | Path, vocab_size: int | None = None) -> np.ndarray:
    """Memory-map a .bin file's tokens after checking its header and size.

    With `vocab_size`, also checks that every id is below it: an id out of range would otherwise
    surface as an opaque index error deep inside the model's embedding.
    """
    path = Path(path)
    header = read_header(path)
    if header.tokens == 0:
        return np.zeros(0, dtype=header.dtype)  # mmap cannot map zero bytes
    tokens = np.memmap(path, dtype=header.dtype, mode="r", offset=HEADER_BYTES, shape=(header.tokens,))
    if vocab_size is not None:
        for start in range(0, len(tokens), _CHECK_CHUNK):
            chunk = tokens[start : start + _CHECK_CHUNK]
            if int(chunk.max()) >= vocab_size:
                at = start + int(np.argmax(chunk >= vocab_size))
                raise UserError(f"{path} holds token id {int(tokens[at])} at position {at:,}, but the vocabulary has {vocab_size:,} ids; these shards are corrupt or from another tokenizer, re-tokenize them.")
    return tokens


def read_index(path: str | Path, n_tokens: int) -> np.ndarray:
    """Document starts from a .idx file, checked against the token count of its .bin."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"No document index at {path}; regenerate the shards.")
    data = path.read_bytes()
    if len(data) < INDEX_HEADER_BYTES or data[:8] != INDEX_MAGIC:
        raise UserError(f"{path} is not a scratchlm document index; regenerate the shards.")
    version, count = (int(v) for v in np.frombuffer(data, dtype="<i8", count=2, offset=8))
    if version != INDEX_VERSION:
        raise UserError(f"{path} is document index version {version}; this scratchlm reads version {INDEX_VERSION}, so regenerate the shards.")
    if len(data) != INDEX_HEADER_BYTES + 8 * count:
        raise UserError(f"{path} should hold {count:,} offsets but is {len(data):,} bytes; it is truncated or corrupt, regenerate the shards.")
    starts = np.frombuffer(data, dtype="<i8", offset=INDEX_HEADER_BYTES)
    valid = (count == 0) == (n_tokens == 0) and (count == 0 or (starts[0] == 0 and starts[-1] < n_tokens and bool(np.all(np.diff(starts) > 0))))
    if not valid:
        raise UserError(f"{path} does not match its .bin file ({n_tokens:,} tokens); regenerate the shards.")
    return starts


def shard_documents(path: str | Path, vocab_size: int | None = None) -> Iterator[list[int]]:
    """The token ids of each document in one .bin file, without the end-of-text that ends it."""
    path = Path(path)
    header = read_header(path)
    tokens = open_shard(path, vocab_size)
    starts = read_index(path.with_suffix(".idx"), header.tokens)
    for number, (start, end) in enumerate(zip(starts.tolist(), [*starts[1:].tolist(), header.tokens])):
        if tokens[end - 1] != header.eot_id:
            raise UserError(f"Document {number} of {path} does not end with the end-of-text token; the .idx does not match the .bin, regenerate the shards.")
        yield tokens[start : end - 1].tolist()


def read_manifest(directory: str | Path) -> dict[str, Any]:
    """Load a shards directory's manifest.json, checking that it is one and of our version."""
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise UserError(f"{directory} has no {MANIFEST}, so it is not a shards directory; point to one or tokenize documents into it.")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserError(f"{path} is not valid JSON ({error}); regenerate the shards.") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        found = manifest.get("format") if isinstance(manifest, dict) else None
        raise UserError(f"{path} is not a shards manifest (format {found!r}, not {FORMAT_NAME!r}); point to a shards directory.")
    if manifest.get("version") != FORMAT_VERSION:
        raise UserError(f"{path} is shards format version {manifest.get('version')}; this scratchlm reads version {FORMAT_VERSION}, so re-tokenize the documents.")
    return manifest


def check_tokenizer(manifest: dict[str, Any], tokenizer: Tokenizer) -> None:
    """Fail when shards were made with a different tokenizer than the one about to read them."""
    if manifest["tokenizer_hash"] != tokenizer.hash:
        raise UserError(f"These shards were made with another tokenizer (hash {manifest['tokenizer_hash'][:12]}), not {tokenizer.hash[:12]}; re-tokenize or pass the matching tokenizer.")


def split_files(directory: str | Path, split: str) -> list[Path]:
    """The .bin files of a split in order, as the manifest lists them; each must exist."""
    directory = Path(directory)
    splits = read_manifest(directory)["splits"]
    if split not in splits:
        raise UserError(f"{directory} has no {split!r} split (it has {', '.join(splits)}); choose one of those or re-tokenize with that split.")
    paths = [directory / entry["name"] for entry in splits[split]["files"]]
    for path in paths:
        if not path.is_file():
            raise UserError(f"{path} is listed in {directory / MANIFEST} but missing; restore it or re-tokenize.")
    return paths


def read_documents_tokens(directory: str | Path, split: str) -> Iterator[list[int]]:
    """Every document of a split, in the order written, as token ids without end-of-text."""
    vocab_size = read_manifest(directory)["vocab_size"]
    for path in split_files(directory, split):
        yield from shard_documents(path, vocab_size)
