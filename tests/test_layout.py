"""Laying weights out for decoding changes strides only: the same values, outputs and checkpoints."""

from __future__ import annotations

import pytest
import torch

from scratchlm.generate import layout
from scratchlm.generate.engine import Engine, Request
from scratchlm.generate.sampling import SamplingConfig
from scratchlm.model.gpt import GPT, GPTConfig


@pytest.mark.parametrize("tied", [True, False])
def test_column_major_weights_give_the_same_tokens_and_state(monkeypatch: pytest.MonkeyPatch, tied: bool) -> None:
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=96, block_size=32, n_layer=2, n_head=2, n_embd=32, tie_embeddings=tied)).eval()
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    requests = [Request([1, 2, 3], 8, SamplingConfig(temperature=0)), Request([7], 8, SamplingConfig(temperature=0))]
    want = [g.tokens for g in Engine(model, max_batch_size=2).run(requests)]
    monkeypatch.setattr(layout, "column_major_is_faster", lambda weight: True)
    changed = layout.lay_out_for_decoding(model)
    assert (96, 32) in changed and (32, 32) in changed
    assert model.lm_head.weight.stride() == (1, 96)
    assert (model.lm_head.weight is model.transformer.wte.weight) == tied
    assert all(torch.equal(before[name], tensor) for name, tensor in model.state_dict().items())
    assert [g.tokens for g in Engine(model, max_batch_size=2).run(requests)] == want


def test_the_verdict_is_measured_and_nothing_changes_when_row_major_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    assert isinstance(layout.column_major_is_faster(torch.randn(64, 32)), bool)
    model = GPT(GPTConfig(vocab_size=64, block_size=16, n_layer=1, n_head=2, n_embd=32)).eval()
    monkeypatch.setattr(layout, "column_major_is_faster", lambda weight: False)
    assert layout.lay_out_for_decoding(model) == []
    assert all(p.is_contiguous() for p in model.parameters())
