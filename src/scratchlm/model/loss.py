"""Cross-entropy over a large vocabulary without materializing the whole (N, V) logits.

The language-model head is `logits = h @ Wᵀ` with h (N, C) and W (V, C). At GPT-2's vocabulary
(50,304) and a few thousand tokens per micro-batch, the fp32 logits, their log-softmax and their
gradient are each hundreds of megabytes, and on a CPU the passes over them cost more time than
the head's matmul itself. Here the rows go through the head in chunks: each chunk's logits are
computed, reduced to its losses and, when training, turned straight into the chunk's gradients
(softmax − one-hot), which are multiplied into dL/dh and dL/dW; only one chunk of logits exists
at a time. The gradients are computed in the forward pass (when they are needed, so no second
pass over the logits) and scaled by the incoming gradient in the backward pass.

Targets equal to `IGNORE_INDEX` (-100) count neither in the loss nor in its mean.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100
CHUNK_ELEMENTS = 1 << 22
"""Logits per chunk (16 MB in fp32): small enough to stay near the caches, large enough that each
chunk's matmul runs at full speed."""


def _chunk_rows(vocab_size: int) -> int:
    return max(1, CHUNK_ELEMENTS // vocab_size)


def _chunk_logits(h: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    # The matmul runs in the autocast dtype where autocast is on; the softmax in fp32 (or fp64).
    logits = F.linear(h, weight)  # (n, V)
    return logits.float() if logits.dtype in (torch.bfloat16, torch.float16) else logits


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.weight_dtype = weight.dtype
        valid = targets != IGNORE_INDEX  # (N,)
        count = valid.sum().clamp(min=1)
        safe_targets = targets.masked_fill(~valid, 0)
        grad_h = torch.empty_like(h) if ctx.needs_input_grad[0] else None
        grad_w = torch.zeros_like(weight, dtype=torch.promote_types(weight.dtype, torch.float32)) if ctx.needs_input_grad[1] else None
        # The dtype the head's matmuls run in: autocast's, else the inputs'.
        matmul_dtype = F.linear(h[:1], weight).dtype
        total = torch.zeros((), dtype=torch.promote_types(h.dtype, torch.float32), device=h.device)
        rows = _chunk_rows(weight.size(0))
        for start in range(0, h.size(0), rows):
            end = min(start + rows, h.size(0))
            h_chunk, t_chunk, v_chunk = h[start:end], safe_targets[start:end], valid[start:end]
            log_probs = torch.log_softmax(_chunk_logits(h_chunk, weight), dim=-1)  # (n, V)
            total -= (log_probs.gather(1, t_chunk[:, None]).squeeze(1) * v_chunk).sum()
            if grad_h is None and grad_w is None:
                continue
            # d(mean loss)/d(logits) = (softmax − one-hot) / count on counted rows, 0 elsewhere.
            probs = log_probs.exp_()
            probs.scatter_add_(1, t_chunk[:, None], -torch.ones_like(probs[:, :1]))
            probs.mul_((v_chunk.to(probs.dtype) / count)[:, None])
            grad_logits = probs.to(matmul_dtype)
            if grad_h is not None:
                grad_h[start:end] = grad_logits @ weight.to(matmul_dtype)  # (n, C)
            if grad_w is not None:
                if matmul_dtype == grad_w.dtype:
                    grad_w.addmm_(grad_logits.t(), h_chunk.to(matmul_dtype))  # (V, C)
                else:
                    grad_w += grad_logits.t() @ h_chunk.to(matmul_dtype)
        ctx.save_for_backward(grad_h if grad_h is not None else torch.empty(0), grad_w if grad_w is not None else torch.empty(0))
        return total / count

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):  # type: ignore[override]
        grad_h, grad_w = ctx.saved_tensors
        return (
            grad_h * grad_output.to(grad_h.dtype) if ctx.needs_input_grad[0] else None,
            (grad_w * grad_output).to(ctx.weight_dtype) if ctx.needs_input_grad[1] else None,
            None,
        )


def linear_cross_entropy(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of `h @ weightᵀ` against `targets`, chunked over rows.

    h: (..., C) final hidden states; weight: (V, C) the output head; targets: (...) class ids or
    -100. Equal, value and gradients, to `F.cross_entropy(F.linear(h, weight).float().view(-1, V),
    targets.view(-1), ignore_index=-100)`.
    """
    h2 = h.reshape(-1, h.size(-1))  # (N, C)
    flat_targets = targets.reshape(-1)  # (N,)
    if torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad):
        return _LinearCrossEntropy.apply(h2, weight, flat_targets)
    return token_cross_entropy(h2, weight, flat_targets).sum() / (flat_targets != IGNORE_INDEX).sum().clamp(min=1)


def token_cross_entropy(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-position cross-entropy (nats) of `h @ weightᵀ`, chunked; 0 where the target is -100.

    h: (..., C); weight: (V, C); targets: (...). Returns fp32 of the shape of `targets`. Under
    no_grad (evaluation) only one chunk of logits exists at a time; with gradients, autograd
    keeps each chunk's logits for the backward pass.
    """
    h2 = h.reshape(-1, h.size(-1))  # (N, C)
    flat_targets = targets.reshape(-1)
    valid = flat_targets != IGNORE_INDEX
    safe_targets = flat_targets.masked_fill(~valid, 0)
    rows = _chunk_rows(weight.size(0))
    pieces = []
    for start in range(0, h2.size(0), rows):
        logits = _chunk_logits(h2[start : start + rows], weight)  # (n, V)
        pieces.append(torch.logsumexp(logits, dim=-1) - logits.gather(1, safe_targets[start : start + rows, None]).squeeze(1))
    return torch.cat(pieces).masked_fill(~valid, 0.0).view(targets.shape)
