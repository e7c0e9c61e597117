"""The data side of classification fine-tuning: tables in, padded label batches out.

Four steps, each a plain function or class the job strings together:

1. `read_table`: the (text, label) rows of one CSV, TSV, JSON/JSONL or Parquet file. A row
   that cannot be used (no text, no label, a bad JSON line) is skipped and counted in a `Tally`
   with the place it was first seen; a file that cannot be used at all (missing, unknown
   extension, no rows, a missing column) is a `UserError` naming the file.
2. `LabelSet`: label names and their ids, sorted from the training split or given explicitly.
   `stratified_split` cuts one table into train/val/test with every label's share kept.
3. `encode_rows`: token ids, truncated to `max_length` by keeping the *first* tokens (a
   classifier of reviews or questions is told the most by how a text starts, and this is the
   common convention), and label ids.
4. `ClassifyBatches`: a `BatchSource` of right-padded micro-batches, epoch order or
   class-balanced, with an exact resume; `iter_eval` passes over every example once.

Labels are strings throughout: a JSON `1`, a Parquet int64 `1`, a float `1.0` (what a column of
integers with a gap becomes in pandas) and a CSV "1" are all the label "1", so one dataset
spread over formats has one label set.
"""

from __future__ import annotations

import csv
import difflib
import gzip
import hashlib
import io
import json
import math
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
import zstandard

from scratchlm.data.documents import StrPath, _zstd_chunks
from scratchlm.errors import UserError
from scratchlm.tokenizer.tokenizer import Tokenizer

SUFFIXES = (".csv", ".tsv", ".jsonl", ".json", ".parquet")
"""Table formats by extension; .csv, .tsv, .jsonl and .json may also end in .gz or .zst."""

# Reasons a row is skipped (or, for TRUNCATED, kept but cut), the keys of a `Tally`.
MISSING_TEXT = "missing text"
TEXT_NOT_STRING = "text not a string"
EMPTY_TEXT = "empty text"
MISSING_LABEL = "missing label"
LABEL_NOT_SCALAR = "label not a string or number"
BAD_JSON = "bad JSON"
NOT_AN_OBJECT = "not a JSON object"
WRONG_FIELD_COUNT = "wrong number of fields"
UNKNOWN_LABEL = "unknown label"
TOO_LONG = "longer than max_length"
EMPTY_ENCODING = "no tokens"
TRUNCATED = "truncated"

_CSV_FIELD_LIMIT = 2**31 - 1  # the csv module's default (128 KiB) would reject a long text


class Tally(Counter[str]):
    """Rows counted by reason (skipped, or truncated), with where each reason was first seen.

    A `Counter`, so tallies add up; `first` keeps a "file:line" per reason, because a count
    alone does not tell the user which row to look at.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.first: dict[str, str] = {}

    def add(self, reason: str, where: str) -> None:
        """Count one row for `reason`, remembering `where` if it is the first."""
        self[reason] += 1
        self.first.setdefault(reason, where)

    def update_from(self, other: Tally) -> None:
        """Add another tally's counts, keeping the earlier first places."""
        self.update(other)
        for reason, where in other.first.items():
            self.first.setdefault(reason, where)

    def describe(self) -> str:
        """One line, most frequent reason first: "2 empty text (first at a.csv:3), 1 ..."."""
        return ", ".join(
            f"{count:,} {reason}" + (f" (first at {self.first[reason]})" if reason in self.first else "")
            for reason, count in self.most_common()
        )


class Row(NamedTuple):
    """One usable row of a table: its text, its label (a string) and where it came from."""

    text: str
    label: str
    where: str
    """"file:n", n the line (CSV/TSV/JSONL; the record's last line for a quoted multi-line CSV
    field), the item of a JSON list, or the row of a Parquet file; counted from 1."""


# ---- reading tables ---------------------------------------------------------------------------


def read_table(path: StrPath, text_column: str = "text", label_column: str = "label") -> tuple[list[Row], Tally]:
    """The usable rows of one table file and a tally of the rows skipped, by reason.

    CSV needs a header row; TSV is split on tabs only (no quoting, so a quote in a text is just
    a character); .json is a list of objects or JSON lines; .jsonl is JSON lines. The file must
    have both columns (in at least one record for JSON) and at least one usable row.
    """
    path = Path(path)
    _check_file(path)
    kind = _table_kind(path)
    if kind == "parquet":
        columns, records = _parquet_records(path, text_column, label_column)
    else:
        text = _decode(path, _file_bytes(path))
        reader = _csv_records if kind in ("csv", "tsv") else _json_records
        columns, records = reader(path, text, kind)
    if not records:
        raise UserError(f"{path} has no rows; give a file with a header and at least one row of data.")
    if columns:  # none when no JSON line parsed as an object: then the skipped-row counts say why
        _check_column(path, columns, text_column, "text")
        _check_column(path, columns, label_column, "label")
    rows, tally = _usable_rows(records, text_column, label_column)
    if not rows:
        raise UserError(f"{path} has no usable rows ({tally.describe()}); check the {text_column!r} and {label_column!r} columns.")
    return rows, tally


def read_texts(path: StrPath, text_column: str = "text") -> tuple[list[str], Tally]:
    """The texts of one table file, any labels ignored (what `scratchlm classify --input` labels),
    and a tally of the rows skipped, by reason."""
    path = Path(path)
    _check_file(path)
    kind = _table_kind(path)
    if kind == "parquet":
        import pyarrow.parquet as pq

        columns = pq.ParquetFile(path).schema_arrow.names
        _check_column(path, columns, text_column, "text")
        values = pq.read_table(path, columns=[text_column]).column(text_column).to_pylist()
        records: list[Record] = [(f"{path}:{row}", {text_column: value}) for row, value in enumerate(values, start=1)]
    else:
        reader = _csv_records if kind in ("csv", "tsv") else _json_records
        columns, records = reader(path, _decode(path, _file_bytes(path)), kind)
        if columns:
            _check_column(path, columns, text_column, "text")
    texts, tally = [], Tally()
    for where, record in records:
        problem = record if isinstance(record, str) else _text_problem(record.get(text_column))
        if problem:
            tally.add(problem, where)
        else:
            texts.append(record[text_column])
    if not texts:
        raise UserError(f"{path} has no texts to label in its {text_column!r} column" + (f" ({tally.describe()})." if tally else "."))
    return texts, tally


Record = tuple[str, Any]
"""A parsed row: its location, and a dict of its fields or the reason it could not be parsed."""


def _check_file(path: Path) -> None:
    if not path.exists():
        raise UserError(f"No such file: {path}; check the data path.")
    if not path.is_file():
        raise UserError(f"{path} is not a file; give the path of a table file ({', '.join(SUFFIXES)}).")


def _table_kind(path: Path) -> str:
    """csv, tsv, json or parquet, from the extension (under .gz or .zst for the text formats)."""
    name = path.name.lower()
    for compression in (".gz", ".zst"):
        if name.endswith(compression) and not name.endswith(".parquet" + compression):
            name = name[: -len(compression)]
    for suffix, kind in ((".csv", "csv"), (".tsv", "tsv"), (".jsonl", "json"), (".json", "json"), (".parquet", "parquet")):
        if name.endswith(suffix):
            return kind
    raise UserError(f"{path} has an unknown extension; use one of {', '.join(SUFFIXES)} (the text formats may end in .gz or .zst).")


def _file_bytes(path: Path) -> bytes:
    """The file's bytes, decompressed when it ends in .gz or .zst."""
    name = path.name.lower()
    try:
        if name.endswith(".gz"):
            with gzip.open(path, "rb") as f:
                return f.read()
        if name.endswith(".zst"):
            # documents' reader, which reads every frame and fails on a cut-off one.
            return b"".join(_zstd_chunks(path))
        return path.read_bytes()
    except (zstandard.ZstdError, gzip.BadGzipFile, zlib.error, EOFError) as e:
        raise UserError(f"Cannot decompress {path} ({e}); re-create the file.") from e


def _decode(path: Path, data: bytes) -> str:
    """UTF-8 text without a BOM; anything else fails, because guessed text would give wrong labels."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not UTF-8 text (invalid byte at offset {e.start}); save it as UTF-8.") from e


def _csv_records(path: Path, text: str, kind: str) -> tuple[list[str], list[Record]]:
    """Header and records of CSV or TSV text; a row whose field count differs from the header's is
    recorded as such (and skipped later), and blank lines are not rows."""
    csv.field_size_limit(max(csv.field_size_limit(), _CSV_FIELD_LIMIT))
    if kind == "tsv":
        reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t", quoting=csv.QUOTE_NONE)
    else:
        reader = csv.reader(io.StringIO(text, newline=""))
    records: list[Record] = []
    try:
        header = next((row for row in reader if row), None)
        if header is None:
            return [], []
        for row in reader:
            where = f"{path}:{reader.line_num}"
            if not row:
                continue
            if len(row) != len(header):
                records.append((where, WRONG_FIELD_COUNT))
            else:
                records.append((where, dict(zip(header, row))))
    except csv.Error as e:
        raise UserError(f"Cannot parse {path} as {kind.upper()} at line {reader.line_num} ({e}); fix the file.") from e
    return header, records


def _json_records(path: Path, text: str, kind: str) -> tuple[list[str], list[Record]]:
    """Records of a JSON list of objects, one JSON object, or JSON lines; columns are the keys
    seen in any record."""
    records: list[Record]
    try:
        whole = json.loads(text)
    except json.JSONDecodeError:
        whole = None  # not one JSON document (JSON lines, or a bad line among them)
    if isinstance(whole, list):
        records = [(f"{path}:{i}", _json_record(item)) for i, item in enumerate(whole, start=1)]
    elif isinstance(whole, dict):
        records = [(f"{path}:1", whole)]
    else:
        records = [(f"{path}:{n}", _json_line(line)) for n, line in enumerate(text.splitlines(), start=1) if line.strip()]
    columns = list(dict.fromkeys(key for _, record in records if isinstance(record, dict) for key in record))
    return columns, records


def _json_line(line: str) -> Any:
    try:
        return _json_record(json.loads(line))
    except json.JSONDecodeError:
        return BAD_JSON


def _json_record(value: Any) -> Any:
    return value if isinstance(value, dict) else NOT_AN_OBJECT


def _parquet_records(path: Path, text_column: str, label_column: str) -> tuple[list[str], list[Record]]:
    import pyarrow as pa  # imported here: pyarrow takes ~0.2 s to load and most runs skip it
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
        columns = parquet.schema_arrow.names
        _check_column(path, columns, text_column, "text")
        _check_column(path, columns, label_column, "label")
        table = parquet.read(columns=[text_column, label_column])
    except (pa.ArrowException, OSError) as e:
        raise UserError(f"Cannot read {path} as Parquet ({e}); check the file.") from e
    texts, labels = table.column(text_column).to_pylist(), table.column(label_column).to_pylist()
    records: list[Record] = [
        (f"{path}:{row}", {text_column: text, label_column: label}) for row, (text, label) in enumerate(zip(texts, labels), start=1)
    ]
    return columns, records


def _check_column(path: Path, columns: Sequence[str], column: str, role: str) -> None:
    """A missing column names the columns there are and the closest one."""
    if column in columns:
        return
    closest = _closest(column, columns)
    hint = f"; the closest is {closest!r}" if closest else ""
    raise UserError(
        f"{path} has no {role} column {column!r} (its columns are {', '.join(map(repr, columns)) or 'none'}{hint}); "
        f"set the {role} column to one of them."
    )


def _closest(name: str, columns: Sequence[str]) -> str | None:
    """The column that differs only in case, else the most similar one by difflib, if any is close."""
    same_case = [c for c in columns if c.casefold() == name.casefold()]
    if same_case:
        return same_case[0]
    matches = difflib.get_close_matches(name, list(columns), n=1, cutoff=0.6)
    return matches[0] if matches else None


def _usable_rows(records: list[Record], text_column: str, label_column: str) -> tuple[list[Row], Tally]:
    rows: list[Row] = []
    tally = Tally()
    for where, record in records:
        if isinstance(record, str):  # the reason it could not be parsed
            tally.add(record, where)
            continue
        text_problem = _text_problem(record.get(text_column))
        label, label_problem = _label_text(record.get(label_column))
        problem = text_problem or label_problem
        if problem:
            tally.add(problem, where)
        else:
            rows.append(Row(record[text_column], label, where))
    return rows, tally


def _text_problem(value: Any) -> str | None:
    """Why a value cannot be a text, or None if it can. The text is kept as it is, unstripped."""
    if value is None:
        return MISSING_TEXT
    if not isinstance(value, str):
        return TEXT_NOT_STRING
    if not value.strip():
        return EMPTY_TEXT
    return None


def _label_text(value: Any) -> tuple[str, str | None]:
    """(label string, problem): strings are stripped, whole numbers lose any ".0", booleans are
    "true"/"false" (JSON's spelling), and None, NaN or a blank string is a missing label."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "", MISSING_LABEL
    if isinstance(value, bool):
        return ("true" if value else "false"), None
    if isinstance(value, int):
        return str(value), None
    if isinstance(value, float):
        return (str(int(value)) if value.is_integer() else str(value)), None
    if isinstance(value, str):
        label = value.strip()
        return label, None if label else MISSING_LABEL
    return "", LABEL_NOT_SCALAR


# ---- labels and splits -----------------------------------------------------------------------


@dataclass(frozen=True)
class LabelSet:
    """Label names in id order: `names[i]` is the label with id i, the classifier's output i."""

    names: tuple[str, ...]

    def __post_init__(self) -> None:
        duplicates = sorted(name for name, n in Counter(self.names).items() if n > 1)
        if duplicates:
            raise UserError(f"The labels {', '.join(map(repr, duplicates))} are given more than once; list each label once.")
        if "" in self.names:
            raise UserError("A label is empty; give every label a name.")
        if len(self.names) < 2:
            raise UserError(f"There is only {len(self.names)} label ({', '.join(map(repr, self.names)) or 'none'}); a classifier needs at least two.")

    @classmethod
    def from_names(cls, names: Iterable[str | int]) -> LabelSet:
        """Labels in the order given (numbers become strings as they do when read from a table)."""
        return cls(tuple(_label_text(name)[0] for name in names))

    @classmethod
    def from_rows(cls, rows: Iterable[Row]) -> LabelSet:
        """The labels of (training) rows, sorted: numerically when every label is an integer
        (so "10" comes after "2"), else as strings."""
        labels = {row.label for row in rows}
        if all(_is_integer(label) for label in labels):
            return cls(tuple(sorted(labels, key=int)))
        return cls(tuple(sorted(labels)))

    def __len__(self) -> int:
        return len(self.names)

    def __contains__(self, name: object) -> bool:
        return name in self._ids

    def id(self, name: str) -> int:
        """The id of a label; KeyError if it is not in the set."""
        return self._ids[name]

    @cached_property
    def _ids(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.names)}


def _is_integer(label: str) -> bool:
    try:
        int(label)
    except ValueError:
        return False
    return True


def stratified_split(rows: Sequence[Row], fractions: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0) -> tuple[list[Row], ...]:
    """Cut rows into splits (train first) with each label's rows shuffled and cut in proportion.

    For a label with n rows, split k ends at round(n × (f_0 + ... + f_k)) (halves round up), so
    every label's share of each split is within one row of its share overall; every label keeps
    at least one training row. Within a split rows keep their order in `rows`. The same rows,
    fractions and seed give the same splits. A split with a positive fraction that ends up
    empty is an error, since evaluating on nothing would look like success.
    """
    _check_fractions(fractions)
    by_label: dict[str, list[int]] = {}
    for index, row in enumerate(rows):
        by_label.setdefault(row.label, []).append(index)
    rng = np.random.default_rng(seed)
    chosen: list[list[int]] = [[] for _ in fractions]
    for label in sorted(by_label):  # sorted, so the shuffles do not depend on dict order
        indices = [by_label[label][i] for i in rng.permutation(len(by_label[label]))]
        for split, (start, end) in enumerate(_cuts(len(indices), fractions)):
            chosen[split].extend(indices[start:end])
    for split, (fraction, indices) in enumerate(zip(fractions, chosen)):
        if fraction > 0 and not indices:
            raise UserError(
                f"{len(rows):,} rows are too few for the {_split_name(split, len(fractions))} split to get any at a fraction of {fraction}; "
                "give more data, a larger fraction, or separate split files."
            )
    return tuple([rows[i] for i in sorted(indices)] for indices in chosen)


def _split_name(split: int, count: int) -> str:
    """train, val, test for two or three splits (in that order), else the split's number."""
    return ("train", "val", "test")[split] if count <= 3 else f"number {split}"


def _check_fractions(fractions: Sequence[float]) -> None:
    if len(fractions) < 2 or any(not f >= 0 for f in fractions) or fractions[0] <= 0 or abs(sum(fractions) - 1) > 1e-6:
        raise UserError(
            f"The split fractions {list(fractions)} must be two or more non-negative numbers that add up to 1, "
            "the first (train) above 0; fix the split fractions."
        )


def _cuts(n: int, fractions: Sequence[float]) -> list[tuple[int, int]]:
    """(start, end) of each split of n rows, by cumulative rounding; train gets at least one."""
    ends, total = [], 0.0
    for fraction in fractions[:-1]:
        total += fraction
        ends.append(min(n, math.floor(n * total + 0.5)))
    ends.append(n)
    ends[0] = max(ends[0], min(1, n))
    ends = [max(end, ends[0]) for end in ends]
    starts = [0, *ends[:-1]]
    return list(zip(starts, ends))


# ---- encoding --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Example:
    """One encoded row: token ids (1 to max_length of them), the label id, and the row's place."""

    ids: list[int]
    label: int
    where: str


def encode_rows(
    rows: Sequence[Row],
    tokenizer: Tokenizer,
    labels: LabelSet,
    max_length: int,
    *,
    unknown_label: Literal["error", "skip"] = "error",
    overlong: Literal["truncate", "skip", "error"] = "truncate",
    end_id: int | None = None,
) -> tuple[list[Example], Tally]:
    """Encode rows as ordinary text (special-token strings are plain text) with their label ids.

    A text of more than `max_length` tokens keeps its first `max_length` (counted as TRUNCATED),
    or is skipped or an error, by `overlong`. With `end_id` (say the tokenizer's eot_id) every
    example ends in that token after truncation, so the position a classifier reads is always the
    same marker rather than wherever a long text was cut; it counts toward `max_length`. A label
    not in `labels` is an error naming the label and the row, or skipped and counted. A text that
    encodes to nothing is skipped and counted.
    """
    budget = max_length - (end_id is not None)
    if budget < 1:
        raise UserError(f"max_length {max_length} leaves no room for text; make it at least {2 if end_id is not None else 1}.")
    examples: list[Example] = []
    tally = Tally()
    for row, ids in zip(rows, tokenizer.encode_batch([row.text for row in rows])):
        if row.label not in labels:
            if unknown_label == "error":
                raise UserError(
                    f"{row.where} has the label {row.label!r}, which is not one of the labels ({', '.join(map(repr, labels.names))}); "
                    "correct the row, add the label to the label set, or choose to skip rows with unknown labels."
                )
            tally.add(UNKNOWN_LABEL, row.where)
            continue
        label = labels.id(row.label)
        if not ids:
            tally.add(EMPTY_ENCODING, row.where)
            continue
        if len(ids) > budget:
            if overlong == "error":
                raise UserError(
                    f"{row.where} is {len(ids):,} tokens, more than the {budget:,} that max_length {max_length} allows; "
                    "raise max_length or let long texts be truncated."
                )
            tally.add(TOO_LONG if overlong == "skip" else TRUNCATED, row.where)
            if overlong == "skip":
                continue
            ids = ids[:budget]
        examples.append(Example(ids + ([end_id] if end_id is not None else []), label, row.where))
    return examples, tally


def default_pad_id(tokenizer: Tokenizer) -> int:
    """The id to pad with: `<|endoftext|>` if the tokenizer has it, else 0.

    Any id does: padding sits after the last real token, which a causal model never lets
    earlier positions see, and pooling masks it out.
    """
    return tokenizer.eot_id if tokenizer.eot_id is not None else 0


# ---- batches ---------------------------------------------------------------------------------


class ClassifyBatch(NamedTuple):
    """A micro-batch of B examples, right-padded to width T (the longest in the batch, or `pad_to`).

    A classifier reads the logits at `last_positions()` (each row's last real token), or
    averages over `mask()`; positions past a row's length hold the pad id and mean nothing.
    """

    ids: torch.Tensor
    """(B, T) int64 token ids."""
    lengths: torch.Tensor
    """(B,) int64 number of real tokens per row, each at least 1."""
    labels: torch.Tensor
    """(B,) int64 label ids."""

    def last_positions(self) -> torch.Tensor:
        """(B,) index of each row's last real token."""
        return self.lengths - 1

    def mask(self) -> torch.Tensor:
        """(B, T) bool, True at real tokens."""
        return torch.arange(self.ids.shape[1], device=self.ids.device) < self.lengths[:, None]

    def to(self, device: str | torch.device) -> ClassifyBatch:
        return ClassifyBatch(self.ids.to(device), self.lengths.to(device), self.labels.to(device))


class ClassifyBatches:
    """Endless training micro-batches of examples (a `BatchSource`), and one-pass evaluation.

    Order: in epoch order, every example once per epoch, each epoch a permutation seeded by
    (seed, epoch); batches run on across epoch ends. Balanced (`balanced=True`): draws go to the
    classes present in turn, each run of K draws (K classes) being one seeded permutation of the
    classes, so every class gets the same number of draws; within a class, examples come in a
    seeded permutation that is reshuffled each time the class runs out. Small classes repeat
    more often; that is the point.

    Ranks: every call draws one global micro-batch of micro_batch_size × world_size examples from
    the shared stream and rank r keeps its slice, as `TokenLoader` does, so a step sees the same
    examples for any layout of the same global batch.

    The position is a few counters (every permutation is a function of the seed and a counter),
    so `state_dict` is small JSON and a resume continues exactly.
    """

    def __init__(
        self,
        examples: Sequence[Example],
        micro_batch_size: int,
        *,
        pad_id: int,
        balanced: bool = False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        pad_to: int | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        if not examples:
            raise UserError("There are no examples to train on; check the data and the skipped-row counts.")
        if micro_batch_size < 1 or seed < 0:
            raise UserError(f"micro_batch_size ({micro_batch_size}) must be at least 1 and seed ({seed}) at least 0.")
        if not 0 <= rank < world_size:
            raise UserError(f"rank {rank} is outside 0..{world_size - 1} for world_size {world_size}; check the launcher's settings.")
        longest = max(len(example.ids) for example in examples)
        if pad_to is not None and pad_to < longest:
            raise UserError(f"pad_to {pad_to} is shorter than the longest example ({longest} tokens); pad to at least max_length.")
        self.examples, self.micro_batch_size, self.pad_id = list(examples), micro_batch_size, pad_id
        self.balanced, self.seed, self.rank, self.world_size, self.pad_to = balanced, seed, rank, world_size, pad_to
        self.device = torch.device(device)
        labels = np.array([example.label for example in examples], dtype=np.int64)
        self.classes = sorted(set(labels.tolist()))
        self._by_class = [np.flatnonzero(labels == c) for c in self.classes]
        self._fingerprint = _fingerprint(self.examples)
        self._permutations: dict[tuple[int, ...], np.ndarray] = {}
        self.batches = 0
        self._drawn = 0  # examples (epoch order) or draws (balanced) taken from the global stream
        self._class_drawn = [0] * len(self.classes)

    @property
    def epoch(self) -> int:
        """Completed epochs in epoch order (passes over the data); in balanced mode, the draws so
        far divided by the number of examples."""
        return self._drawn // len(self.examples)

    # ---- training ----------------------------------------------------------------------------

    def next_batch(self) -> ClassifyBatch:
        """The next micro-batch of this rank, on the source's device."""
        draw = self._draw_balanced if self.balanced else self._draw_epoch
        chosen = [draw() for _ in range(self.micro_batch_size * self.world_size)]
        self.batches += 1
        mine = chosen[self.rank * self.micro_batch_size : (self.rank + 1) * self.micro_batch_size]
        return self._collate([self.examples[i] for i in mine]).to(self.device)

    def __iter__(self) -> Iterator[ClassifyBatch]:
        return self

    def __next__(self) -> ClassifyBatch:
        return self.next_batch()

    def _draw_epoch(self) -> int:
        epoch, offset = divmod(self._drawn, len(self.examples))
        self._drawn += 1
        return int(self._permutation(len(self.examples), 0, epoch)[offset])

    def _draw_balanced(self) -> int:
        block, offset = divmod(self._drawn, len(self.classes))
        self._drawn += 1
        k = int(self._permutation(len(self.classes), 1, block)[offset])
        members = self._by_class[k]
        cycle, position = divmod(self._class_drawn[k], len(members))
        self._class_drawn[k] += 1
        return int(members[self._permutation(len(members), 2, k, cycle)[position]])

    def _permutation(self, n: int, *key: int) -> np.ndarray:
        """The permutation of range(n) for `key` (stream tag and counters), cached while in use.

        Seeded by (seed, *key) through NumPy's SeedSequence, so it is the same in any process and
        after any resume, and streams with different tags never share a permutation.
        """
        if key not in self._permutations:
            if len(self._permutations) > 2 * len(self.classes) + 4:
                self._permutations.clear()  # older epochs and cycles are never drawn from again
            self._permutations[key] = np.random.default_rng([self.seed, *key]).permutation(n)
        return self._permutations[key]

    # ---- evaluation --------------------------------------------------------------------------

    def iter_eval(self, micro_batch_size: int | None = None) -> Iterator[ClassifyBatch]:
        """Every example once, in the order given, in batches of `micro_batch_size` (default the
        training one; the last may be smaller). The same on every rank; leaves the training
        position alone."""
        size = micro_batch_size or self.micro_batch_size
        for start in range(0, len(self.examples), size):
            yield self._collate(self.examples[start : start + size]).to(self.device)

    def _collate(self, examples: Sequence[Example]) -> ClassifyBatch:
        lengths = [len(example.ids) for example in examples]
        ids = torch.full((len(examples), self.pad_to or max(lengths)), self.pad_id, dtype=torch.int64)
        for row, example in enumerate(examples):
            ids[row, : lengths[row]] = torch.tensor(example.ids, dtype=torch.int64)
        return ClassifyBatch(ids, torch.tensor(lengths, dtype=torch.int64), torch.tensor([e.label for e in examples], dtype=torch.int64))

    # ---- resume ------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Where the source stands, as JSON-able data; the same on every rank."""
        return {**self._identity(), "batches": self.batches, "drawn": self._drawn, "class_drawn": list(self._class_drawn)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a saved state; it must come from a source over the same examples and settings."""
        saved = {key: state.get(key) for key in self._identity()}
        if saved != self._identity():
            raise UserError(
                f"The saved batch position is for {saved}, not {self._identity()}; resume with the same data, labels, "
                "max_length, seed and sampling."
            )
        self.batches, self._drawn, self._class_drawn = int(state["batches"]), int(state["drawn"]), [int(n) for n in state["class_drawn"]]

    def _identity(self) -> dict[str, Any]:
        """What a saved position is only meaningful for."""
        return {"examples": len(self.examples), "fingerprint": self._fingerprint, "balanced": self.balanced, "seed": self.seed}


def _fingerprint(examples: Sequence[Example]) -> str:
    """A short hash of every example's tokens and label, to tell the data changed under a resume."""
    digest = hashlib.sha256()
    for example in examples:
        digest.update(np.asarray([example.label, len(example.ids), *example.ids], dtype=np.int64).tobytes())
    return digest.hexdigest()[:16]
