"""Loss, perplexity and bits per byte of a model on token batches.

Bits per byte divide the summed loss (in bits) by the UTF-8 bytes of the predicted tokens, so
models with different tokenizers compare fairly. Special tokens (end-of-text) have no bytes of
text; their predictions are left out of both sums, as nanochat does.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn

from scratchlm.data.loader import TokenLoader
from scratchlm.tokenizer.tokenizer import Tokenizer


def token_byte_lengths(tokenizer: Tokenizer, size: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """UTF-8 byte length of each id (0 for special tokens and for padding rows up to `size`)."""
    lengths = torch.zeros(size, dtype=torch.long)
    lengths[: len(tokenizer.ranks)] = torch.tensor([len(token) for token in tokenizer.ranks])
    return lengths.to(device)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    byte_lengths: torch.Tensor,
    autocast: AbstractContextManager | None = None,
    group: dist.ProcessGroup | None = None,
) -> dict[str, float]:
    """Mean loss per token (nats), perplexity and bits per byte over all `batches`.

    `model(x, y, reduction="none")` gives each position's loss (B, T); every position of every
    batch is scored once, except targets of -100 (padding). With a process `group`, each rank
    scores its share of the windows and the sums are added over the group.
    """
    was_training = model.training
    model.eval()
    total_nats = torch.zeros((), dtype=torch.float64, device=byte_lengths.device)
    total_bytes = torch.zeros((), dtype=torch.long, device=byte_lengths.device)
    total_tokens = 0
    try:
        for x, y in batches:
            with autocast or nullcontext():
                _, nats = model(x, y, reduction="none")  # (B, T)
            lengths = byte_lengths[y.clamp(min=0)] * (y >= 0)  # (B, T)
            counted = lengths > 0
            total_nats += nats[counted].double().sum()
            total_bytes += lengths.sum()
            total_tokens += int(counted.sum())
    finally:
        model.train(was_training)
    if group is not None:
        sums = torch.stack([total_nats, total_bytes.double(), torch.tensor(float(total_tokens), dtype=torch.float64, device=total_nats.device)])
        dist.all_reduce(sums, group=group)
        total_nats, total_bytes, total_tokens = sums[0], sums[1].long(), int(sums[2])
    if total_tokens == 0:
        return {"loss": float("nan"), "perplexity": float("nan"), "bpb": float("nan"), "tokens": 0}
    loss = float(total_nats) / total_tokens
    return {"loss": loss, "perplexity": math.exp(loss), "bpb": float(total_nats) / (math.log(2) * int(total_bytes)), "tokens": total_tokens}


class ShardEvaluator:
    """Loss, perplexity and bits per byte on one split of a shards directory: its non-overlapping
    windows in order, each scored exactly once, all of them or the first `max_tokens` worth.

    Built before training starts, so a split too small for one window fails at once. Over
    data-parallel ranks (`rank` of `world_size` in process `group`), each scores its share and
    the figures are those of the whole set.
    """

    def __init__(
        self,
        shards: str | Path,
        split: str,
        batch_size: int,
        block_size: int,
        byte_lengths: torch.Tensor,
        max_tokens: int = 0,
        autocast: AbstractContextManager | None = None,
        *,
        rank: int = 0,
        world_size: int = 1,
        group: dist.ProcessGroup | None = None,
    ) -> None:
        self.loader = TokenLoader(shards, split, batch_size, block_size, mode="sequential", rank=rank, world_size=world_size, device=byte_lengths.device)
        self.windows = self.loader.num_windows if max_tokens == 0 else min(self.loader.num_windows, max(1, max_tokens // block_size))
        self.byte_lengths, self.autocast, self.group = byte_lengths, autocast, group

    def __call__(self, model: nn.Module) -> dict[str, float]:
        return evaluate(model, self.loader.iter_epoch(self.windows), self.byte_lengths, self.autocast, self.group)
