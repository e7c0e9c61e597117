"""The data pipeline's step contract: documents flow through steps that count what they remove.

A step is one small object with one method, `run(documents) -> documents`. It counts every
document it reads, keeps and removes, with the reason for each removal, so a pipeline's manifest
can show that read = kept + removed for every step and nothing went missing. A `Filter` is a step
that only decides keep-or-remove, one document at a time: it implements `reason(doc)`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

from scratchlm.data.documents import Document


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
