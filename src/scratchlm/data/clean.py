"""Basic text cleaning: Unicode NFC, control characters, line endings, Project Gutenberg framing.

The full pipeline (language ID, quality filters, dedup, decontamination) builds on these; the
speedrun uses them alone.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from scratchlm.data.documents import Document
from scratchlm.data.pipeline import Step

# C0/C1 control characters except tab and newline (carriage returns are handled as line endings).
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
# Gutenberg's framing lines, in the wordings used across its history.
_GUTENBERG_START = re.compile(r"^\*{3}\s*START OF (?:THE|THIS) PROJECT GUTENBERG.*$|^\*END\*THE SMALL PRINT.*$", re.IGNORECASE | re.MULTILINE)
_GUTENBERG_END = re.compile(r"^\*{3}\s*END OF (?:THE|THIS) PROJECT GUTENBERG.*$|^End of (?:the )?Project Gutenberg.*$", re.IGNORECASE | re.MULTILINE)


@dataclass
class CleanStats:
    """What cleaning changed, for the manifest and the report."""

    documents: int = 0
    control_characters: int = 0
    gutenberg_headers: int = 0
    gutenberg_footers: int = 0
    characters_removed: int = 0
    changed_ids: list[str] = field(default_factory=list)


def strip_gutenberg(text: str) -> tuple[str, bool, bool]:
    """Text between Gutenberg's START and END markers (licence and header removed), and which were found."""
    # Every marker holds a "*" or the word "Gutenberg" (no other character matches these letters
    # case-insensitively), and these scans cost far less than the two multiline regex searches.
    if "*" not in text and "gutenberg" not in text.lower():
        return text, False, False
    start = _GUTENBERG_START.search(text)
    if start:
        text = text[start.end() :]
    end = _GUTENBERG_END.search(text)
    if end:
        text = text[: end.start()]
    return text, start is not None, end is not None


def clean_text(text: str, doc_id: str = "", stats: CleanStats | None = None) -> str:
    """NFC, \\r\\n → \\n, control characters removed, Gutenberg framing removed, outer blank lines trimmed."""
    original = len(text)
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
    text, controls = _CONTROL.subn("", text)
    text, had_start, had_end = strip_gutenberg(text)
    text = text.strip("\n") + "\n" if text.strip() else ""
    if stats is not None:
        stats.documents += 1
        stats.control_characters += controls
        stats.gutenberg_headers += had_start
        stats.gutenberg_footers += had_end
        stats.characters_removed += max(0, original - len(text))
        if controls or had_start or had_end:
            stats.changed_ids.append(doc_id)
    return text


class CleanStep(Step):
    """`clean_text` as a pipeline step; a document left with no text is removed."""

    name = "clean"

    def __init__(self) -> None:
        super().__init__()
        self.clean_stats = CleanStats()

    def run(self, documents: Iterable[Document]) -> Iterator[Document]:
        for document in documents:
            self.stats.read += 1
            text = clean_text(document.text, document.id, self.clean_stats)
            if not text:
                self.remove(document, "empty_after_cleaning")
                continue
            self.stats.kept += 1
            yield Document(document.id, text, document.meta)

    def details(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self.clean_stats).items() if k != "changed_ids"}
