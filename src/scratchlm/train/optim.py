"""AdamW with weight decay on matrices only, and the learning-rate schedule."""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass

import torch
import torch.nn as nn

from scratchlm.errors import UserError


@dataclass
class OptimConfig:
    """Optimizer and learning-rate schedule."""

    lr: float = 6e-4
    """Peak learning rate, reached at the end of warmup."""
    min_lr_ratio: float = 0.1
    """The cosine decay ends at this fraction of the peak learning rate."""
    warmup_steps: int = 100
    """Steps of linear warmup from 0 to the peak learning rate."""
    beta1: float = 0.9
    """AdamW β1."""
    beta2: float = 0.95
    """AdamW β2 (0.95 rather than 0.999 is steadier for language models)."""
    eps: float = 1e-8
    """AdamW ε."""
    weight_decay: float = 0.1
    """Decoupled weight decay, applied to matrices (≥ 2-D parameters) only, not to biases and norms."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this (0 = no clipping)."""

    def __post_init__(self) -> None:
        checks = {
            "lr": self.lr > 0,
            "min_lr_ratio": 0 <= self.min_lr_ratio <= 1,
            "warmup_steps": self.warmup_steps >= 0,
            "beta1": 0 <= self.beta1 < 1,
            "beta2": 0 <= self.beta2 < 1,
            "eps": self.eps > 0,
            "weight_decay": self.weight_decay >= 0,
            "grad_clip": self.grad_clip >= 0,
        }
        wanted = {"lr": "positive", "min_lr_ratio": "within [0, 1]", "warmup_steps": "0 or more", "beta1": "within [0, 1)", "beta2": "within [0, 1)", "eps": "positive", "weight_decay": "0 or more", "grad_clip": "0 or more"}
        for name, ok in checks.items():
            # `not ok` also catches NaN, for which every comparison is false.
            if not ok or not math.isfinite(getattr(self, name)):
                raise UserError(f"optim.{name} is {getattr(self, name)}; it must be {wanted[name]}.")


def make_optimizer(model: nn.Module, config: OptimConfig, device_type: str) -> torch.optim.AdamW:
    """AdamW over two groups: ≥ 2-D tensors (decayed) and the rest (not).

    The fused kernel updates all parameters in one pass: on CPU it is ~6-8× faster than the
    per-tensor loop (4.7 vs 37 ms per step for a 50k-vocabulary GPT here), on CUDA it saves
    hundreds of kernel launches.
    """
    parameters = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in parameters if p.dim() >= 2]
    no_decay = [p for p in parameters if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    options: dict = {}
    from torch.distributed.tensor import DTensor

    sharded = {isinstance(p, DTensor) for p in parameters}
    if len(sharded) > 1:
        # Tensor parallelism shards the blocks' matrices (DTensors) and replicates the rest
        # (plain tensors); the fused and foreach kernels cannot take both in one call.
        options["foreach"] = False
    elif device_type in ("cuda", "cpu") and "fused" in inspect.signature(torch.optim.AdamW).parameters:
        options["fused"] = True
    return torch.optim.AdamW(groups, lr=config.lr, betas=(config.beta1, config.beta2), eps=config.eps, **options)


def lr_at(step: int, total_steps: int, config: OptimConfig) -> float:
    """Linear warmup over `warmup_steps`, then cosine decay to `min_lr_ratio · lr` at `total_steps`."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    floor = config.lr * config.min_lr_ratio
    span = max(1, total_steps - config.warmup_steps)
    progress = min(1.0, (step - config.warmup_steps) / span)
    return floor + 0.5 * (config.lr - floor) * (1 + math.cos(math.pi * progress))
