"""Run metrics: `metrics.jsonl`, throughput and model FLOPs utilization (MFU)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

# Dense bf16 tensor-core peaks (FLOP/s) of common accelerators, from their data sheets.
GPU_PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12, "4090": 165e12, "3090": 71e12}


def measure_matmul_peak(dtype: torch.dtype = torch.bfloat16, size: int = 1024, seconds: float = 0.5) -> float:
    """FLOP/s of a square matmul on the CPU, the practical peak MFU is measured against here."""
    # A private generator: drawing from the global one would change a resumed run's dropout.
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, dtype=dtype, generator=generator)
    b = torch.randn(size, size, dtype=dtype, generator=generator)
    a @ b  # warm up the kernel choice and caches
    runs, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        a @ b
        runs += 1
    return 2 * size**3 * runs / (time.perf_counter() - started)


def peak_flops(device: torch.device, dtype: torch.dtype) -> float:
    """The peak to compute MFU against: a data-sheet figure on known GPUs, else measured."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, flops in GPU_PEAK_BF16.items():
            if key in name:
                return flops if dtype != torch.float32 else flops / 2
        return 0.0
    return measure_matmul_peak(dtype if dtype != torch.float16 else torch.float32)


class MetricsLog:
    """Appends one JSON object per logged step to `metrics.jsonl`."""

    def __init__(self, path: Path, resume_step: int | None = None) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and path.exists():
            # Lines past the checkpoint we resume from were logged by the run that died; the
            # resumed run logs those steps again.
            kept = [line for line in path.read_text().splitlines() if line and json.loads(line).get("step", 0) <= resume_step]
            path.write_text("".join(line + "\n" for line in kept))
        elif path.exists():
            path.unlink()

    def log(self, record: dict[str, Any]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")


def read_metrics(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line]
