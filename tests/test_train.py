"""The training loop: loss falls, bad settings fail clearly, and a killed run resumes exactly."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import make_data, shared_file, synthetic_text

from scratchlm.config import load_config, resolve_config_file
from scratchlm.errors import UserError
from scratchlm.tokenizer.train import TokenizerTrainConfig, train_from_texts
from scratchlm.train.metrics import read_metrics
from scratchlm.train.optim import OptimConfig, lr_at
from scratchlm.train.run import pretrain
from scratchlm.train.settings import RunConfig

CLI = [sys.executable, "-c", "from scratchlm.cli import main; main()"]
# Fields that measure the machine, not the computation.
TIMING = {"tokens_per_s", "mfu", "elapsed_s", "train_s", "eval_s"}


@pytest.fixture(scope="module")
def synthetic_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_data(tmp_path_factory.mktemp("data"), [synthetic_text(seed, 6000) for seed in range(4)])


def tiny(shards: Path, out_dir: Path, *overrides: str) -> RunConfig:
    return load_config(RunConfig, resolve_config_file("tiny"), [f"data.shards={json.dumps(str(shards))}", f"train.out_dir={json.dumps(str(out_dir))}", *overrides])


def strip_timing(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in record.items() if k not in TIMING} for record in records]


def test_schedule_warmup_then_cosine_to_floor() -> None:
    config = OptimConfig(lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_at(0, 110, config) == pytest.approx(0.1)
    assert lr_at(9, 110, config) == pytest.approx(1.0)
    assert lr_at(60, 110, config) == pytest.approx(0.55)  # halfway down the cosine
    assert lr_at(110, 110, config) == pytest.approx(0.1)
    assert lr_at(500, 110, config) == pytest.approx(0.1)


def test_loss_falls_on_tinyshakespeare(tmp_path: Path) -> None:
    text = shared_file("tinyshakespeare.txt").read_text(encoding="utf-8")
    cut = int(len(text) * 0.9)
    shards = make_data(tmp_path, [text[:200_000], text[cut:]], vocab_size=512)
    result = pretrain(tiny(shards, tmp_path / "run", "train.max_steps=60", "train.eval_every=0", "optim.lr=1e-2"))
    losses = [r["loss"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "loss" in r]
    assert losses[-1] < losses[0] - 1.0
    assert result["val_loss"] < losses[0] - 1.0
    assert 0 < result["val_bpb"] < 8


def test_run_writes_metrics_checkpoint_and_samples(synthetic_shards: Path, tmp_path: Path) -> None:
    result = pretrain(tiny(synthetic_shards, tmp_path))
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in records if "loss" in r] == list(range(1, 21))
    assert {"loss", "lr", "grad_norm", "tokens_per_s", "mfu"} <= set(records[0])
    assert [r["step"] for r in records if "val_loss" in r] == [10, 20]
    assert result["step"] == 20 and result["tokens"] == 20 * 256
    assert (tmp_path / "checkpoints" / "step_0000020" / "model.safetensors").is_file()
    assert "## step 20" in (tmp_path / "samples.md").read_text()


def test_bad_settings_are_clear_errors(synthetic_shards: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="multiple of micro_batch_size"):
        pretrain(tiny(synthetic_shards, tmp_path, "train.batch_tokens=100"))
    with pytest.raises(UserError, match="smaller than the tokenizer"):
        pretrain(tiny(synthetic_shards, tmp_path, "model.vocab_size=100"))
    with pytest.raises(UserError, match="Nothing to resume"):
        pretrain(tiny(synthetic_shards, tmp_path / "fresh"), resume=True)
    assert not (tmp_path / "metrics.jsonl").exists()  # nothing was written by the refused runs
    other = train_from_texts([synthetic_text(42, 500)], TokenizerTrainConfig(vocab_size=280))
    other.save(tmp_path / "other")
    with pytest.raises(UserError, match="another tokenizer"):
        pretrain(tiny(synthetic_shards, tmp_path, f"data.tokenizer={json.dumps(str(tmp_path / 'other'))}"))


def test_cli_config_typo_names_the_closest_key(synthetic_shards: Path) -> None:
    result = subprocess.run([*CLI, "train", "tiny", "--set", "model.n_layr=3"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "did you mean 'model.n_layer'" in result.stderr and "Traceback" not in result.stderr


def test_killed_run_resumes_exactly(synthetic_shards: Path, tmp_path: Path) -> None:
    """SIGKILL a real training process after its first checkpoint; resuming must reproduce the
    uninterrupted run's losses bit for bit (fp32 on CPU)."""
    settings = ["--set", f"data.shards={json.dumps(str(synthetic_shards))}", "--set", "train.max_steps=150", "--set", "train.checkpoint_every=20", "--set", "train.eval_every=20", "--set", "model.dropout=0.1"]

    def command(out: Path, *extra: str) -> list[str]:
        return [*CLI, "-q", "train", "tiny", *settings, "--set", f"train.out_dir={json.dumps(str(out))}", *extra]

    whole = subprocess.run(command(tmp_path / "whole"), capture_output=True, text=True, timeout=300)
    assert whole.returncode == 0, whole.stderr

    killed = tmp_path / "killed"
    process = subprocess.Popen(command(killed), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (killed / "checkpoints" / "step_0000020" / "meta.json").exists():
        assert process.poll() is None, "the run ended before its first checkpoint"
        assert time.time() < deadline
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (killed / "checkpoints" / "step_0000150").exists(), "the run finished before it was killed"

    resumed = subprocess.run(command(killed, "--resume"), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    expected = strip_timing(read_metrics(tmp_path / "whole" / "metrics.jsonl"))
    assert strip_timing(read_metrics(killed / "metrics.jsonl")) == expected
    assert len([r for r in expected if "loss" in r]) == 150
    # The checkpoint at step 20 follows step 20's evaluation: nothing is logged or sampled twice.
    assert [r["step"] for r in expected if "val_loss" in r] == [20, 40, 60, 80, 100, 120, 140, 150]
    assert (killed / "samples.md").read_text() == (tmp_path / "whole" / "samples.md").read_text()


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(synthetic_shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from scratchlm.model.gpt import GPT

    forward = GPT.forward
    calls = {"n": 0}

    def poisoned(self, idx, targets=None, cache=None, **kwargs):
        logits, loss = forward(self, idx, targets, cache, **kwargs)
        if targets is not None and self.training:
            calls["n"] += 1
            if calls["n"] > 2 * 5:  # two micro-batches per step: steps 1-5 are healthy
                loss = loss * float("nan")
        return logits, loss

    monkeypatch.setattr(GPT, "forward", poisoned)
    with pytest.raises(UserError, match=r"loss became nan at step 5.*step_0000004"):
        pretrain(tiny(synthetic_shards, tmp_path, "train.checkpoint_every=2", "train.eval_every=0"))
    assert [p.name for p in sorted((tmp_path / "checkpoints").iterdir())] == ["step_0000002", "step_0000004"]
