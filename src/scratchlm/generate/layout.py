"""Loading a model for inference: its precision, and its weights' layout for decoding.

The layout is chosen by measuring. A decode step multiplies each weight matrix
by one vector per sequence, and how fast a CPU BLAS does that depends on the matrix's layout and
shape: on an AMD EPYC with MKL, GPT-2's fp32 output head (50257 × 768) times one vector runs ~2×
faster column-major while some of its MLP matrices run ~20% slower. So each distinct shape is
timed both ways, at one sequence and at a batch of eight, and the faster layout kept.

Only strides change: shapes and values stay, so the model, its state_dict and checkpoints are
untouched. Meant for a model that only generates from now on (the CLI's generate, chat, serve).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from scratchlm.model.gpt import GPT
from scratchlm.tokenizer.tokenizer import Tokenizer

MARGIN = 1.1
"""Column-major must win by this much: a near tie is noise, and row-major is what every other path expects."""
ROUND_SECONDS = 0.005
"""Each timing round repeats the product for about this long."""
ROUNDS = 7


def _seconds(weight: torch.Tensor, x: torch.Tensor, repeats: int) -> float:
    started = time.perf_counter()
    for _ in range(repeats):
        F.linear(x, weight)
    return (time.perf_counter() - started) / repeats


def column_major_is_faster(weight: torch.Tensor) -> bool:
    """Whether `weight` (out, in) runs decode steps faster column-major on this CPU: clearly
    faster times one vector, and not clearly slower times a batch of eight.

    The layouts take turns, round by round, and each keeps its best round, so that a burst of
    other load does not decide."""
    row = weight.detach().contiguous()
    column = row.t().contiguous().t()
    verdict = []
    with torch.inference_mode():
        for batch in (1, 8):
            x = torch.randn(batch, row.size(1), dtype=row.dtype)
            repeats = max(1, int(ROUND_SECONDS / max(_seconds(row, x, 1), _seconds(column, x, 1), 1e-7)))
            best = {"row": float("inf"), "column": float("inf")}
            for _ in range(ROUNDS):
                best["row"] = min(best["row"], _seconds(row, x, repeats))
                best["column"] = min(best["column"], _seconds(column, x, repeats))
            verdict.append(best["row"] / best["column"])
    return verdict[0] > MARGIN and verdict[1] > 1 / MARGIN


def lay_out_for_decoding(model: GPT) -> list[tuple[int, ...]]:
    """Make each linear weight column-major where that measures faster on this CPU (nothing on a
    GPU); the shapes that changed. Weights of one shape share the verdict of one timing."""
    parameter = next(model.parameters())
    if parameter.device.type != "cpu":
        return []
    weights = {id(m.weight): m.weight for m in model.modules() if isinstance(m, nn.Linear)}  # a tied head once
    verdicts: dict[tuple[int, ...], bool] = {}
    with torch.no_grad():
        for weight in weights.values():
            shape = tuple(weight.shape)
            if shape not in verdicts:
                verdicts[shape] = column_major_is_faster(weight)
            if verdicts[shape]:
                weight.data = weight.data.t().contiguous().t()
    return [shape for shape, faster in verdicts.items() if faster]


INFERENCE_DTYPE_HELP = "The weights' precision: auto (bfloat16 on GPUs that have it and on CPUs whose bf16 matmuls measure faster, e.g. with AVX-512 BF16 or AMX, where decoding runs ~2× faster; float32 elsewhere), float32, bfloat16, or float16 (GPU)."


def load_for_inference(checkpoint: str | Path, device: str = "auto", dtype: str = "auto") -> tuple[GPT, Tokenizer, dict[str, Any]]:
    """A checkpoint's model at `--device` and `--dtype` with its weights laid out for decoding,
    its tokenizer and its meta: what generate, chat and serve run."""
    from scratchlm.checkpoints import load_model
    from scratchlm.runtime import resolve_device, resolve_dtype

    resolved = resolve_device(device, "--device")
    model, tokenizer, meta = load_model(checkpoint, resolved, resolve_dtype(dtype, resolved, "--dtype"))
    lay_out_for_decoding(model)
    return model, tokenizer, meta
