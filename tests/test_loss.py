"""The chunked head + cross-entropy against the plain loss on full logits: same value, same
gradients, with ignored targets, tied weights and chunks smaller than the batch."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import scratchlm.model.loss as loss_module
from scratchlm.model.gpt import GPT, GPTConfig
from scratchlm.model.loss import linear_cross_entropy, token_cross_entropy


@pytest.fixture(params=[1 << 10, 1 << 22], ids=["many-chunks", "one-chunk"])
def chunk_elements(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setattr(loss_module, "CHUNK_ELEMENTS", request.param)
    return request.param


def test_value_and_gradients_equal_the_plain_loss(chunk_elements: int) -> None:
    torch.manual_seed(0)
    N, C, V = 50, 16, 300
    h = torch.randn(N, C, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(V, C, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, V, (N,))
    targets[::7] = -100
    plain = F.cross_entropy(F.linear(h, weight), targets, ignore_index=-100)
    grad_h, grad_w = torch.autograd.grad(3 * plain, (h, weight))
    chunked = linear_cross_entropy(h, weight, targets)
    got_h, got_w = torch.autograd.grad(3 * chunked, (h, weight))
    torch.testing.assert_close(chunked, plain, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(got_h, grad_h, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(got_w, grad_w, rtol=1e-10, atol=1e-12)
    with torch.no_grad():
        per_token = token_cross_entropy(h, weight, targets)
    torch.testing.assert_close(per_token, F.cross_entropy(F.linear(h, weight), targets, ignore_index=-100, reduction="none"), rtol=1e-10, atol=1e-12)


def test_model_gradients_equal_plain_loss_with_tied_head(chunk_elements: int) -> None:
    """Through the whole model: the tied embedding gets gradient from both its uses."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=96, block_size=16, n_layer=2, n_head=2, n_embd=16)).double()
    x, y = torch.randint(0, 96, (3, 16)), torch.randint(0, 96, (3, 16))
    y[0, :5] = -100
    _, loss = model(x, y)
    loss.backward()
    ours = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    logits, _ = model(x)
    F.cross_entropy(logits.view(-1, 96), y.view(-1), ignore_index=-100).backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(ours[name], p.grad, rtol=1e-9, atol=1e-12, msg=name)


def test_all_targets_ignored_gives_zero_not_nan() -> None:
    h = torch.randn(4, 8, requires_grad=True)
    weight = torch.randn(10, 8, requires_grad=True)
    loss = linear_cross_entropy(h, weight, torch.full((4,), -100))
    loss.backward()
    assert loss.item() == 0.0 and torch.all(h.grad == 0) and torch.all(weight.grad == 0)


def test_bf16_autocast_stays_close_to_fp32() -> None:
    torch.manual_seed(0)
    h = torch.randn(64, 32, requires_grad=True)
    weight = (0.1 * torch.randn(500, 32)).requires_grad_()
    targets = torch.randint(0, 500, (64,))
    plain = F.cross_entropy(F.linear(h, weight), targets)
    grad_h, grad_w = torch.autograd.grad(plain, (h, weight))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        chunked = linear_cross_entropy(h, weight, targets)
    got_h, got_w = torch.autograd.grad(chunked, (h, weight))
    assert got_w.dtype == torch.float32 and got_h.dtype == torch.float32
    torch.testing.assert_close(chunked, plain, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(got_h, grad_h, rtol=5e-2, atol=5e-3)
    torch.testing.assert_close(got_w, grad_w, rtol=5e-2, atol=5e-3)


def test_last_only_logits_equal_the_last_position() -> None:
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=64, block_size=16, n_layer=1, n_head=2, n_embd=16)).eval()
    idx = torch.randint(0, 64, (2, 9))
    with torch.no_grad():
        full, _ = model(idx)
        last, _ = model(idx, last_only=True)
    assert last.shape == (2, 1, 64)
    torch.testing.assert_close(last, full[:, -1:])
