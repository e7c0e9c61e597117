"""`scratchlm plan`: parameter and FLOP counts against the model itself, the sharding arithmetic,
bad input as one sentence, the command's table, and the memory estimate against live tensor
bytes measured on a small model. Also the tracker those measurements rest on."""

from __future__ import annotations

import contextlib
import gc
import subprocess
import sys
from dataclasses import replace

import pytest
import torch

from scratchlm.cli import main
from scratchlm.config import load_config, resolve_config_file
from scratchlm.errors import UserError
from scratchlm.memtrack import LiveTensorBytes
from scratchlm.model.gpt import GPT, GPTConfig
from scratchlm.plan import Layout, count_params, estimate_memory, flops_per_token, plan
from scratchlm.train.optim import OptimConfig, make_optimizer
from scratchlm.train.settings import ParallelConfig, RunConfig, TrainConfig

CLI = [sys.executable, "-c", "from scratchlm.cli import main; main()"]
PRESETS = ["tiny", "shakespeare-cpu", "shakespeare-gpu", "gpt2-124m", "gpt2-350m", "gpt2-1.5b"]
VARIANTS = {
    "untied": dict(tie_embeddings=False),
    "gqa-qknorm-layernorm": dict(n_kv_head=2, qk_norm=True),
    "swiglu-rope-no-bias": dict(mlp="swiglu", position="rope", bias=False, norm="rmsnorm", tie_embeddings=False),
}


def preset(name: str, *overrides: str) -> RunConfig:
    config = load_config(RunConfig, resolve_config_file(name), list(overrides))
    if not config.model.vocab_size:
        config = replace(config, model=replace(config.model, vocab_size=8192))
    return config


def models() -> list[tuple[str, GPTConfig]]:
    found = [(name, preset(name).model) for name in PRESETS]
    base = preset("tiny").model
    found += [(name, replace(base, **changes)) for name, changes in VARIANTS.items()]
    return found


@pytest.mark.parametrize(("name", "model"), models(), ids=[name for name, _ in models()])
def test_parameters_and_flops_match_the_model(name: str, model: GPTConfig) -> None:
    with torch.device("meta"):
        gpt = GPT(model)
    params = count_params(model)
    assert params.total == gpt.num_params()
    assert params.non_embedding == gpt.num_params(non_embedding=True)
    assert params.block == sum(p.numel() for p in gpt.transformer.h[0].parameters())
    assert params.block_linear == sum(m.weight.numel() + (m.bias.numel() if m.bias is not None else 0) for m in gpt.transformer.h[0].modules() if isinstance(m, torch.nn.Linear))
    assert flops_per_token(model, params) == gpt.flops_per_token()


def test_fsdp_divides_the_state_by_the_shard_count() -> None:
    single = plan(preset("gpt2-350m"), gpus=1).memory
    sharded = plan(preset("gpt2-350m", "parallel.fsdp=8"), gpus=8).memory
    for part in ("weights", "gradients", "optimizer"):
        assert getattr(sharded, part) == pytest.approx(getattr(single, part) / 8)
    offloaded = plan(preset("gpt2-350m", "parallel.fsdp=8", "parallel.cpu_offload=true"), gpus=8).memory
    assert offloaded.weights == offloaded.gradients == offloaded.optimizer == 0
    assert offloaded.host == pytest.approx(sharded.weights + sharded.gradients + sharded.optimizer)


def test_ddp_keeps_a_bucket_copy_of_the_gradients() -> None:
    single = plan(preset("gpt2-124m"), gpus=1).memory
    assert plan(preset("gpt2-124m"), gpus=4).memory.gradients == pytest.approx(2 * single.gradients)


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_zero_stages_shard_optimizer_then_gradients_then_weights(stage: int) -> None:
    settings = ("train.dtype='float32'", "parallel.backend='deepspeed'")
    single = plan(preset("gpt2-124m", *settings), gpus=1).memory
    zero = plan(preset("gpt2-124m", *settings, f"parallel.zero_stage={stage}"), gpus=4).memory
    assert zero.optimizer == pytest.approx(single.optimizer / 4)
    assert zero.gradients == pytest.approx(single.gradients / (4 if stage >= 2 else 1))
    assert zero.weights == pytest.approx(single.weights / (4 if stage == 3 else 1))


def test_tensor_parallel_splits_the_blocks_only() -> None:
    config = preset("gpt2-124m", "parallel.tp=4")
    params = count_params(config.model)
    weights = plan(config, gpus=4).memory.weights
    assert weights == 4 * (params.root + config.model.n_layer * (params.block_split / 4 + params.block_replicated))


def test_devices_needed_when_one_gpu_is_too_small() -> None:
    result = plan(preset("gpt2-1.5b", "train.micro_batch_size=1"), gpus=1, gpu="a100-40gb", mfu=0.5)
    assert result.fits and result.devices_needed == 1
    big = preset("gpt2-1.5b", "model.n_layer=200", "train.activation_checkpointing=true", "train.micro_batch_size=1")
    result = plan(big, gpus=1, gpu="a100-40gb")
    assert not result.fits and result.devices_needed and result.devices_needed > 1
    assert plan(replace(big, parallel=ParallelConfig(fsdp=result.devices_needed)), gpus=result.devices_needed, gpu="a100-40gb").fits


def test_time_and_compute_optimal_length() -> None:
    result = plan(preset("gpt2-124m"), gpus=8, gpu="h100", mfu=0.5)
    assert result.step_time_s == pytest.approx(result.flops_per_step / (8 * 989e12 * 0.5))
    assert result.total_time_s == pytest.approx(10_000 * result.step_time_s)
    assert result.optimal_tokens == 20 * result.params.total
    assert result.optimal_steps == -(-result.optimal_tokens // 2_097_152)
    assert plan(preset("gpt2-124m", "train.dtype='float32'"), gpus=1, gpu="h100").step_time_s == pytest.approx(result.flops_per_step / (494.7e12 * 0.4))


@pytest.mark.parametrize(
    ("overrides", "gpus", "gpu", "mfu", "message"),
    [
        ((), 0, "h100", 0.4, "--gpus is 0"),
        ((), -2, "h100", 0.4, "--gpus is -2"),
        ((), 1, "b200", 0.4, "Unknown GPU 'b200'"),
        ((), 1, "h100", 0.0, "--mfu is 0.0"),
        ((), 1, "h100", 1.5, "--mfu is 1.5"),
        (("parallel.dp=2", "parallel.fsdp=2"), 8, "h100", 0.4, "dp × fsdp × tp = 2 × 2 × 1 = 4"),
        (("parallel.fsdp=3",), 8, "h100", 0.4, "--gpus 8 is not a multiple of parallel.fsdp × parallel.tp = 3"),
        (("parallel.backend='deepspeed'", "parallel.tp=2"), 2, "h100", 0.4, "shards with ZeRO over all 2"),
        (("parallel.tp=2", "parallel.dp=2"), 4, "h100", 0.4, "the data-parallel copies are sharded with FSDP"),
        (("parallel.tp=5",), 5, "h100", 0.4, "parallel.tp = 5 does not divide model.n_head = 12"),
    ],
)
def test_bad_input_is_one_sentence(overrides: tuple[str, ...], gpus: int, gpu: str, mfu: float, message: str) -> None:
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        plan(preset("gpt2-124m", *overrides), gpus=gpus, gpu=gpu, mfu=mfu)


def test_command_prints_the_plan() -> None:
    result = subprocess.run([*CLI, "plan", "gpt2-124m", "--gpus", "8", "--gpu", "h200"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    for words in ("plan: gpt2-124m on 8 × H200", "memory per GPU", "GPUs needed", "step time at MFU 40%", "compute-optimal"):
        assert words in result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["--gpu", "b200"],
        ["--gpus", "0"],
        ["--gpus", "-1"],
        ["--mfu", "1.5"],
        ["--gpus", "8", "--set", "parallel.fsdp=3"],
        ["--set", "parallel.fsdp=0"],
    ],
)
def test_command_bad_input_exits_2_with_one_line(args: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(sys, "argv", ["scratchlm", "plan", "gpt2-124m", *args])
    with pytest.raises(SystemExit) as exit:
        main()
    assert exit.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and err.count("\n") == 1, err


# ---- the estimate against measurement ----------------------------------------------------------


@pytest.mark.parametrize(("dtype", "checkpointing"), [("float32", False), ("bfloat16", True)])
def test_memory_estimate_matches_live_tensor_bytes(dtype: str, checkpointing: bool) -> None:
    """One process on CPU: the step's peak of live tensor bytes within 15% of the estimate."""
    model = GPTConfig(vocab_size=512, block_size=64, n_layer=2, n_head=2, n_embd=64)
    train = TrainConfig(micro_batch_size=4, batch_tokens=2 * 4 * 64, dtype=dtype, activation_checkpointing=checkpointing)
    estimate = estimate_memory(RunConfig(model=model, train=train), Layout(1, 1, 1, "torch", 2), device="cpu")[0].total
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if dtype == "bfloat16" else contextlib.nullcontext()
    torch.manual_seed(0)
    with LiveTensorBytes() as live:
        gpt = GPT(model)
        if checkpointing:
            for block in gpt.transformer.h:
                block.forward = lambda *args, _forward=block.forward: torch.utils.checkpoint.checkpoint(_forward, *args, use_reentrant=False)
        optimizer = make_optimizer(gpt, OptimConfig(), "cpu")
        for _ in range(2):  # the second step has the optimizer's state from the start
            live.reset_peak()
            for _ in range(2):
                gc.collect()
                x, y = torch.randint(0, 512, (2, 4, 64))
                with autocast:
                    loss = gpt(x, y)[1]
                (loss / 2).backward()
                del x, y, loss
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    assert live.peak == pytest.approx(estimate, rel=0.15)


# ---- the tracker -------------------------------------------------------------------------------


def test_tracker_counts_each_storage_once_until_it_is_freed() -> None:
    with LiveTensorBytes() as live:
        a = torch.empty(1000)  # 4,000 bytes
        view = a.view(10, 100)
        assert live.current == 4000
        b = torch.empty(500, dtype=torch.float64)  # 4,000 more
        c = b.add_(1)  # in place: the same storage
        assert c is b and live.current == 8000
        (a + 1).sum()  # a temporary of 4,000 bytes and a 4-byte sum, both freed at once
        assert live.current == 8000 and live.peak == 12004
        del a
        assert live.current == 8000  # the view keeps the storage
        del view
        assert live.current == 4000
        live.reset_peak()
        assert live.peak == 4000
        del b, c
        assert live.current == 0 and live.peak == 4000


def test_tracker_follows_storage_resizes_and_adopts_tensors() -> None:
    before = torch.zeros(256, dtype=torch.uint8)
    original_resize = torch.UntypedStorage.resize_
    with LiveTensorBytes() as live:
        live.adopt({"weights": [before]})
        assert live.current == 256
        storage = torch.empty(100).untyped_storage()  # as FSDP frees and re-gathers parameters
        assert live.current == 656
        storage.resize_(0)
        assert live.current == 256
        storage.resize_(800)
        assert live.current == 1056 and live.peak == 1056
        del storage
        assert live.current == 256
    assert torch.UntypedStorage.resize_ is original_resize  # the patch ends with the tracker
