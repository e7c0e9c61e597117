"""The [parallel] layout arithmetic and gradient clipping over plain tensors, in one process
(the multi-process behaviour is in test_distributed.py)."""

from __future__ import annotations

import pytest
import torch

from scratchlm.errors import UserError
from scratchlm.train.distributed import Distributed, clip_grad_norm, launched_world_size
from scratchlm.train.settings import ParallelConfig, check_batch_tokens


@pytest.mark.parametrize(
    ("settings", "world", "layout"),
    [
        ({}, 1, (1, 1, 1)),
        ({}, 8, (8, 1, 1)),
        ({"fsdp": 8}, 8, (1, 8, 1)),
        ({"fsdp": 4}, 16, (4, 4, 1)),
        ({"tp": 2, "fsdp": 4}, 8, (1, 4, 2)),
        ({"dp": 2, "fsdp": 2, "tp": 2}, 8, (2, 2, 2)),
        ({"backend": "deepspeed", "zero_stage": 3}, 4, (4, 1, 1)),
    ],
)
def test_layouts(settings: dict, world: int, layout: tuple[int, int, int]) -> None:
    assert ParallelConfig(**settings).layout(world) == layout


@pytest.mark.parametrize(
    ("settings", "world", "message"),
    [
        ({"dp": 2, "tp": 2}, 8, "= 4, but 8 process(es) were launched; launch 4, or set parallel.dp = 0"),
        ({"fsdp": 3}, 8, "parallel.fsdp × parallel.tp = 3 does not divide the 8 process(es)"),
        ({"backend": "deepspeed", "fsdp": 2}, 2, "leave parallel.dp, fsdp and tp at their defaults"),
    ],
)
def test_layouts_that_do_not_fit_say_what_would(settings: dict, world: int, message: str) -> None:
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)").replace("×", "×")):
        ParallelConfig(**settings).layout(world)


@pytest.mark.parametrize(
    ("settings", "message"),
    [({"tp": 0}, "parallel.tp is 0"), ({"dp": -1}, "parallel.dp is -1"), ({"backend": "jax"}, "choose one of: torch, deepspeed"), ({"zero_stage": 4}, "1, 2 or 3"), ({"timeout_s": 0}, "positive")],
)
def test_bad_settings_are_one_sentence(settings: dict, message: str) -> None:
    with pytest.raises(UserError, match=message):
        ParallelConfig(**settings)


def test_batch_tokens_must_divide_over_data_parallel_processes() -> None:
    assert check_batch_tokens(4096, 1024) == 4
    with pytest.raises(UserError, match="not a multiple of micro_batch_size × block_size × data-parallel processes = 3072; use 3072"):
        check_batch_tokens(4096, 3072)


def test_world_size_from_the_launcher(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert launched_world_size() == 1
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(UserError, match="WORLD_SIZE is 'two'"):
        launched_world_size()


def test_clip_over_plain_gradients_equals_torch() -> None:
    torch.manual_seed(0)
    ours = [torch.nn.Parameter(torch.randn(5, 3)) for _ in range(3)]
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    for a, b in zip(ours, theirs):
        a.grad = torch.randn_like(a)
        b.grad = a.grad.clone()
    norm = clip_grad_norm(ours, 0.5)
    assert norm == pytest.approx(float(torch.nn.utils.clip_grad_norm_(theirs, 0.5)), rel=1e-6)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a.grad, b.grad)


def test_a_single_process_agrees_with_itself() -> None:
    alone = Distributed(device=torch.device("cpu"))
    assert not alone.enabled and alone.is_main and alone.data_size == 1
    assert alone.agree(3.5) == 3.5 and float(alone.mean(torch.tensor(2.0))) == 2.0
    assert alone.layout == {"world_size": 1, "dp": 1, "fsdp": 1, "tp": 1, "backend": "torch"}


def test_tensor_parallel_replicas_must_be_sharded() -> None:
    with pytest.raises(UserError, match="data-parallel copies are sharded with FSDP: set parallel.fsdp"):
        ParallelConfig(tp=2).layout(4)
    assert ParallelConfig(tp=2, fsdp=2).layout(4) == (1, 2, 2)
