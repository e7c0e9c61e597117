"""Contamination: benchmark items that share a word 13-gram with training documents are found,
in document files and in shards (decoded), with the decontamination step's own index."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import synthetic_text

from scratchlm.data.documents import Document
from scratchlm.data.shards import ShardConfig, write_shards
from scratchlm.errors import UserError
from scratchlm.eval.contamination import contamination, render
from scratchlm.tokenizer.train import TokenizerTrainConfig, train_from_texts

LEAKED = "the quick brown fox jumps over the lazy dog near the quiet river bank at dawn"
CLEAN = "colourless green ideas sleep furiously while seven silent engineers count tiny pebbles"


@pytest.fixture
def benchmark(tmp_path: Path) -> Path:
    path = tmp_path / "bench.jsonl"
    items = [{"id": "leaked", "text": LEAKED.upper() + "!"}, {"id": "clean", "text": CLEAN}, {"id": "short", "text": "too short"}]
    path.write_text("".join(json.dumps(item) + "\n" for item in items))
    return path


def documents(tmp_path: Path) -> Path:
    directory = tmp_path / "docs"
    directory.mkdir()
    texts = [synthetic_text(1, 300), synthetic_text(2, 300) + f"\nAnd then, {LEAKED}, they said.\n", synthetic_text(3, 300) + " " + LEAKED]
    (directory / "part.jsonl").write_text("".join(json.dumps({"id": f"doc{i}", "text": t}) + "\n" for i, t in enumerate(texts)))
    return directory


def test_leaked_items_are_found_in_documents_and_normalization_applies(tmp_path: Path, benchmark: Path) -> None:
    result = contamination([documents(tmp_path)], [benchmark])
    assert result["benchmark_items"] == 2 and result["skipped_short_items"] == 1  # "too short" is under 8 words
    assert result["training_documents"] == 3 and result["contaminated_items"] == 1
    [row] = result["items"]
    assert row["item"] == "bench.jsonl:leaked" and row["documents"] == 2 and len(row["examples"]) == 2
    assert "1 of 2 benchmark items (50.0 %)" in render(result)


def test_shards_are_decoded_and_only_their_train_split_counts(tmp_path: Path, benchmark: Path) -> None:
    tokenizer = train_from_texts([synthetic_text(0)], TokenizerTrainConfig(vocab_size=300, workers=1))
    docs = [Document(id=f"d{i}", text=synthetic_text(i, 200) + (f" {LEAKED}" if i == 3 else "")) for i in range(8)]
    write_shards(docs, tokenizer, tmp_path / "data" / "shards", ShardConfig(val_fraction=0.0))
    tokenizer.save(tmp_path / "data" / "tokenizer")
    result = contamination([tmp_path / "data" / "shards"], [benchmark])
    assert result["training_documents"] == 8 and result["contaminated_items"] == 1


def test_bad_inputs_are_one_sentence(tmp_path: Path, benchmark: Path) -> None:
    with pytest.raises(UserError, match="No such file"):
        contamination([tmp_path / "missing"], [benchmark])
    with pytest.raises(UserError, match="No such file"):
        contamination([documents(tmp_path)], [tmp_path / "nope.jsonl"])
    (tmp_path / "shorts.jsonl").write_text(json.dumps({"text": "two words"}) + "\n")
    with pytest.raises(UserError, match="No benchmark item has 8 words or more"):
        contamination([tmp_path / "docs"], [tmp_path / "shorts.jsonl"])
