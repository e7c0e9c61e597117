"""Shared test fixtures: the data beside the project, and small synthetic corpora."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from scratchlm.console import set_quiet

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SCRATCHLM_SHARED_DATA", ROOT.parent / "shared" / "data"))


@pytest.fixture(autouse=True)
def _quiet() -> None:
    set_quiet(True)


def shared_file(relative: str) -> Path:
    """A file from ../shared/data, or skip the test saying why."""
    path = SHARED_DATA / relative
    if not path.exists():
        pytest.skip(f"{path} is absent (the shared test data sits beside the repository as ../shared/data)")
    return path


WORDS = (
    "the of and to in is was he that it for on with as his they be at one have this from or had by "
    "word but what some we can out other were all there when up use your how said an each she which do "
    "their time if will way about many then them write would like so these her long make thing see him "
    "two has look more day could go come did number sound no most people my over know water than call "
    "first who may down side been now find head stand own page should country found answer school grow"
).split()


def synthetic_text(seed: int, n_words: int = 3000) -> str:
    """Deterministic English-like text with punctuation, digits, case and line breaks."""
    rng = random.Random(seed)
    out: list[str] = []
    for i in range(n_words):
        word = rng.choice(WORDS)
        if rng.random() < 0.1:
            word = word.capitalize()
        if rng.random() < 0.03:
            word = str(rng.randint(0, 99999))
        out.append(word)
        r = rng.random()
        out.append(". " if r < 0.05 else ",\n" if r < 0.08 else "'s " if r < 0.1 else "  " if r < 0.11 else " ")
    return "".join(out)
