"""`parallelize`: what is applied to a model after it is built and before its optimizer, from
outside the model file: activation checkpointing and `torch.compile` per transformer block now;
data, fully sharded and tensor parallelism come here too.

Both wrap a block's `forward` in place, so parameter names, the state dict and checkpoints are
those of the plain model. Both act only in training mode without a KV cache: evaluation needs no
recomputation, and generation with a cache would recompile at every new cache length.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from scratchlm.errors import UserError
from scratchlm.model.gpt import GPT
from scratchlm.train.settings import TrainConfig


def _training_only(block: nn.Module, wrapped: Callable[..., Any], plain: Callable[..., Any]) -> Callable[..., Any]:
    def forward(x: torch.Tensor, rope: Any, cache: Any, layer: int) -> torch.Tensor:
        if block.training and cache is None:
            return wrapped(x, rope, cache, layer)
        return plain(x, rope, cache, layer)

    return forward


def parallelize(model: GPT, config: TrainConfig) -> nn.Module:
    """Apply activation checkpointing and per-block compilation as `config` asks; returns the
    module the training step calls (today the model itself)."""
    if config.compile and next(model.parameters()).device.type == "cpu" and not any(shutil.which(c) for c in (os.environ.get("CXX", ""), "g++", "c++", "clang++") if c):
        raise UserError("train.compile on a CPU needs a C++ compiler (torch.compile generates C++ there); install g++ or set train.compile = false.")
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
    return model
