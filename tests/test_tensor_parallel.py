"""The model is ready for tensor parallelism: one transformer block sharded over 2 processes
(gloo, CPU) Megatron-style — q, k, v and the MLP's up/gate column-wise, both output projections
row-wise — gives the single-process block's output and input gradient."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from scratchlm.model.gpt import Block, GPTConfig, rope_tables

CONFIGS = {
    "gpt2": dict(n_embd=32, n_head=4),
    "modern": dict(n_embd=32, n_head=4, n_kv_head=2, position="rope", norm="rmsnorm", mlp="swiglu", qk_norm=True, bias=False),
}


def _reference(config: GPTConfig) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    block = Block(config)
    with torch.no_grad():
        for p in block.parameters():
            p.copy_(0.3 * torch.randn(p.shape))
    x = torch.randn(2, 8, config.n_embd, requires_grad=True)
    rope = rope_tables(config, 8) if config.position == "rope" else None
    out = block(x, rope, None, 0)
    out.square().sum().backward()
    return block.state_dict(), x.detach(), out.detach(), x.grad


def _shard_and_compare(rank: int, store: str, name: str) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor.parallel import (
        ColwiseParallel,
        RowwiseParallel,
        parallelize_module,
    )

    # A file store: no TCP store server in rank 0 to tear down while rank 1 still talks to it.
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    torch.set_num_threads(1)
    config = GPTConfig(vocab_size=64, block_size=8, n_layer=1, **CONFIGS[name])
    state, x, want, want_grad = _reference(config)
    block = Block(config)
    block.load_state_dict(state)
    plan = {"attn.c_q": ColwiseParallel(), "attn.c_k": ColwiseParallel(), "attn.c_v": ColwiseParallel(), "attn.c_proj": RowwiseParallel(), "mlp.c_fc": ColwiseParallel(), "mlp.c_proj": RowwiseParallel()}
    if config.mlp == "swiglu":
        plan["mlp.c_gate"] = ColwiseParallel()
    parallelize_module(block, init_device_mesh("cpu", (2,)), plan)
    # Each rank holds half of the heads and half of the MLP's hidden channels.
    assert block.attn.c_q.weight.to_local().shape[0] == config.n_embd // 2
    x = x.clone().requires_grad_()
    rope = rope_tables(config, 8) if config.position == "rope" else None
    out = block(x, rope, None, 0)
    out.square().sum().backward()
    torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(x.grad, want_grad, atol=1e-4, rtol=1e-4)
    dist.barrier()
    # Both ranks have checked everything; leave without gloo's teardown, which now and then
    # aborts a rank ("terminate called without an active exception") after the work is done.
    os._exit(0)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_block_sharded_over_two_ranks_equals_one_process(name: str, tmp_path: Path) -> None:
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available in this torch build")
    mp.start_processes(_shard_and_compare, args=(str(tmp_path / "store"), name), nprocs=2, start_method="spawn", join=True)
