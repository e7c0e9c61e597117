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
CHUNK_ELEMENTS = 1 << 23
"""Logits per chunk (32 MB in fp32; 166 rows at GPT-2's vocabulary). Measured on a 2-core CPU at
widths 128 and 384, fp32 and bf16: much smaller chunks slow the head's matmuls down more than the
smaller working set saves, and 2^23 to 2^25 are within about 10% of each other."""


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
        # The dtype the head's matmuls run in (autocast's, else the inputs') and the one the
        # softmax and the sums run in (fp32, or fp64 for fp64 inputs).
        matmul_dtype = F.linear(h[:1], weight).dtype
        sum_dtype = torch.promote_types(matmul_dtype, torch.float32)
        head = weight.to(matmul_dtype)  # cast once, not once per chunk
        grad_h = torch.empty_like(h) if ctx.needs_input_grad[0] else None
        grad_w = torch.zeros_like(weight, dtype=torch.promote_types(weight.dtype, torch.float32)) if ctx.needs_input_grad[1] else None
        total = torch.zeros((), dtype=sum_dtype, device=h.device)
        rows = _chunk_rows(weight.size(0))
        for start in range(0, h.size(0), rows):
            end = min(start + rows, h.size(0))
            h_chunk, t_chunk = h[start:end].to(matmul_dtype), safe_targets[start:end, None]
            logits = F.linear(h_chunk, head)  # (n, V)
            probs = torch.softmax(logits, dim=-1, dtype=sum_dtype)  # (n, V)
            picked = probs.gather(1, t_chunk).squeeze(1)  # (n,) probability of each target
            losses = -picked.log()
            underflow = picked == 0
            if bool(underflow.any()):
                # A target so unlikely its probability is 0 in floating point: exact loss for those rows.
                rows_logits = logits[underflow].to(sum_dtype)
                losses[underflow] = torch.logsumexp(rows_logits, dim=-1) - rows_logits.gather(1, t_chunk[underflow]).squeeze(1)
            scale = valid[start:end].to(sum_dtype) / count  # (n,) 1/count on counted rows, 0 elsewhere
            total += (losses * scale).sum()
            if grad_h is None and grad_w is None:
                continue
            # d(mean loss)/d(logits) = (softmax − one-hot) · scale; the scale goes on the small side
            # of each matmul, never over the (n, V) tensor.
            probs.scatter_add_(1, t_chunk, -torch.ones_like(picked[:, None]))
            grad_logits = probs.to(matmul_dtype)
            if grad_h is not None:
                grad_h[start:end] = (grad_logits @ head) * scale[:, None].to(matmul_dtype)  # (n, C)
            if grad_w is not None:
                scaled_h = (h_chunk * scale[:, None]).to(matmul_dtype)  # (n, C)
                if matmul_dtype == grad_w.dtype:
                    grad_w.addmm_(grad_logits.t(), scaled_h)  # (V, C)
                else:
                    grad_w += grad_logits.t() @ scaled_h
        ctx.save_for_backward(grad_h if grad_h is not None else torch.empty(0), grad_w if grad_w is not None else torch.empty(0))
        return total

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
