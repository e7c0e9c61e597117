"""Everything between "a GPT" and "a GPT training on N processes", applied from outside the model.

    setup_distributed(parallel, device)  →  Distributed: this process's rank, device, layout, mesh
    parallelize(model, train, dist)      →  tensor parallel → activation checkpointing → compile
                                            → FSDP2 (fully_shard per block, then the root) or DDP

The layout is a `DeviceMesh` of shape (dp, fsdp, tp), innermost tp, so tensor-parallel ranks are
neighbours (the same machine, under torchrun's rank order) and data parallelism spans machines:

- **DDP** (dp > 1 alone): a full replica per rank; gradients are all-reduced on the last
  micro-batch of a step only (`Trainer.train_step` uses `no_sync` on the others).
- **FSDP2** (fsdp > 1): each block and then the root are `fully_shard`-ed: parameters, gradients
  and optimizer states are sharded (ZeRO-3); a block's parameters are all-gathered for its forward
  and backward. With dp > 1 as well, the mesh is (replicate, shard): HSDP.
- **Tensor parallel** (tp > 1), Megatron-style: q/k/v and the MLP's up/gate linears column-wise
  (each rank owns whole heads and a slice of the MLP channels), both output projections row-wise
  (one all-reduce each, forward and backward). Attention runs unchanged on a rank's local heads
  because it reads the head count from the projection widths. The embedding and the LM head stay
  replicated: the head and the cross-entropy run in chunks (`model/loss.py`) and never hold the
  full logits, so vocabulary parallelism would save little memory here at the cost of a
  distributed softmax.
- **2-D**: tp inside a machine × fsdp across machines; FSDP shards the tensor-parallel DTensors
  along the data dimensions.

Activation checkpointing and `torch.compile` wrap a block's `forward` in place, so parameter
names, the state dict and checkpoints are those of the plain model. Both act only in training
mode without a KV cache: evaluation needs no recomputation, and generation with a cache would
recompile at every new cache length.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from scratchlm.console import set_quiet
from scratchlm.errors import UserError
from scratchlm.model.gpt import GPT, GPTConfig
from scratchlm.runtime import resolve_device
from scratchlm.train.settings import ParallelConfig, TrainConfig


@dataclass
class Distributed:
    """Where this process sits in the job: its rank, device and the (dp, fsdp, tp) layout.

    The data-parallel coordinates (`data_rank` of `data_size`) combine dp and fsdp: ranks that
    differ only in their tp coordinate see the same data.
    """

    device: torch.device
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    dp: int = 1
    fsdp: int = 1
    tp: int = 1
    mesh: Any = None
    """The DeviceMesh with dimensions ("dp", "fsdp", "tp"); None in a single process."""
    data_group: Any = None
    """The process group of the ranks that share this rank's tp coordinate (None when alone)."""

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def data_size(self) -> int:
        return self.dp * self.fsdp

    @property
    def data_rank(self) -> int:
        return self.rank // self.tp

    @property
    def layout(self) -> dict[str, Any]:
        backend = self.parallel.backend if self.enabled else "torch"  # one process never starts DeepSpeed
        return {"world_size": self.world_size, "dp": self.dp, "fsdp": self.fsdp, "tp": self.tp, "backend": backend}

    def describe(self) -> str:
        if not self.enabled:
            return "1 process"
        parts = [f"{name} {size}" for name, size in (("dp", self.dp), ("fsdp", self.fsdp), ("tp", self.tp)) if size > 1]
        if self.parallel.backend == "deepspeed":
            parts = [f"DeepSpeed ZeRO-{self.parallel.zero_stage} over {self.world_size}"]
        return f"{self.world_size} processes ({' × '.join(parts)})"

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """The mean of `value` over all ranks (a copy; `value` itself is left alone)."""
        if not self.enabled:
            return value
        total = value.detach().clone()
        dist.all_reduce(total)
        return total / self.world_size

    def agree(self, value: float) -> float:
        """Rank 0's `value`, on every rank: decisions that every rank must take the same way
        (the time budget's stop and horizon, a measured dtype) are made once, on rank 0."""
        if not self.enabled:
            return value
        tensor = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.broadcast(tensor, src=0)
        return float(tensor.item())

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


def launched_world_size() -> int:
    """Processes in this job, as the launcher (torchrun, deepspeed, Slurm via torchrun) says."""
    value = os.environ.get("WORLD_SIZE", "1")
    try:
        return max(1, int(value))
    except ValueError:
        raise UserError(f"WORLD_SIZE is {value!r}, not a number; launch with torchrun (or `scratchlm train --nproc N`).") from None


def setup_distributed(parallel: ParallelConfig, device_setting: str = "auto") -> Distributed:
    """Join the job the launcher started (a single process when there is none): pick this rank's
    device, start the process group (NCCL on GPUs, gloo on CPUs) and build the device mesh.
    Ranks other than 0 print nothing but errors."""
    world_size = launched_world_size()
    dp, fsdp, tp = parallel.layout(world_size)
    device = resolve_device(device_setting)
    if world_size == 1:
        return Distributed(device=device, parallel=parallel)
    check_offload(parallel, device)
    missing = [name for name in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT") if name not in os.environ]
    if missing:
        raise UserError(f"WORLD_SIZE is {world_size} but {', '.join(missing)} is not set; launch with torchrun (or `scratchlm train --nproc N`), which sets them.")
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise UserError(f"Local rank {local_rank} has no GPU: this machine shows {torch.cuda.device_count()}; launch at most that many processes per machine (--nproc-per-node).")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=timedelta(seconds=parallel.timeout_s), device_id=device if device.type == "cuda" else None)
    if rank != 0:
        set_quiet(True)
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh(device.type, (dp, fsdp, tp), mesh_dim_names=("dp", "fsdp", "tp"))
    data_group = mesh["dp", "fsdp"]._flatten("data").get_group() if dp * fsdp > 1 else None
    return Distributed(device=device, parallel=parallel, rank=rank, world_size=world_size, local_rank=local_rank, dp=dp, fsdp=fsdp, tp=tp, mesh=mesh, data_group=data_group)


def check_offload(parallel: ParallelConfig, device: torch.device) -> None:
    if parallel.cpu_offload and device.type != "cuda":
        raise UserError("parallel.cpu_offload moves sharded state from the GPU to host memory; on a CPU it is already there: set parallel.cpu_offload = false.")


def shutdown_distributed() -> None:
    """Leave the process group after every rank has finished (a rank that leaves early would
    make the others' last collective fail)."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


# ---- tensor parallelism ------------------------------------------------------------------------


def check_tensor_parallel(config: GPTConfig, tp: int) -> None:
    """Each rank must own whole query and key/value heads and an equal slice of the MLP."""
    for what, size in (("model.n_head", config.n_head), ("model.n_kv_head", config.n_kv_head), ("the MLP width", config.mlp_hidden)):
        if size % tp:
            raise UserError(f"parallel.tp = {tp} does not divide {what} = {size}; each tensor-parallel rank needs an equal share of whole heads and MLP channels: choose a tp that divides n_head ({config.n_head}), n_kv_head ({config.n_kv_head}) and the MLP width ({config.mlp_hidden}).")


def apply_tensor_parallel(model: GPT, mesh: Any) -> None:
    from torch.distributed.tensor.parallel import (
        ColwiseParallel,
        RowwiseParallel,
        parallelize_module,
    )

    check_tensor_parallel(model.config, mesh.size())
    plan: dict[str, Any] = {
        "attn.c_q": ColwiseParallel(),
        "attn.c_k": ColwiseParallel(),
        "attn.c_v": ColwiseParallel(),
        "attn.c_proj": RowwiseParallel(),
        "mlp.c_fc": ColwiseParallel(),
        "mlp.c_proj": RowwiseParallel(),
    }
    if model.config.mlp == "swiglu":
        plan["mlp.c_gate"] = ColwiseParallel()
    for block in model.transformer.h:
        parallelize_module(block, mesh, plan)
        if block.attn.q_norm is not None:
            _replicate_over_local_heads(block.attn.q_norm, mesh)
            _replicate_over_local_heads(block.attn.k_norm, mesh)


def _replicate_over_local_heads(norm: nn.Module, mesh: Any) -> None:
    """QK-norm's weight is shared by all heads, but each rank sees only its own heads, so each
    rank's gradient is a partial sum. As a replicated DTensor applied to a head-sharded input,
    the weight gets the summed gradient from DTensor's autograd (one all-reduce)."""
    from torch.distributed.tensor import (
        DTensor,
        Replicate,
        Shard,
        distribute_module,
        distribute_tensor,
    )

    def replicate(name: str, module: nn.Module, device_mesh: Any) -> None:
        for key, parameter in list(module.named_parameters(recurse=False)):
            module.register_parameter(key, nn.Parameter(distribute_tensor(parameter.data, device_mesh, [Replicate()])))

    def heads_sharded(module: nn.Module, inputs: tuple[torch.Tensor, ...], device_mesh: Any) -> tuple[DTensor, ...]:
        return tuple(DTensor.from_local(x, device_mesh, [Shard(1)], run_check=False) for x in inputs)  # (B, H/tp, T, hd) each

    def local(module: nn.Module, output: DTensor, device_mesh: Any) -> torch.Tensor:
        return output.to_local()

    distribute_module(norm, mesh, replicate, heads_sharded, local)


# ---- float8 -------------------------------------------------------------------------------------


def apply_float8(model: GPT, tp: int) -> None:
    """Swap the blocks' linear layers for torchao's Float8Linear (same parameters and names, so
    checkpoints do not change); the embedding and the head stay in bf16."""
    device = next(model.parameters()).device
    if device.type != "cuda" or torch.cuda.get_device_capability(device) < (8, 9):
        where = torch.cuda.get_device_name(device) if device.type == "cuda" else "a CPU"
        raise UserError(f"train.fp8 needs a GPU with FP8 tensor cores (compute capability 8.9 or newer: H100, H200, L40S, RTX 4090) and this run is on {where}; set train.fp8 = false.")
    if tp > 1:
        raise UserError("train.fp8 is not combined with tensor parallelism here; use FSDP (parallel.fsdp) or set train.fp8 = false.")
    try:
        from torchao.float8 import convert_to_float8_training
    except ImportError:
        raise UserError("train.fp8 needs torchao: pip install torchao.") from None

    def eligible(module: nn.Module, name: str) -> bool:
        # FP8 GEMMs need both dimensions divisible by 16.
        return name.startswith("transformer.h.") and isinstance(module, nn.Linear) and module.in_features % 16 == 0 and module.out_features % 16 == 0

    convert_to_float8_training(model, module_filter_fn=eligible)


# ---- FSDP2 and DDP -----------------------------------------------------------------------------


def apply_fsdp(model: GPT, dist_info: Distributed, dtype: torch.dtype) -> None:
    from torch.distributed.fsdp import (
        CPUOffloadPolicy,
        MixedPrecisionPolicy,
        OffloadPolicy,
        fully_shard,
    )

    parallel = dist_info.parallel
    mesh = dist_info.mesh["dp", "fsdp"] if dist_info.dp > 1 else dist_info.mesh["fsdp"]
    low_precision = parallel.mixed_precision and dtype in (torch.bfloat16, torch.float16)
    # Gradients are reduced in fp32 whatever the parameters are gathered in: a sum of many bf16
    # gradients loses the small ones.
    mixed = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32) if low_precision else MixedPrecisionPolicy()
    offload = CPUOffloadPolicy() if parallel.cpu_offload else OffloadPolicy()
    for block in model.transformer.h:
        fully_shard(block, mesh=mesh, reshard_after_forward=parallel.reshard_after_forward, mp_policy=mixed, offload_policy=offload)
    # The root's parameters (embeddings, final norm, the tied head) are used again first in the
    # backward pass, so freeing them after the forward would only gather them once more.
    fully_shard(model, mesh=mesh, reshard_after_forward=False, mp_policy=mixed, offload_policy=offload)


def _training_only(block: nn.Module, wrapped: Callable[..., Any], plain: Callable[..., Any]) -> Callable[..., Any]:
    def forward(x: torch.Tensor, rope: Any, cache: Any, layer: int) -> torch.Tensor:
        if block.training and cache is None:
            return wrapped(x, rope, cache, layer)
        return plain(x, rope, cache, layer)

    return forward


def _checkpoint_and_compile(model: GPT, config: TrainConfig) -> None:
    for block in model.transformer.h:
        plain = block.forward
        wrapped = plain
        if config.activation_checkpointing:
            # Non-reentrant checkpointing: recomputes the block in the backward pass, keeps RNG
            # state for dropout, and works under torch.compile.
            inner = wrapped

            def wrapped(*args: Any, _inner: Callable[..., Any] = inner) -> torch.Tensor:
                return checkpoint(_inner, *args, use_reentrant=False)

        if config.compile:
            wrapped = torch.compile(wrapped)
        if wrapped is not plain:
            block.forward = _training_only(block, wrapped, plain)


def parallelize(model: GPT, config: TrainConfig, dist_info: Distributed | None = None, dtype: torch.dtype = torch.float32) -> nn.Module:
    """Apply tensor parallelism, activation checkpointing, compilation and FSDP2 or DDP as the
    settings ask, in that order (each wraps what the one before made); returns the module the
    training step calls: `model` itself (changed in place) or, under DDP, its wrapper.

    `model` must already be on `dist_info.device` with its initial weights: every rank builds
    it from the same seed, and FSDP and tensor parallelism keep each rank's share of it.
    """
    if config.compile and next(model.parameters()).device.type == "cpu" and not any(shutil.which(c) for c in (os.environ.get("CXX", ""), "g++", "c++", "clang++") if c):
        raise UserError("train.compile on a CPU needs a C++ compiler (torch.compile generates C++ there); install g++ or set train.compile = false.")
    layout = dist_info if dist_info is not None and dist_info.enabled and dist_info.parallel.backend == "torch" else None
    if config.fp8:
        apply_float8(model, layout.tp if layout is not None else 1)
    if layout is not None and layout.tp > 1:
        apply_tensor_parallel(model, layout.mesh["tp"])
    _checkpoint_and_compile(model, config)
    if layout is None:
        return model
    if layout.fsdp > 1:
        apply_fsdp(model, layout, dtype)
        return model
    if layout.dp > 1:
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [layout.device.index] if layout.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids)
    return model


# ---- gradient clipping over sharded and replicated gradients -----------------------------------


def clip_grad_norm(parameters: Iterable[nn.Parameter], max_norm: float) -> float:
    """Clip the global gradient norm to `max_norm` and return it (before clipping), for any mix of
    plain gradients (replicated: counted once) and DTensor gradients (FSDP and tensor-parallel
    shards: squares summed over the mesh dimensions they are split along)."""
    from torch.distributed.tensor import DTensor

    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return 0.0
    groups: dict[Any, list[torch.Tensor]] = {}
    for grad in grads:
        if isinstance(grad, DTensor):
            # Anything not replicated is split (Shard, FSDP's _StridedShard over TP, Partial).
            split_dims = tuple(i for i, placement in enumerate(grad.placements) if not placement.is_replicate())
            groups.setdefault((grad.device_mesh, split_dims), []).append(grad.to_local())
        else:
            groups.setdefault(None, []).append(grad)
    device = grads[0].device if not isinstance(grads[0], DTensor) else grads[0].to_local().device
    total = torch.zeros((), dtype=torch.float32, device=device)
    for key, local in groups.items():
        squares = torch.stack([norm.float() for norm in torch._foreach_norm(local)]).square().sum()
        if key is not None:
            mesh, split_dims = key
            for dim in split_dims:
                dist.all_reduce(squares, group=mesh.get_group(dim))
        total += squares
    norm = total.sqrt()
    scale = torch.clamp(max_norm / (norm + 1e-6), max=1.0)
    for local in groups.values():
        torch._foreach_mul_(local, scale.to(local[0].device))
    return float(norm)
