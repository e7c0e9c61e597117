"""Where and in what precision a model runs: device and dtype choices shared by training and
inference (inference never imports the training package)."""

from __future__ import annotations

import functools
import time
from contextlib import AbstractContextManager, nullcontext

import torch
import torch.nn.functional as F

from scratchlm.errors import UserError

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def resolve_device(name: str, setting: str = "train.device") -> torch.device:
    """`auto` (cuda when available), `cpu`, `cuda` or `cuda:N`; anything else is a UserError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"Unknown {setting} {name!r}; use auto, cpu, cuda or cuda:N.") from None
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise UserError(f"{setting} {name!r} is not supported; use auto, cpu, cuda or cuda:N.")
    if not torch.cuda.is_available():
        raise UserError(f"{setting} is {name} but no CUDA GPU is visible; use cpu or auto.")
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise UserError(f"{setting} is {name} but only {torch.cuda.device_count()} GPU(s) are visible; use cuda:0 to cuda:{torch.cuda.device_count() - 1}.")
    return device


@functools.cache
def cpu_bf16_is_faster() -> bool:
    """Whether bf16 matmuls beat fp32 on this CPU, timed rather than guessed.

    With native bf16 (AVX-512 BF16, AMX) bf16 autocast trains ~1.5-2× faster than fp32; on an
    AVX2-only CPU the same matmul falls back to a path ~100× slower. Each precision keeps its best
    of several runs, so a burst of load from another process does not decide it. ~20-60 ms.
    """
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(256, 512, generator=generator)
    w = torch.randn(512, 512, generator=generator)

    def seconds(a: torch.Tensor, b: torch.Tensor) -> float:
        started = time.perf_counter()
        F.linear(a, b)
        return time.perf_counter() - started

    F.linear(x, w)
    fp32 = min(seconds(x, w) for _ in range(5))
    a, b = x.bfloat16(), w.bfloat16()
    F.linear(a, b)
    for _ in range(5):
        bf16 = seconds(a, b)
        if bf16 < fp32:
            return True
        if bf16 > 4 * fp32:
            # A fallback path (no native bf16): no need to wait for more runs of it.
            return False
    return False


def resolve_dtype(name: str, device: torch.device, setting: str = "train.dtype") -> torch.dtype:
    """The compute dtype for `name` (auto, bfloat16, float16, float32) on `device`.

    fp32 on CUDA turns on TF32 tensor cores for matmuls (`high` precision): 8× the fp32 peak on
    Ampere and later at a precision training does not notice, which is also what MFU is then
    measured against.
    """
    if name == "auto":
        if device.type == "cuda":
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
        else:
            dtype = torch.bfloat16 if cpu_bf16_is_faster() else torch.float32
    elif name in DTYPES:
        dtype = DTYPES[name]
    else:
        raise UserError(f"Unknown {setting} {name!r}; choose auto, bfloat16, float16 or float32.")
    if dtype == torch.float16 and device.type != "cuda":
        raise UserError(f"{setting} float16 needs a CUDA GPU (it needs a loss scaler there); use bfloat16 or float32 on CPU.")
    if dtype == torch.float32 and device.type == "cuda":
        torch.set_float32_matmul_precision("high")
    return dtype


def autocast(device: torch.device, dtype: torch.dtype) -> AbstractContextManager:
    """Mixed precision for `dtype` (nothing to do for fp32)."""
    if dtype == torch.float32:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@functools.cache
def cpu_model() -> str:
    """The CPU's model name (for reports: figures mean little without it)."""
    import platform

    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
