"""The data pipeline's step contract: documents flow through steps that count what they remove.

A step is one small object with one method, `run(documents) -> documents`. It counts every
document it reads, keeps and removes, with the reason for each removal, so a pipeline's manifest
can show that read = kept + removed for every step and nothing went missing. A `Filter` is a step
that only decides keep-or-remove, one document at a time: it implements `reason(doc)`. A
`GlobalStep` (deduplication) decides over all documents at once; it is split into per-document
`keys`, one `decide` over every key, and a `DropStep` that removes what was decided, so that the
executors can run the costly first and last parts in parallel, shard by shard.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from scratchlm.data.documents import Document

MAX_LISTED = 1000
"""Longest list that merged step details keep (examples, matches); the counts beside them stay whole."""


def batched(documents: Iterable[Document], size: int) -> Iterator[list[Document]]:
    """Consecutive lists of up to `size` documents, in order (for steps that predict in batches)."""
    batch: list[Document] = []
    for document in documents:
        batch.append(document)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


@dataclass
class StepStats:
    """What one step saw: documents in, kept, and removed per reason."""

    read: int = 0
    kept: int = 0
    removed: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        return {"read": self.read, "kept": self.kept, "removed": sum(self.removed.values()), "removed_by_reason": dict(sorted(self.removed.items()))}


class Step:
    """A pipeline step: reads documents, yields the ones it keeps (possibly changed)."""

    name: ClassVar[str] = "step"

    def __init__(self) -> None:
        self.stats = StepStats()
        self.on_removed: Callable[[Document, str], None] | None = None
        """Called with each removed document and its reason (for `--keep-removed`)."""

    def remove(self, document: Document, reason: str) -> None:
        """Count a removal (every step removes through here, so counts always add up)."""
        self.stats.removed[reason] += 1
        if self.on_removed is not None:
            self.on_removed(document, f"{self.name}:{reason}")

    def run(self, documents: Iterable[Document]) -> Iterator[Document]:
        raise NotImplementedError

    def details(self) -> dict[str, Any]:
        """What the manifest should show beyond the counts (duplicate clusters, matches, ...)."""
        return {}

    @classmethod
    def merge_details(cls, parts: list[dict[str, Any]]) -> dict[str, Any]:
        """One step's details from the details of its runs over several shards, in shard order.

        Integers (counts) add up, lists are joined (up to MAX_LISTED items), nested dicts merge
        key by key and anything else (a setting, a string) keeps its first value; a step whose
        details hold integers that must not add up (an index size) overrides this.
        """
        merged: dict[str, Any] = {}
        for part in parts:
            for key, value in part.items():
                merged[key] = value if key not in merged else _merge_value(merged[key], value)
        return merged


class Filter(Step):
    """A step that keeps or removes each document on its own; subclasses implement `reason`."""

    def reason(self, document: Document) -> str | None:
        """Why to remove the document (a short reason such as "too_few_words"), or None to keep it."""
        raise NotImplementedError

    def run(self, documents: Iterable[Document]) -> Iterator[Document]:
        for document in documents:
            self.stats.read += 1
            why = self.reason(document)
            if why is None:
                self.stats.kept += 1
                yield document
            else:
                self.remove(document, why)


class GlobalStep(Step):
    """A step whose decisions need every document (deduplication: which copy came first).

    `keys` turns each document into a fixed-size row (a digest, a MinHash signature): the costly
    part, which executors run in parallel where the documents are. `decide` then sees every row
    in input order and returns which documents to remove, and a `DropStep` removes them. `run`
    does all three over one stream.
    """

    removal_reason: ClassVar[str] = "duplicate"
    batch_documents: ClassVar[int] = 256

    def keys(self, texts: list[str]) -> np.ndarray:
        """One key row per text."""
        raise NotImplementedError

    def decide(self, ids: list[str], keys: np.ndarray) -> np.ndarray:
        """A bool per document (in input order): remove it. Records what the manifest shows."""
        raise NotImplementedError

    def run(self, documents: Iterable[Document]) -> Iterator[Document]:
        batches, keys = [], []
        for batch in batched(documents, self.batch_documents):
            batches.append(batch)
            keys.append(self.keys([d.text for d in batch]))
        if not batches:
            return
        remove = self.decide([d.id for batch in batches for d in batch], np.concatenate(keys))
        yield from self.dropping(remove).run(d for batch in batches for d in batch)

    def dropping(self, remove: np.ndarray) -> DropStep:
        """A DropStep for these decisions that counts into this step's stats and removal hook."""
        drop = DropStep(self.name, remove, self.removal_reason)
        drop.stats, drop.on_removed = self.stats, self.on_removed
        return drop


class DropStep(Step):
    """Removes the documents a `GlobalStep` decided to remove, given as a bool per document."""

    def __init__(self, name: str, remove: np.ndarray, reason: str) -> None:
        super().__init__()
        self.name = name
        self.remove_flags = remove
        self.reason = reason

    def run(self, documents: Iterable[Document]) -> Iterator[Document]:
        flags = self.remove_flags.tolist()
        position = 0
        for document in documents:
            if position >= len(flags):
                raise RuntimeError(f"{self.name}: more documents than decisions; the work files of this run are inconsistent.")
            self.stats.read += 1
            if flags[position]:
                self.remove(document, self.reason)
            else:
                self.stats.kept += 1
                yield document
            position += 1
        if position != len(flags):
            raise RuntimeError(f"{self.name}: {len(flags) - position} decisions without documents; the work files of this run are inconsistent.")


def _merge_value(a: Any, b: Any) -> Any:
    if type(a) is int and type(b) is int:
        return a + b
    if isinstance(a, list) and isinstance(b, list):
        return (a + b)[:MAX_LISTED]
    if isinstance(a, dict) and isinstance(b, dict):
        return {**a, **{k: _merge_value(a[k], v) if k in a else v for k, v in b.items()}}
    return a
