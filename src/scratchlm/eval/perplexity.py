"""Loss, perplexity and bits per byte of a model on token batches.

Bits per byte divide the summed loss (in bits) by the UTF-8 bytes of the predicted tokens, so
models with different tokenizers compare fairly. Special tokens (end-of-text) have no bytes of
text; their predictions are left out of both sums, as nanochat does.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from contextlib import AbstractContextManager, nullcontext

import torch
import torch.nn.functional as F

from scratchlm.model.gpt import GPT
from scratchlm.tokenizer.tokenizer import Tokenizer


def token_byte_lengths(tokenizer: Tokenizer, size: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """UTF-8 byte length of each id (0 for special tokens and for padding rows up to `size`)."""
    lengths = torch.zeros(size, dtype=torch.long)
    lengths[: len(tokenizer.ranks)] = torch.tensor([len(token) for token in tokenizer.ranks])
    return lengths.to(device)


@torch.no_grad()
def evaluate(model: GPT, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], byte_lengths: torch.Tensor, autocast: AbstractContextManager | None = None) -> dict[str, float]:
    """Mean loss per token (nats), perplexity and bits per byte over all `batches`."""
    was_training = model.training
    model.eval()
    total_nats = torch.zeros((), dtype=torch.float64, device=byte_lengths.device)
    total_bytes = torch.zeros((), dtype=torch.long, device=byte_lengths.device)
    total_tokens = 0
    try:
        for x, y in batches:
            with autocast or nullcontext():
                logits, _ = model(x)
            nats = F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.reshape(-1), reduction="none")  # (B·T,)
            counted = byte_lengths[y.reshape(-1)] > 0
            total_nats += nats[counted].double().sum()
            total_bytes += byte_lengths[y.reshape(-1)].sum()
            total_tokens += int(counted.sum())
    finally:
        model.train(was_training)
    if total_tokens == 0:
        return {"loss": float("nan"), "perplexity": float("nan"), "bpb": float("nan"), "tokens": 0}
    loss = float(total_nats) / total_tokens
    return {"loss": loss, "perplexity": math.exp(loss), "bpb": float(total_nats) / (math.log(2) * int(total_bytes)), "tokens": total_tokens}
