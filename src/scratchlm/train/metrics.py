"""Run metrics: `metrics.jsonl`, throughput and model FLOPs utilization (MFU)."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import torch

from scratchlm.runtime import cpu_bf16_is_faster

# Dense (no sparsity) tensor-core peaks in FLOP/s from NVIDIA's data sheets: (bf16, TF32), keyed
# by the model's words in the name torch reports. fp16 runs at the bf16 rate. GeForce cards do
# half rate with fp32 accumulation, which is what autocast uses, so theirs are the fp32-accumulate
# figures (the RTX 4090 does 330 TFLOPS only with fp16 accumulation).
GPU_PEAKS: dict[str, tuple[float, float]] = {
    # An SXM board's name has no form factor in it ("NVIDIA H100 80GB HBM3"), a PCIe board's does.
    "H100": (989e12, 494.7e12),
    "H100 PCIe": (756e12, 378e12),
    "H200": (989e12, 494.7e12),
    "A100": (312e12, 156e12),
    "L40S": (362.05e12, 183e12),
    "L40": (181.05e12, 90.5e12),
    "L4": (121e12, 60e12),
    "A10": (125e12, 62.5e12),
    "RTX 4090": (165.2e12, 82.6e12),
    "RTX 3090": (71e12, 35.6e12),
}


def _model_pattern(model: str) -> re.Pattern[str]:
    # Whole words only, so "L4" is not found in "L40S" nor "A10" in "A100"; "H100-PCIE" and
    # "H100 PCIe" are the same model.
    words = r"[\s_-]+".join(re.escape(word) for word in model.split())
    return re.compile(rf"(?<![A-Za-z0-9]){words}(?![A-Za-z0-9])", re.IGNORECASE)


# Longest name first: "H100 PCIe" must win over "H100".
_GPU_PATTERNS = [(_model_pattern(model), peaks) for model, peaks in sorted(GPU_PEAKS.items(), key=lambda item: -len(item[0]))]


def gpu_peaks(name: str) -> tuple[float, float] | None:
    """The (bf16, TF32) peaks of the GPU torch names `name`, or None for a GPU not in the table."""
    return next((peaks for pattern, peaks in _GPU_PATTERNS if pattern.search(name)), None)


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
    """The peak to compute MFU against: a data-sheet figure on known GPUs (0 on unknown ones),
    else measured. fp32 on CUDA is measured against TF32, which training enables for fp32 there."""
    if device.type == "cuda":
        peaks = gpu_peaks(torch.cuda.get_device_name(device))
        if peaks is None:
            return 0.0
        bf16, tf32 = peaks
        return tf32 if dtype == torch.float32 else bf16
    dtype = dtype if dtype != torch.float16 else torch.float32
    # 2048² reaches the kernels' full speed (1024² measured bf16 at under half of it); a bf16
    # matmul without native support takes seconds at that size, so it is measured at 512².
    native = dtype == torch.float32 or cpu_bf16_is_faster()
    return measure_matmul_peak(dtype, 2048 if native else 512)


class MetricsLog:
    """Appends one JSON object per logged step to `metrics.jsonl`; with no path (ranks other
    than 0) it writes nothing."""

    def __init__(self, path: Path | None, resume_step: int | None = None) -> None:
        self.path = path
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and path.exists():
            # Lines past the checkpoint we resume from were logged by the run that died; the
            # resumed run logs those steps again.
            kept = [line for line in path.read_text().splitlines() if line and json.loads(line).get("step", 0) <= resume_step]
            path.write_text("".join(line + "\n" for line in kept))

    def log(self, record: dict[str, Any]) -> None:
        if self.path is None:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")


def read_metrics(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line]
