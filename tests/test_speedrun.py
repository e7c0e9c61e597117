"""The main job end to end on the real default corpus, with a tiny model and a short budget."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from scratchlm.data.corpus import CORPORA, cache_dir
from scratchlm.data.shards import read_documents_tokens
from scratchlm.errors import UserError
from scratchlm.speedrun import SpeedrunConfig, speedrun
from scratchlm.tokenizer.tokenizer import Tokenizer


def test_speedrun_end_to_end(tmp_path: Path) -> None:
    if not (cache_dir() / "corpora" / CORPORA["shakespeare"].filename).is_file():
        pytest.skip("default corpus not in cache; run `scratchlm data fetch shakespeare` (tests never download)")
    config = SpeedrunConfig(out_dir=str(tmp_path), vocab_size=512, train_minutes=0.1, sample_tokens=8, prompts=["ROMEO."])
    overrides = ["model.n_layer=1", "model.n_embd=32", "model.n_head=2", "model.block_size=32", "train.batch_tokens=512", "train.micro_batch_size=16", "train.eval_every=5", "train.eval_tokens=512", "train.max_steps=10"]
    report = speedrun(config, overrides)

    summary = json.loads((tmp_path / "summary.json").read_text())
    # Whole plays are held out: every validation document is one of the chosen works.
    manifest = json.loads((tmp_path / "shards" / "manifest.json").read_text())
    assert sorted(manifest["split_rule"]["val_groups"]) == sorted(config.val_works)
    assert summary["documents"]["val_pieces"] == manifest["splits"]["val"]["documents"]
    assert summary["documents"]["train"] + summary["documents"]["val"] == summary["documents"]["total"] == 77
    assert summary["training"]["step"] == 10
    assert 0 < summary["eval"]["bpb"] < 10 and summary["eval"]["tokens"] > 100_000
    # The held-out word-order task, scored and checked against the training plays.
    benchmark = summary["benchmark"]
    assert benchmark["items"] == 200 and 0 <= benchmark["accuracy"] <= 1 and benchmark["accuracy_stderr"] > 0
    assert benchmark["contamination"]["benchmark_items"] > 0 and 0 <= benchmark["contamination"]["contaminated_items"] <= benchmark["contamination"]["benchmark_items"]
    assert "held-out word order" in report.read_text()
    text = report.read_text()
    for heading in ("## Result", "## Data", "## Wall time per stage", "## Samples", "loss.png"):
        assert heading in text
    assert (tmp_path / "loss.png").stat().st_size > 10_000
    assert (tmp_path / "tokenizer" / "tokenizer.json").is_file()

    # Independently of the decontamination code: no word 13-gram of a validation document
    # (decoded back from the shards) occurs in any training document.
    tokenizer = Tokenizer.load(tmp_path / "tokenizer")

    def grams(text: str) -> set[tuple[str, ...]]:
        words = re.findall(r"[^\W_]+", text.lower())
        return {tuple(words[i : i + 13]) for i in range(len(words) - 12)}

    train_grams = set().union(*(grams(tokenizer.decode(ids)) for ids in read_documents_tokens(tmp_path / "shards", "train")))
    val_grams = set().union(*(grams(tokenizer.decode(ids)) for ids in read_documents_tokens(tmp_path / "shards", "val")))
    assert len(val_grams) > 100_000 and not (val_grams & train_grams)


def test_report_states_only_what_the_run_found() -> None:
    from scratchlm.speedrun import _decontamination_text, _found

    none = {"name": "minhash_dedup", "read": 77, "kept": 77, "removed": 0, "details": {"clusters": 0, "documents_in_clusters": 0, "largest_cluster": 0}}
    some = {**none, "details": {"clusters": 1, "documents_in_clusters": 2, "largest_cluster": 2}}
    assert _found(none) == "0 near-duplicate clusters"
    assert _found(some) == "1 near-duplicate cluster (2 documents, the largest 2)"
    found = {"matches": 1, "examples": [], "val_characters_before": 1000, "val_characters_after": 600, "shared_after_cut": 0}
    assert "1 shared 13-gram " in _decontamination_text(found) and "shares no 13-gram" in _decontamination_text(found)
    assert "still shares 2 13-grams" in _decontamination_text({**found, "matches": 3, "shared_after_cut": 2})


def test_second_speedrun_into_the_same_directory_is_refused_before_any_work(tmp_path: Path) -> None:
    (tmp_path / "train" / "checkpoints" / "step_0000010").mkdir(parents=True)
    (tmp_path / "train" / "metrics.jsonl").write_text("{}\n")
    started = time.perf_counter()
    with pytest.raises(UserError, match="already holds a speedrun.*--overwrite"):
        speedrun(SpeedrunConfig(out_dir=str(tmp_path)))
    assert time.perf_counter() - started < 5
    assert (tmp_path / "train" / "metrics.jsonl").read_text() == "{}\n"
