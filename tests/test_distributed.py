"""Distributed training on CPU over gloo, through the real launcher (`scratchlm train --nproc N`,
which runs torchrun): every layout trains on the same losses as one process, checkpoints move
between world sizes, and a killed process ends the job with a clear message and a checkpoint
that resumes.

One process is the reference: with the same global batch and seed the data of every step is the
same whatever the layout (the loader's ranks split one shared stream), so DDP, FSDP2 (and HSDP),
tensor parallelism and 2-D must reproduce its losses and gradient norms up to the order of
floating-point sums (fp32: 2e-4 absolute).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch.distributed as dist
from conftest import make_data, synthetic_text
from safetensors.torch import load_file

from scratchlm.checkpoints import list_checkpoints
from scratchlm.config import load_config, resolve_config_file
from scratchlm.train.run import pretrain
from scratchlm.train.settings import RunConfig

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="torch.distributed with gloo is not available in this torch build")

CLI = [sys.executable, "-m", "scratchlm"]
ARCHITECTURES = {
    "gpt2": ["model.n_head=4", "model.n_embd=64"],
    "modern": ["model.n_head=4", "model.n_kv_head=2", "model.n_embd=64", "model.position=rope", "model.norm=rmsnorm", "model.mlp=swiglu", "model.qk_norm=true", "model.bias=false"],
}
# (name, processes, [parallel] settings, architecture)
LAYOUTS = [
    ("ddp", 2, ["parallel.dp=2"], "gpt2"),
    ("fsdp", 2, ["parallel.fsdp=2"], "gpt2"),
    ("fsdp-no-reshard", 2, ["parallel.fsdp=2", "parallel.reshard_after_forward=false"], "modern"),
    ("tp", 2, ["parallel.tp=2"], "gpt2"),
    ("tp-modern", 2, ["parallel.tp=2"], "modern"),
    ("fsdp×tp", 4, ["parallel.fsdp=2", "parallel.tp=2"], "modern"),
    ("hsdp", 4, ["parallel.dp=2", "parallel.fsdp=2", "train.micro_batch_size=2"], "gpt2"),
]
TOLERANCE = 2e-4


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_data(tmp_path_factory.mktemp("data"), [synthetic_text(i) for i in range(6)])


def settings(shards: Path, out: Path, architecture: str, *extra: str) -> list[str]:
    return [
        f"data.shards={shards}",
        f"train.out_dir={out}",
        "train.max_steps=5",
        "train.eval_every=0",
        "train.sample_tokens=4",
        *ARCHITECTURES[architecture],
        *extra,
    ]


def launch(nproc: int, overrides: list[str], *flags: str, timeout: float = 300) -> subprocess.CompletedProcess:
    args = [*CLI, "-q", "train", "tiny", *(f"--set={o}" for o in overrides), "--nproc", str(nproc), *flags]
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1"})


def steps(run: Path) -> list[dict]:
    return [record for record in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in record]


def final_eval(run: Path) -> dict:
    return [record for record in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "val_loss" in record][-1]


@pytest.fixture(scope="module")
def reference(shards: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One process, in this one, per architecture."""
    runs = {}
    for architecture in ARCHITECTURES:
        out = tmp_path_factory.mktemp(f"reference-{architecture}")
        pretrain(load_config(RunConfig, resolve_config_file("tiny"), settings(shards, out, architecture)))
        runs[architecture] = out
    return runs


def assert_same_run(run: Path, reference: Path, first_step: int = 1) -> None:
    want = [r for r in steps(reference) if r["step"] >= first_step]
    got = steps(run)
    assert [r["step"] for r in got] == [r["step"] for r in want]
    for mine, theirs in zip(got, want):
        assert abs(mine["loss"] - theirs["loss"]) < TOLERANCE, (mine, theirs)
        assert abs(mine["grad_norm"] - theirs["grad_norm"]) < TOLERANCE, (mine, theirs)
    assert abs(final_eval(run)["val_loss"] - final_eval(reference)["val_loss"]) < TOLERANCE
    # Every tensor ends where one process put it (a gradient summed over the wrong ranks shows
    # here even when the loss hardly moves).
    weights, want = (load_file(str(list_checkpoints(r)[-1] / "model.safetensors")) for r in (run, reference))
    assert weights.keys() == want.keys()
    for name, tensor in weights.items():
        if name.endswith("attn.c_k.bias"):
            # Its exact gradient is zero (softmax ignores a constant added to every score), so
            # Adam turns rounding noise into full-size updates of either sign.
            continue
        assert (tensor - want[name]).norm() <= 1e-4 * want[name].norm(), (name, float((tensor - want[name]).norm()), float(want[name].norm()))


@pytest.mark.parametrize(("name", "nproc", "layout", "architecture"), LAYOUTS, ids=[layout[0] for layout in LAYOUTS])
def test_every_layout_trains_on_the_losses_of_one_process(shards: Path, reference: dict[str, Path], tmp_path: Path, name: str, nproc: int, layout: list[str], architecture: str) -> None:
    out = tmp_path / name
    result = launch(nproc, settings(shards, out, architecture, *layout))
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_run(out, reference[architecture])
    # Rank 0 alone writes the samples, once per evaluation; the checkpoint holds one full model.
    assert (out / "samples.md").read_text().count("## step") == 1
    checkpoint = out / "checkpoints" / "step_0000005"
    assert sorted(p.name for p in (checkpoint / "train_state").iterdir()) == ["optimizer", *(f"rng_rank{r}.pt" for r in range(nproc)), "state.pt"]
    generated = subprocess.run([*CLI, "generate", str(checkpoint), "--max-new-tokens", "3", "--seed", "1"], capture_output=True, text=True, timeout=120)
    assert generated.returncode == 0, generated.stderr


@pytest.mark.parametrize("layout", ["parallel.fsdp=2", "parallel.tp=2"])
def test_activation_checkpointing_and_bf16_compose_with_sharding(shards: Path, tmp_path: Path, layout: str) -> None:
    """bf16 autocast with per-block recomputation; FSDP also gathers its parameters in bf16
    (parallel.mixed_precision), so its losses match one process to bf16 precision, not fp32's."""
    mixed = ["train.dtype=bfloat16", "train.activation_checkpointing=true"]
    reference = tmp_path / "reference"
    pretrain(load_config(RunConfig, resolve_config_file("tiny"), settings(shards, reference, "modern", *mixed)))
    out = tmp_path / "run"
    result = launch(2, settings(shards, out, "modern", *mixed, layout))
    assert result.returncode == 0, result.stderr[-3000:]
    for mine, theirs in zip(steps(out), steps(reference), strict=True):
        assert abs(mine["loss"] - theirs["loss"]) < 2e-3, (mine, theirs)


@pytest.mark.parametrize("layout", ["parallel.fsdp=2", "parallel.tp=2"])
def test_a_sharded_checkpoint_resumes_in_one_process_with_the_same_next_losses(shards: Path, reference: dict[str, Path], tmp_path: Path, layout: str) -> None:
    out = tmp_path / "run"
    overrides = settings(shards, out, "gpt2", "train.checkpoint_every=3")
    assert launch(2, [*overrides, layout]).returncode == 0
    shutil.rmtree(out / "checkpoints" / "step_0000005")  # as if the job had died after step 3
    pretrain(load_config(RunConfig, resolve_config_file("tiny"), overrides), resume=True)
    assert_same_run(out, reference["gpt2"])


def test_a_one_process_checkpoint_resumes_sharded(shards: Path, reference: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "run"
    overrides = settings(shards, out, "gpt2", "train.checkpoint_every=3")
    pretrain(load_config(RunConfig, resolve_config_file("tiny"), overrides))
    shutil.rmtree(out / "checkpoints" / "step_0000005")
    result = launch(2, [*overrides, "parallel.fsdp=2"], "--resume")
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_run(out, reference["gpt2"])


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(child) for child in path.read_text().split()] if path.exists() else []


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="finding the worker processes reads /proc (Linux)")
def test_a_killed_process_ends_the_job_with_one_sentence_and_the_run_resumes(shards: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    overrides = settings(shards, out, "gpt2", "train.max_steps=400", "train.checkpoint_every=2", "parallel.fsdp=2")
    args = [*CLI, "-q", "train", "tiny", *(f"--set={o}" for o in overrides), "--nproc", "2"]
    job = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 120
    while not (out / "checkpoints" / "step_0000002").exists():
        assert job.poll() is None and time.monotonic() < deadline, "the job ended or stalled before its first checkpoint"
        time.sleep(0.2)
    workers = _children(job.pid)
    assert len(workers) == 2
    os.kill(workers[1], signal.SIGKILL)
    _, stderr = job.communicate(timeout=120)
    assert job.returncode == 2
    assert "Training stopped: process 1 of 2 was killed by SIGKILL" in stderr and "continue with --resume" in stderr, stderr[-3000:]
    assert "Traceback" not in stderr.split("Training stopped")[-1]
    last = int(stderr.split("step_")[-1][:7])
    assert last >= 2
    # The newest complete checkpoint resumes, here in one process.
    resumed = load_config(RunConfig, resolve_config_file("tiny"), [*overrides[:-1], f"train.max_steps={last + 2}"])
    pretrain(resumed, resume=True)
    assert [r["step"] for r in steps(out)][-2:] == [last + 1, last + 2]


@pytest.mark.parametrize(
    ("overrides", "nproc", "message"),
    [
        (["parallel.dp=3"], 2, "parallel.dp × fsdp × tp = 3 × 1 × 1 = 3, but 2 process(es) were launched"),
        (["parallel.tp=2", "model.n_head=3", "model.n_embd=48"], 2, "parallel.tp = 2 does not divide model.n_head = 3"),
        (["parallel.fsdp=2", "train.batch_tokens=128"], 2, "train.batch_tokens 128 is not a multiple of micro_batch_size × block_size × data-parallel processes = 256"),
        (["parallel.backend=deepspeed", "parallel.tp=2"], 2, "leave parallel.dp, fsdp and tp at their defaults"),
        (["data.shards=/nonexistent/shards"], 2, "/nonexistent/shards has no manifest.json"),
        (["parallel.fsdp=2", "parallel.cpu_offload=true", "train.device=cpu"], 2, "parallel.cpu_offload moves sharded state from the GPU"),
    ],
)
def test_a_layout_that_cannot_work_is_refused_before_any_process_starts(shards: Path, tmp_path: Path, overrides: list[str], nproc: int, message: str) -> None:
    result = launch(nproc, [f"data.shards={shards}", f"train.out_dir={tmp_path / 'run'}", *overrides], timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error:") and message in result.stderr and result.stderr.count("error") == 1, result.stderr
    assert not (tmp_path / "run").exists()


POISON_RANK_1 = """
import os, sys
from scratchlm.cli import main
from scratchlm.model.gpt import GPT

forward = GPT.forward
calls = {"n": 0}

def poisoned(self, idx, targets=None, cache=None, **kwargs):
    logits, loss = forward(self, idx, targets, cache, **kwargs)
    if targets is not None and self.training and os.environ["RANK"] == "1":
        calls["n"] += 1
        if calls["n"] > 3:  # one micro-batch per step on each rank: steps 1-3 are healthy
            loss = loss * float("nan")
    return logits, loss

GPT.forward = poisoned
sys.argv = ["scratchlm", "-q", "train", "tiny", *sys.argv[1:]]
main()
"""


def test_a_nan_on_one_rank_stops_every_rank_at_the_same_step(shards: Path, tmp_path: Path) -> None:
    script = tmp_path / "poison.py"
    script.write_text(POISON_RANK_1)
    overrides = settings(shards, tmp_path / "run", "gpt2", "parallel.dp=2", "train.checkpoint_every=2")
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(script), *(f"--set={o}" for o in overrides)]
    result = subprocess.run(args, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode != 0
    # The mean loss is NaN on both ranks, so both stop before the update of step 4, with the same sentence.
    for prefix in ("error:", "error (rank 1):"):
        assert f"{prefix} The loss became nan at step 3" in result.stderr, result.stderr[-3000:]
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["step_0000002"]
