"""Shared test fixtures: the data beside the project, and small synthetic corpora."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from scratchlm.console import set_quiet
from scratchlm.data.documents import Document
from scratchlm.data.shards import ShardConfig, write_shards
from scratchlm.tokenizer.train import TokenizerTrainConfig, train_from_texts

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


def make_data(directory: Path, texts: list[str], vocab_size: int = 300) -> Path:
    """tokenizer/ and shards/ under `directory` (the last text is the validation split); returns shards/."""
    tokenizer = train_from_texts(texts[:-1], TokenizerTrainConfig(vocab_size=vocab_size, workers=1))
    tokenizer.save(directory / "tokenizer")
    documents = [Document(f"d{i}", text, {"part": "val" if i == len(texts) - 1 else "train"}) for i, text in enumerate(texts)]
    write_shards(documents, tokenizer, directory / "shards", ShardConfig(val_key="part", val_keys=["val"], workers=1))
    return directory / "shards"
