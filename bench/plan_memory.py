"""`scratchlm plan`'s memory estimate against measurement, on CPU.

A small GPT (GPT-2 architecture: 4 layers, 256 wide, 4 heads, context 256, vocabulary 8192;
`--model modern` for rotary positions, RMSNorm, SwiGLU, QK-norm and grouped-query attention)
trains a few steps of two micro-batches each (forward, backward, then the fused AdamW step the
trainer uses) in each mode:

    single fp32, single bf16 (autocast), each with and without activation checkpointing
    (torch.utils.checkpoint, non-reentrant, per block, as train/distributed.py applies it);
    over 2 gloo processes (torch.multiprocessing spawn): DDP, FSDP2 (fully_shard on each block
    of model.transformer.h, resharded after its forward, then on the root, kept gathered, as
    train/distributed.py does), FSDP2 without resharding the blocks, FSDP2 with bf16 mixed
    precision, and tensor parallelism (ColwiseParallel on q, k, v, the MLP's up and gate,
    RowwiseParallel on both output projections; embeddings and head replicated).

Each process counts the bytes of its live tensor storages with `scratchlm.memtrack.
LiveTensorBytes` (CPUs have no allocator statistics like torch.cuda.max_memory_allocated) from
before the model is built. Figures are taken in the last step, in its second micro-batch (the
gradients of the first already exist, as in any run with gradient accumulation), for rank 0:

    weights, gradients, optimizer   the step-long state, summed over the tensors (gradients
                                    include DDP's buckets, measured as what wrapping adds)
    end of forward                  live bytes once the loss is computed, above the state
    forward peak, backward peak     the highest live bytes in each pass, above the state
    peak                            the step's highest live bytes (the optimizer step included)

and set beside `scratchlm.plan.estimate_memory` for the same run config and layout, with its
CPU rules (CPU autocast runs LayerNorm in its input's dtype where CUDA's runs it in fp32; that
matters only for 16-bit residual streams, FSDP mixed precision here). Python's
cycle collector runs before each micro-batch, so garbage it has not yet collected (FSDP leaves
some) does not move the figures from run to run. TP uses the per-tensor AdamW, not the fused one:
neither the fused kernel nor clip_grad_norm_ accepts a mix of DTensor and plain tensors;
gradient clipping is left out in every mode (one scalar per tensor).

    python bench/plan_memory.py [--modes single-fp32 ... ] [--model gpt2|modern] [--vocab N]
                                [--steps 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import sys
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from scratchlm.memtrack import LiveTensorBytes
from scratchlm.model.gpt import GPT, GPTConfig
from scratchlm.plan import Layout, estimate_memory
from scratchlm.runtime import cpu_model
from scratchlm.train.optim import OptimConfig, make_optimizer
from scratchlm.train.settings import ParallelConfig, RunConfig, TrainConfig

MODELS = {
    "gpt2": dict(vocab_size=8192, block_size=256, n_layer=4, n_head=4, n_embd=256),
    "modern": dict(vocab_size=8192, block_size=256, n_layer=4, n_head=4, n_kv_head=2, n_embd=256, position="rope", norm="rmsnorm", mlp="swiglu", qk_norm=True, bias=False),
}
MICRO_BATCH = 8
MICRO_STEPS = 2
SEED = 1337


@dataclass(frozen=True)
class Mode:
    """One way of running the step."""

    dtype: str
    """float32, or bfloat16 (autocast)."""
    checkpointing: bool = False
    parallel: str = ""
    """"" (one process), or over 2 processes: ddp, fsdp, fsdp-keep (blocks not resharded after
    their forward), fsdp-mixed (FSDP2 gathering bf16) or tp."""

    @property
    def world(self) -> int:
        return 2 if self.parallel else 1

    def parallel_config(self) -> ParallelConfig:
        sizes = {
            "": {},
            "ddp": {"dp": 2},
            "fsdp": {"fsdp": 2, "mixed_precision": False},
            "fsdp-keep": {"fsdp": 2, "mixed_precision": False, "reshard_after_forward": False},
            "fsdp-mixed": {"fsdp": 2},
            "tp": {"tp": 2},
        }
        return ParallelConfig(**sizes[self.parallel])


MODES = {
    "single-fp32": Mode("float32"),
    "single-bf16": Mode("bfloat16"),
    "single-fp32-ckpt": Mode("float32", checkpointing=True),
    "single-bf16-ckpt": Mode("bfloat16", checkpointing=True),
    "ddp-fp32": Mode("float32", parallel="ddp"),
    "fsdp-fp32": Mode("float32", parallel="fsdp"),
    "fsdp-fp32-no-reshard": Mode("float32", parallel="fsdp-keep"),
    "fsdp-bf16-mixed": Mode("bfloat16", parallel="fsdp-mixed"),
    "tp-fp32": Mode("float32", parallel="tp"),
}

ROWS = ("weights", "gradients", "optimizer", "end of forward", "forward peak", "backward peak", "peak")


def run_config(model: dict[str, Any], mode: Mode) -> RunConfig:
    """The run config `scratchlm plan` would be given for this measurement."""
    replicas = 1 if mode.parallel == "tp" else mode.world
    train = TrainConfig(
        micro_batch_size=MICRO_BATCH,
        batch_tokens=MICRO_STEPS * MICRO_BATCH * model["block_size"] * replicas,
        dtype=mode.dtype,
        activation_checkpointing=mode.checkpointing,
    )
    return RunConfig(model=GPTConfig(**model), train=train, parallel=mode.parallel_config())


def estimate(model: dict[str, Any], mode: Mode) -> dict[str, float]:
    config = run_config(model, mode)
    dp, fsdp, tp = config.parallel.layout(mode.world)
    memory, phases = estimate_memory(config, Layout(dp, fsdp, tp, "torch", 2), device="cpu")
    return {
        "weights": memory.weights,
        "gradients": memory.gradients,
        "optimizer": memory.optimizer,
        "end of forward": phases.end_of_forward,
        "forward peak": phases.forward_peak,
        "backward peak": phases.backward_peak,
        "peak": memory.total,
    }


# ---- one process's measurement -----------------------------------------------------------------


def storage_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of the distinct storages under `tensors` (DTensors by their local shards)."""
    seen: dict[int, int] = {}
    for tensor in tensors:
        local = tensor.to_local() if hasattr(tensor, "to_local") else tensor
        storage = local.untyped_storage()
        seen[id(storage)] = storage.nbytes()
    return sum(seen.values())


def checkpoint_blocks(model: GPT) -> None:
    """Recompute each block in the backward pass, as `parallelize` does for the trainer."""
    for block in model.transformer.h:
        block.forward = lambda *args, _forward=block.forward: checkpoint(_forward, *args, use_reentrant=False)


def wrap(model: GPT, mode: Mode) -> nn.Module:
    """The model as the mode's parallelism runs it."""
    if mode.parallel == "ddp":
        return nn.parallel.DistributedDataParallel(model)
    if mode.parallel.startswith("fsdp"):
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if mode.parallel == "fsdp-mixed" else MixedPrecisionPolicy()
        for block in model.transformer.h:
            fully_shard(block, reshard_after_forward=mode.parallel != "fsdp-keep", mp_policy=policy)
        # The root stays gathered from the forward to the backward pass, as train/distributed.py sets it.
        return fully_shard(model, reshard_after_forward=False, mp_policy=policy)
    if mode.parallel == "tp":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

        mesh = init_device_mesh("cpu", (2,))
        plan = {"attn.c_q": ColwiseParallel(), "attn.c_k": ColwiseParallel(), "attn.c_v": ColwiseParallel(), "attn.c_proj": RowwiseParallel(), "mlp.c_fc": ColwiseParallel(), "mlp.c_proj": RowwiseParallel()}
        if model.config.mlp == "swiglu":
            plan["mlp.c_gate"] = ColwiseParallel()
        for block in model.transformer.h:
            parallelize_module(block, mesh, plan)
    return model


def measure(model_settings: dict[str, Any], mode: Mode, steps: int) -> dict[str, float]:
    """Train `steps` steps under the tracker; the figures of the last one (see the module doc)."""
    config = GPTConfig(**model_settings)
    torch.manual_seed(SEED)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if mode.dtype == "bfloat16" else contextlib.nullcontext()
    with LiveTensorBytes() as live:
        model = GPT(config)
        if mode.checkpointing:
            checkpoint_blocks(model)
        unwrapped = live.current
        module = wrap(model, mode)
        buckets = live.current - unwrapped if mode.parallel == "ddp" else 0
        optimizer = torch.optim.AdamW(module.parameters(), foreach=False) if mode.parallel == "tp" else make_optimizer(module, OptimConfig(), "cpu")
        figures: dict[str, float] = {}
        for _ in range(steps):
            step_peak = 0
            for micro in range(MICRO_STEPS):
                gc.collect()
                before = live.current
                sync = module.no_sync() if mode.parallel == "ddp" and micro < MICRO_STEPS - 1 else contextlib.nullcontext()
                # A fresh batch per micro-batch, as a loader gives it.
                x = torch.randint(0, config.vocab_size, (MICRO_BATCH, config.block_size))
                y = torch.randint(0, config.vocab_size, (MICRO_BATCH, config.block_size))
                with sync:
                    live.reset_peak()
                    with autocast:
                        loss = module(x, y)[1]
                        end_of_forward = live.current
                    forward_peak = live.peak
                    live.reset_peak()
                    (loss / MICRO_STEPS).backward()
                    backward_peak = live.peak
                step_peak = max(step_peak, forward_peak, backward_peak)
                del x, y, loss
            gradients = storage_bytes(p.grad for p in module.parameters() if p.grad is not None) + buckets
            live.reset_peak()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            figures = {
                "weights": storage_bytes(module.parameters()),
                "gradients": gradients,
                "optimizer": storage_bytes(t for state in optimizer.state.values() for t in state.values() if isinstance(t, torch.Tensor) and t.numel() > 1),
                "end of forward": end_of_forward - before,
                "forward peak": forward_peak - before,
                "backward peak": backward_peak - before,
                "peak": max(step_peak, live.peak),
            }
    return figures


def _rank_main(rank: int, model_settings: dict[str, Any], mode: Mode, steps: int, directory: str) -> None:
    # A file store: no TCP store server in rank 0 to tear down while rank 1 still talks to it.
    dist.init_process_group("gloo", init_method=f"file://{directory}/store", rank=rank, world_size=2)
    torch.set_num_threads(1)  # two processes on the machine's cores
    figures = measure(model_settings, mode, steps)
    Path(directory, f"rank{rank}.json").write_text(json.dumps(figures))
    dist.barrier()
    # Leave without gloo's teardown, which now and then aborts a rank after the work is done.
    os._exit(0)


def measured(model_settings: dict[str, Any], mode: Mode, steps: int) -> dict[str, float]:
    """Rank 0's figures (one process, or two spawned gloo processes)."""
    if not mode.parallel:
        return measure(model_settings, mode, steps)
    with tempfile.TemporaryDirectory() as directory:
        mp.start_processes(_rank_main, args=(model_settings, mode, steps, directory), nprocs=2, start_method="spawn", join=True)
        return json.loads(Path(directory, "rank0.json").read_text())


# ---- report ------------------------------------------------------------------------------------


def error(estimated: float, actual: float) -> float:
    return (estimated - actual) / actual if actual else 0.0


def report(results: dict[str, dict[str, dict[str, float]]], out: Callable[[str], None] = print) -> None:
    mib = 2**20
    for name, figures in results.items():
        out(f"\n{name}")
        out(f"  {'':<16}{'estimate MiB':>14}{'measured MiB':>14}{'error':>9}")
        for row in ROWS:
            est, act = figures["estimate"][row], figures["measured"][row]
            out(f"  {row:<16}{est / mib:>14.2f}{act / mib:>14.2f}{error(est, act):>+9.1%}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--modes", nargs="+", choices=sorted(MODES), default=list(MODES))
    parser.add_argument("--model", choices=sorted(MODELS), default="gpt2")
    parser.add_argument("--vocab", type=int, help="Override the vocabulary (8192).")
    parser.add_argument("--steps", type=int, default=3, help="Training steps per mode; the last is measured (at least 2: the first creates the optimizer's state).")
    parser.add_argument("--json", type=Path, help="Also write the figures here.")
    args = parser.parse_args(argv)
    settings = dict(MODELS[args.model])
    if args.vocab:
        settings["vocab_size"] = args.vocab
    print(f"CPU: {cpu_model()}; torch {torch.__version__}; model {args.model} {settings}; micro-batch {MICRO_BATCH} × {settings['block_size']} tokens, {MICRO_STEPS} per step")
    results = {}
    for name in args.modes:
        mode = MODES[name]
        results[name] = {"estimate": estimate(settings, mode), "measured": measured(settings, mode, args.steps)}
        report({name: results[name]})
    worst = max(abs(error(r["estimate"]["peak"], r["measured"]["peak"])) for r in results.values())
    print(f"\nlargest error of the peak: {worst:.1%}")
    if args.json:
        args.json.write_text(json.dumps({"cpu": cpu_model(), "model": settings, "results": results}, indent=2))


if __name__ == "__main__":
    sys.exit(main())
