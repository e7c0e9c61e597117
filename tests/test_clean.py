"""Basic cleaning: NFC, line endings, control characters and Project Gutenberg framing."""

from __future__ import annotations

import pytest

from scratchlm.data.clean import CleanStats, CleanStep, clean_text, strip_gutenberg
from scratchlm.data.documents import Document

BODY = "ACT I. SCENE I.\n\nEnter two gentlemen.\n"


@pytest.mark.parametrize(
    ("header", "footer"),
    [
        ("*** START OF THE PROJECT GUTENBERG EBOOK HAMLET ***", "*** END OF THE PROJECT GUTENBERG EBOOK HAMLET ***"),
        ("***start of this project gutenberg ebook hamlet", "End of the Project Gutenberg EBook of Hamlet"),
        ("*END*THE SMALL PRINT! FOR PUBLIC DOMAIN ETEXTS*", "end of project gutenberg's hamlet"),
    ],
)
def test_gutenberg_framing_is_removed(header: str, footer: str) -> None:
    text = f"The Project Gutenberg EBook of Hamlet\nLicence.\n{header}\n{BODY}{footer}\nMore licence.\n"
    stats = CleanStats()
    assert clean_text(text, "hamlet", stats) == BODY
    assert (stats.gutenberg_headers, stats.gutenberg_footers, stats.changed_ids) == (1, 1, ["hamlet"])


def test_gutenberg_footer_alone_without_any_star() -> None:
    # No "*" anywhere: only the word "Gutenberg" can reveal the footer.
    assert strip_gutenberg(BODY + "END OF PROJECT GUTENBERG'S HAMLET\nLicence.\n") == (BODY, False, True)


@pytest.mark.parametrize(
    "text",
    [BODY, BODY + "* a list item\n*** a section break\n", BODY + "Read it at Project Gutenberg, the end of it.\n"],
)
def test_text_without_markers_is_unchanged(text: str) -> None:
    assert strip_gutenberg(text) == (text, False, False)


def test_line_endings_controls_and_nfc() -> None:
    stats = CleanStats()
    assert clean_text("\n\nCafe\u0301\r\nbell\x07\rend", "d", stats) == "Caf\u00e9\nbell\nend\n"
    assert stats.control_characters == 1 and stats.changed_ids == ["d"]


def test_step_removes_documents_left_empty() -> None:
    step = CleanStep()
    kept = list(step.run([Document("a", "text"), Document("b", " \x00\n\r\n")]))
    assert [d.id for d in kept] == ["a"] and dict(step.stats.removed) == {"empty_after_cleaning": 1}
