"""Benchmark decontamination: remove training text that overlaps benchmark or held-out texts.

Follows GPT-3 (Brown et al. 2020, "Language Models are Few-Shot Learners", Appendix C): a
training document is contaminated when it shares a word 13-gram with a benchmark item; the
"cut" mode removes each match with 200 characters either side, splits the document there and
drops pieces under 200 characters, and a document split into more than 10 pieces is dropped.

Normalization (shared with the dedup step, `dedup._normalized_codes`): text is lowercased and
every Unicode punctuation, symbol or whitespace character (categories P*, S*, Z* and controls)
separates words, so "Hello, World!" and "hello world" are the same two words. Apostrophes are
punctuation too: "don't" is the two words "don" and "t" on both sides, so it still matches.

Hashing: each word gets a 64-bit polynomial hash of its code points, and each n-gram a
polynomial rolling hash over its word hashes followed by the SplitMix64 finalizer, all in
vectorized numpy (uint64 arithmetic modulo 2^64). Nothing uses Python's salted `hash()`, so an
index means the same thing in every process and run.

Short items: an item with fewer than `ngram` words is indexed as its whole word sequence (GPT-3
used the item's length as N for items shorter than N), and documents are then also checked for
n-grams of that length. Items under `min_item_words` words are skipped and counted, because a
two-word item would match almost every document.

Not implemented: GPT-3 also ignored 13-grams that matched more than 10 training documents
(common phrases and boilerplate); that needs a pass over the whole corpus first.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np

from scratchlm.data.dedup import (
    _BASE,
    _mix64,
    _normalized_codes,
    _separator_table,
    _word_hashes,
)
from scratchlm.data.documents import (
    _JSONL_SUFFIXES,
    Document,
    _lines,
    decode_utf8,
    expand_paths,
)
from scratchlm.data.filters import split_paragraphs
from scratchlm.data.pipeline import Step, StepStats
from scratchlm.errors import UserError

MAX_REPORTED_MATCHES = 1000
"""How many (document, benchmark item) matches `Decontaminate.matches` lists; all are counted."""

_SPACE = 32
_EXAMPLE_CHARS = 300


@dataclass
class DecontaminateConfig:
    """Benchmark decontamination settings (GPT-3, Brown et al. 2020, Appendix C)."""

    benchmarks: list[str] = field(default_factory=list)
    """Benchmark or held-out files and directories: JSONL (.jsonl/.json/.gz/.zst, one item per record) or plain text (one item per non-empty paragraph)."""
    text_fields: list[str] = field(default_factory=lambda: ["text"])
    """JSONL fields whose values are joined (with newlines) into one item, e.g. ["question", "answer"]; missing fields are skipped, lists of strings joined."""
    ngram: int = 13
    """Words per n-gram. GPT-3 Appendix C: 13."""
    min_item_words: int = 8
    """Items with fewer words are skipped (and counted); shorter items of at least this many words match by their whole word sequence. GPT-3's overlap analysis (Appendix C) kept N at least 8 for the same reason."""
    mode: Literal["drop", "cut"] = "drop"
    """"drop": remove a contaminated document ("contaminated"). "cut": GPT-3's rule, remove each match with `cut_margin_chars` either side and keep the pieces as separate documents."""
    cut_margin_chars: int = 200
    """Characters removed on each side of a match in "cut" mode. GPT-3 Appendix C: 200."""
    min_piece_chars: int = 200
    """Pieces shorter than this (after stripping surrounding whitespace) are dropped in "cut" mode. GPT-3 Appendix C: 200."""
    max_pieces: int = 10
    """A document cut into more pieces than this (counted before short pieces are dropped) is removed ("contaminated_too_many_pieces"). GPT-3 Appendix C: 10."""

    def __post_init__(self) -> None:
        if self.ngram < 1 or self.min_item_words < 1:
            raise UserError("ngram and min_item_words must be at least 1.")
        if self.mode not in ("drop", "cut"):
            raise UserError(f'mode must be "drop" or "cut", not {self.mode!r}.')
        if self.cut_margin_chars < 0 or self.min_piece_chars < 0 or self.max_pieces < 1:
            raise UserError("cut_margin_chars and min_piece_chars must be at least 0, max_pieces at least 1.")
        if not self.text_fields:
            raise UserError("text_fields cannot be empty; name the JSONL fields that hold the benchmark text.")


# ---- words and n-grams ------------------------------------------------------------------------


def _codes(text: str) -> np.ndarray:
    """Normalized code points, one per character of `text` (so indexes are character offsets)."""
    if not text.isascii() and len(text.lower()) != len(text):
        # A few characters lowercase to two ("İ" -> "i̇"); keep the first so offsets stay put.
        codes = np.array([ord(c.lower()[0]) for c in text], dtype=np.uint32)
        codes[_separator_table()[codes]] = _SPACE
        return codes
    codes = _normalized_codes(text)
    return np.frombuffer(codes, np.uint8) if isinstance(codes, bytes) else codes


def _words(text: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hash, start and end character offset of every normalized word of `text`."""
    codes = _codes(text)
    if len(codes) == 0:
        empty = np.empty(0, np.int64)
        return np.empty(0, np.uint64), empty, empty
    hashes, starts = _word_hashes(codes)
    mask = (codes != _SPACE).view(np.int8)
    ends = np.flatnonzero(np.diff(mask, prepend=np.int8(0), append=np.int8(0)) == -1)
    return hashes, starts, ends


def _ngram_hashes(words: np.ndarray, lengths: Sequence[int]) -> dict[int, np.ndarray]:
    """Hash of every run of k consecutive words, for each k in `lengths` (k <= len(words))."""
    out: dict[int, np.ndarray] = {}
    wanted = set(lengths)
    longest = max((k for k in wanted if k <= len(words)), default=0)
    rolling = np.zeros(len(words), dtype=np.uint64)
    for k in range(1, longest + 1):
        count = len(words) - k + 1
        rolling = rolling[:count] * _BASE + words[k - 1 : k - 1 + count]
        if k in wanted:
            out[k] = _mix64(rolling.copy())
    return out


# ---- the index --------------------------------------------------------------------------------


class NGramIndex:
    """Hashes of the word n-grams of some items (benchmark questions, a validation split, ...).

    Each hash maps to the first item that has it. `matches(text)` finds every n-gram of a text
    that is in the index, with character offsets into the original text.
    """

    def __init__(self, n: int = 13, min_item_words: int = 1) -> None:
        self.n = n
        self.min_item_words = min_item_words
        self.item_ids: list[str] = []
        self.item_files: list[str | None] = []
        self.skipped_short_items = 0
        self._pending: dict[int, list[tuple[np.ndarray, int]]] = {}
        self._keys: dict[int, np.ndarray] = {}
        self._items: dict[int, np.ndarray] = {}

    # building

    def add(self, item_id: str, text: str, file: str | None = None) -> bool:
        """Index one item; False when it has fewer than `min_item_words` words and is skipped."""
        words, _, _ = _words(text)
        if len(words) < self.min_item_words or len(words) == 0:
            self.skipped_short_items += 1
            return False
        k = min(self.n, len(words))
        self._pending.setdefault(k, []).append((_ngram_hashes(words, [k])[k], len(self.item_ids)))
        self.item_ids.append(item_id)
        self.item_files.append(file)
        return True

    def _finish(self) -> NGramIndex:
        for k, parts in self._pending.items():
            keys = np.concatenate([hashes for hashes, _ in parts] + [self._keys.get(k, np.empty(0, np.uint64))])
            items = np.concatenate(
                [np.full(len(hashes), item, np.int32) for hashes, item in parts] + [self._items.get(k, np.empty(0, np.int32))]
            )
            order = np.argsort(keys, kind="stable")
            keys, items = keys[order], items[order]
            first = np.concatenate(([True], keys[1:] != keys[:-1]))  # earliest item per hash
            self._keys[k], self._items[k] = keys[first], items[first]
        self._pending.clear()
        return self

    @classmethod
    def from_texts(cls, items: Iterable[tuple[str, str]], n: int = 13, min_item_words: int = 1) -> NGramIndex:
        """Index (item_id, text) pairs."""
        index = cls(n, min_item_words)
        for item_id, text in items:
            index.add(item_id, text)
        return index._finish()

    @classmethod
    def from_files(
        cls, paths: Iterable[str | Path], text_fields: Sequence[str] = ("text",), n: int = 13, min_item_words: int = 1
    ) -> NGramIndex:
        """Index benchmark files (see `DecontaminateConfig.benchmarks`); a missing path is a UserError."""
        index = cls(n, min_item_words)
        for path, name in expand_paths(list(paths)):
            items = 0
            for item_id, text in _read_items(path, name, text_fields):
                index.add(item_id, text, str(path))
                items += 1
            if items == 0:
                raise UserError(f"{path} holds no benchmark text (fields {list(text_fields)}); check text_fields.")
        return index._finish()

    # querying

    @property
    def lengths(self) -> list[int]:
        """The n-gram lengths in the index: `n`, and the word counts of shorter items."""
        return sorted(self._keys)

    def __len__(self) -> int:
        return sum(len(keys) for keys in self._keys.values())

    def _lookup(self, text: str) -> tuple[list[tuple[int, int, int]], np.ndarray, np.ndarray]:
        """(word position, n-gram length, item index) of every hit, with word starts and ends."""
        words, starts, ends = _words(text)
        hits: list[tuple[int, int, int]] = []
        if len(words) == 0:
            return hits, starts, ends
        for k, hashes in _ngram_hashes(words, self.lengths).items():
            keys = self._keys[k]
            slots = np.minimum(np.searchsorted(keys, hashes), len(keys) - 1)
            found = np.flatnonzero(keys[slots] == hashes)
            items = self._items[k][slots[found]]
            hits.extend(zip(found.tolist(), [k] * len(found), items.tolist(), strict=True))
        return hits, starts, ends

    def _spans(self, text: str) -> list[tuple[int, int, int]]:
        """(start_char, end_char, item index) of every matching n-gram, in text order."""
        hits, starts, ends = self._lookup(text)
        return sorted((int(starts[j]), int(ends[j + k - 1]), item) for j, k, item in hits)

    def matches(self, text: str) -> list[tuple[int, int, str]]:
        """(start_char, end_char, item_id) of every n-gram of `text` found in the index."""
        return [(start, end, self.item_ids[item]) for start, end, item in self._spans(text)]

    def summary(self) -> dict[str, Any]:
        return {
            "items": len(self.item_ids),
            "ngrams": len(self),
            "ngram": self.n,
            "lengths": self.lengths,
            "skipped_short_items": self.skipped_short_items,
        }


def _read_items(path: Path, name: str, text_fields: Sequence[str]) -> Iterator[tuple[str, str]]:
    """(item_id, text) of every item in one benchmark file."""
    if not path.name.endswith(_JSONL_SUFFIXES):
        text, _ = decode_utf8(path.read_bytes())
        for number, paragraph in enumerate(split_paragraphs(text), start=1):
            yield f"{name}#{number}", paragraph
        return
    for number, raw in enumerate(_lines(path), start=1):
        if not raw.strip():
            continue
        try:
            record = json.loads(decode_utf8(raw)[0])
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{number} is not valid JSON ({e.msg}); fix or remove the line.") from e
        if not isinstance(record, dict):
            raise UserError(f"{path}:{number} is not a JSON object; benchmark JSONL needs one object per line.")
        parts = [_field_text(record.get(f)) for f in text_fields]
        text = "\n".join(p for p in parts if p)
        if text:
            record_id = record.get("id")
            yield (f"{name}:{record_id}" if isinstance(record_id, (str, int)) else f"{name}:{number}"), text


def _field_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, (list, tuple)):
        return "\n".join(filter(None, (_field_text(v) for v in value)))
    return ""


# ---- the step ---------------------------------------------------------------------------------


def _files_key(paths: Sequence[str]) -> tuple[tuple[str, int, int], ...]:
    """(path, size, mtime) of every file under `paths`, to notice edited benchmark files."""
    files = []
    for path, _ in expand_paths(list(paths)):
        status = path.stat()
        files.append((str(path), status.st_size, status.st_mtime_ns))
    return tuple(files)


@functools.lru_cache(maxsize=4)
def _cached_index(paths: tuple[str, ...], files: tuple[tuple[str, int, int], ...], text_fields: tuple[str, ...], n: int, min_item_words: int) -> NGramIndex:
    """One index per process for the same unchanged files (pipeline workers build a step per shard);
    `files` (path, size, mtime of each file) is only part of the cache key."""
    return NGramIndex.from_files(paths, text_fields, n, min_item_words)


class Decontaminate(Step):
    """Removes (or cuts out) training text that shares an n-gram with a benchmark item.

    In "cut" mode a contaminated document continues as one document per kept piece, with id
    "<id>#<k>" (k from 0), as GPT-3 did, and meta "decontaminated" (windows cut), "piece" and
    "pieces"; `stats.kept` counts input documents with at least one piece and `pieces_out` the
    documents yielded for them. Documents without a match pass unchanged.

    `matches` lists up to MAX_REPORTED_MATCHES {document_id, benchmark_item, benchmark_file,
    ngram_example} records, one per (document, item) pair; `matches_total` counts all of them.
    """

    name: ClassVar[str] = "decontaminate"

    def __init__(self, config: DecontaminateConfig | None = None, index: NGramIndex | None = None) -> None:
        super().__init__()
        self.config = config or DecontaminateConfig()
        if index is None:
            if not self.config.benchmarks:
                raise UserError("Decontamination needs benchmark files; set benchmarks to one or more paths.")
            benchmarks = tuple(self.config.benchmarks)
            index = _cached_index(benchmarks, _files_key(benchmarks), tuple(self.config.text_fields), self.config.ngram, self.config.min_item_words)
        self.index = index
        self.matches: list[dict[str, Any]] = []
        self.matches_total = 0
        self.contaminated_documents = 0
        self.pieces_out = 0

    def details(self) -> dict[str, Any]:
        """Everything for the manifest: index size, counts and the listed matches."""
        return {
            "index": self.index.summary(),
            "mode": self.config.mode,
            "contaminated_documents": self.contaminated_documents,
            "pieces_out": self.pieces_out,
            "matches_total": self.matches_total,
            "matches": self.matches,
        }

    @classmethod
    def merge_details(cls, parts: list[dict[str, Any]]) -> dict[str, Any]:
        # every shard searched the same index: its size is not a count to add up
        merged = super().merge_details([{k: v for k, v in part.items() if k != "index"} for part in parts])
        return {"index": parts[0]["index"], **merged} if parts else merged

    def _record(self, document: Document, spans: list[tuple[int, int, int]]) -> None:
        seen: set[int] = set()
        for start, end, item in spans:
            if item in seen:
                continue
            seen.add(item)
            self.matches_total += 1
            if len(self.matches) < MAX_REPORTED_MATCHES:
                self.matches.append(
                    {
                        "document_id": document.id,
                        "benchmark_item": self.index.item_ids[item],
                        "benchmark_file": self.index.item_files[item],
                        "ngram_example": document.text[start:end][:_EXAMPLE_CHARS],
                    }
                )

    def run(self, documents: Iterable[Document]) -> Iterator[Document]:
        config = self.config
        for document in documents:
            self.stats.read += 1
            spans = self.index._spans(document.text)
            if not spans:
                self.stats.kept += 1
                yield document
                continue
            self.contaminated_documents += 1
            self._record(document, spans)
            if config.mode == "drop":
                self.remove(document, "contaminated")
                continue
            windows, pieces = cut(document.text, spans, config.cut_margin_chars)
            if len(pieces) > config.max_pieces:
                self.remove(document, "contaminated_too_many_pieces")
                continue
            kept = [piece for piece in (p.strip() for p in pieces) if piece and len(piece) >= config.min_piece_chars]
            if not kept:
                self.remove(document, "contaminated_all_pieces")
                continue
            self.stats.kept += 1
            self.pieces_out += len(kept)
            for k, piece in enumerate(kept):
                meta = {**document.meta, "decontaminated": windows, "piece": k, "pieces": len(kept)}
                yield Document(id=f"{document.id}#{k}", text=piece, meta=meta)


def cut(text: str, spans: Iterable[tuple[int, int, Any]], margin: int) -> tuple[int, list[str]]:
    """Remove every span widened by `margin` characters each side: (windows cut, non-empty pieces left)."""
    windows: list[list[int]] = []
    for start, end, _ in sorted(spans):
        low, high = max(0, start - margin), min(len(text), end + margin)
        if windows and low <= windows[-1][1]:
            windows[-1][1] = max(windows[-1][1], high)
        else:
            windows.append([low, high])
    pieces, position = [], 0
    for low, high in windows:
        pieces.append(text[position:low])
        position = high
    pieces.append(text[position:])
    return len(windows), [piece for piece in pieces if piece]


@dataclass
class DecontaminationResult:
    """What `decontaminate_texts` kept, with the step that did it (stats, matches, report())."""

    texts: list[str]
    step: Decontaminate

    @property
    def stats(self) -> StepStats:
        return self.step.stats


def decontaminate_texts(
    train_texts: Iterable[str], heldout_texts: Iterable[str], config: DecontaminateConfig | None = None
) -> DecontaminationResult:
    """Decontaminate `train_texts` against `heldout_texts` (ids "train:<i>" and "heldout:<i>").

    Swap the arguments to check a validation split against the training documents instead.
    """
    config = config or DecontaminateConfig()
    index = NGramIndex.from_texts(
        ((f"heldout:{i}", text) for i, text in enumerate(heldout_texts)), config.ngram, config.min_item_words
    )
    step = Decontaminate(config, index=index)
    documents = (Document(id=f"train:{i}", text=text) for i, text in enumerate(train_texts))
    return DecontaminationResult([doc.text for doc in step.run(documents)], step)
