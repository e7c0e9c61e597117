"""The DeepSpeed backend: ZeRO stages 1, 2 and 3 over 2 CPU processes (gloo) train on the
losses, gradient norms and final weights of one process with PyTorch's own engine, and a ZeRO-3
checkpoint resumes exactly at the same number of processes.

DeepSpeed compiles one C++ op on its first start on a machine (30-100 s, then cached in
~/.cache/torch_extensions): the first launch of this module pays it.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
from conftest import make_data, synthetic_text
from test_distributed import assert_same_run, launch, settings, steps

from scratchlm.config import load_config, resolve_config_file
from scratchlm.train.run import pretrain
from scratchlm.train.settings import RunConfig

pytestmark = [
    pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="DeepSpeed is not installed (pip install 'scratchlm[deepspeed]')"),
    pytest.mark.skipif(not any(shutil.which(c) for c in ("g++", "c++")), reason="DeepSpeed compiles a C++ op at start-up and no C++ compiler is installed"),
]


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_data(tmp_path_factory.mktemp("data"), [synthetic_text(i) for i in range(6)])


@pytest.fixture(scope="module")
def reference(shards: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("reference")
    pretrain(load_config(RunConfig, resolve_config_file("tiny"), settings(shards, out, "gpt2")))
    return out


@pytest.fixture(scope="module")
def shard_everything(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ZeRO-3 keeps tensors under 100k elements whole by default, which is every tensor of a test
    model; a DeepSpeed config file (merged over ours) makes it shard them all."""
    path = tmp_path_factory.mktemp("ds") / "deepspeed.json"
    path.write_text(json.dumps({"zero_optimization": {"stage3_param_persistence_threshold": 0}}))
    return path


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_zero_stages_train_on_the_losses_of_one_process(shards: Path, reference: Path, shard_everything: Path, tmp_path: Path, stage: int) -> None:
    out = tmp_path / "run"
    result = launch(2, settings(shards, out, "gpt2", "parallel.backend=deepspeed", f"parallel.zero_stage={stage}", f"parallel.deepspeed_config={shard_everything}"), timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_run(out, reference)


def test_a_zero3_checkpoint_resumes_exactly_and_only_at_its_own_size(shards: Path, reference: Path, shard_everything: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    overrides = settings(shards, out, "gpt2", "parallel.backend=deepspeed", "parallel.zero_stage=3", f"parallel.deepspeed_config={shard_everything}", "train.checkpoint_every=3")
    assert launch(2, overrides, timeout=400).returncode == 0
    shutil.rmtree(out / "checkpoints" / "step_0000005")
    one_process = launch(1, overrides, "--resume")
    assert one_process.returncode == 2 and "holds DeepSpeed's ZeRO shards for 2 processes; resume it with --nproc 2" in one_process.stderr, one_process.stderr
    resumed = launch(2, overrides, "--resume", timeout=400)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert [r["step"] for r in steps(out)] == [1, 2, 3, 4, 5]
    assert_same_run(out, reference)
