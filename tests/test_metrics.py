"""The data-sheet peaks MFU is measured against, looked up by the GPU's name (no GPU needed)."""

from __future__ import annotations

import pytest
import torch

from scratchlm.train import metrics
from scratchlm.train.metrics import peak_flops

# (name torch.cuda.get_device_name reports, dense bf16 peak, dense TF32 peak)
CASES = [
    ("NVIDIA L40S", 362.05e12, 183e12),
    ("NVIDIA L40", 181.05e12, 90.5e12),
    ("NVIDIA L4", 121e12, 60e12),
    ("NVIDIA A10", 125e12, 62.5e12),
    ("NVIDIA A100-SXM4-80GB", 312e12, 156e12),
    ("NVIDIA A100-PCIE-40GB", 312e12, 156e12),
    ("NVIDIA H100 80GB HBM3", 989e12, 494.7e12),
    ("NVIDIA H100 PCIe", 756e12, 378e12),
    ("NVIDIA H200", 989e12, 494.7e12),
    ("NVIDIA GeForce RTX 4090", 165.2e12, 82.6e12),
    ("NVIDIA GeForce RTX 3090", 71e12, 35.6e12),
]


def _on_gpu_named(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)


@pytest.mark.parametrize(("name", "bf16", "tf32"), CASES)
def test_cuda_peak_matches_the_whole_model_name(monkeypatch: pytest.MonkeyPatch, name: str, bf16: float, tf32: float) -> None:
    _on_gpu_named(monkeypatch, name)
    cuda = torch.device("cuda")
    assert peak_flops(cuda, torch.bfloat16) == bf16
    assert peak_flops(cuda, torch.float16) == bf16
    assert peak_flops(cuda, torch.float32) == tf32


@pytest.mark.parametrize("name", ["NVIDIA Tesla T4", "NVIDIA A10G", "NVIDIA GH200 480GB", "Some Future GPU", ""])
def test_unknown_gpu_has_no_peak(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    _on_gpu_named(monkeypatch, name)
    assert peak_flops(torch.device("cuda"), torch.bfloat16) == 0.0
    assert peak_flops(torch.device("cuda"), torch.float32) == 0.0


def test_cpu_peak_is_measured(monkeypatch: pytest.MonkeyPatch) -> None:
    measured: list[torch.dtype] = []

    def fake_measure(dtype: torch.dtype = torch.bfloat16, size: int = 1024, seconds: float = 0.5) -> float:
        measured.append(dtype)
        return 1e11

    monkeypatch.setattr(metrics, "measure_matmul_peak", fake_measure)
    cpu = torch.device("cpu")
    assert peak_flops(cpu, torch.bfloat16) == 1e11
    assert peak_flops(cpu, torch.float16) == 1e11
    assert measured == [torch.bfloat16, torch.float32]  # fp16 matmuls are slow on CPUs: measured as fp32
