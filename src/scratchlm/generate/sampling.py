"""Choosing the next token from logits: temperature, top-k, top-p (nucleus), min-p, repetition penalty."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from scratchlm.errors import UserError


@dataclass
class SamplingConfig:
    """How to pick each next token."""

    temperature: float = 0.8
    """Divide logits by this; 0 means greedy (always the most likely token)."""
    top_k: int = 0
    """Sample only among the k most likely tokens (0 = no limit)."""
    top_p: float = 1.0
    """Sample only among the most likely tokens whose probabilities add up to p (1 = no limit)."""
    min_p: float = 0.0
    """Sample only among tokens at least this fraction as likely as the most likely one (0 = no limit)."""
    repetition_penalty: float = 1.0
    """Divide positive logits (multiply negative ones) of tokens already in the sequence by this (1 = off)."""

    def __post_init__(self) -> None:
        # Each comparison is false for NaN, so NaN fails every check.
        checks = {
            "temperature": (self.temperature >= 0 and math.isfinite(self.temperature), "0 (greedy) or more"),
            "top_k": (self.top_k >= 0, "0 (no limit) or more"),
            "top_p": (0 < self.top_p <= 1, "within (0, 1]"),
            "min_p": (0 <= self.min_p < 1, "within [0, 1)"),
            "repetition_penalty": (self.repetition_penalty > 0 and math.isfinite(self.repetition_penalty), "positive (1 = off)"),
        }
        for name, (ok, wanted) in checks.items():
            if not ok:
                raise UserError(f"{name} (--{name.replace('_', '-')}) is {getattr(self, name)}; it must be {wanted}.")


def sample_next(logits: torch.Tensor, config: SamplingConfig, generator: torch.Generator | None = None, previous: torch.Tensor | None = None) -> torch.Tensor:
    """Next token ids (B,) from last-position logits (B, V); `previous` (B, T) are the ids so far."""
    logits = logits.float()
    if config.repetition_penalty != 1.0 and previous is not None and previous.numel():
        seen = logits.gather(1, previous)
        seen = torch.where(seen > 0, seen / config.repetition_penalty, seen * config.repetition_penalty)
        logits = logits.scatter(1, previous, seen)
    if config.temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits / config.temperature
    if config.top_k:
        kth = torch.topk(logits, min(config.top_k, logits.size(-1)), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if config.top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        # Drop a token when the tokens before it already reach top_p; the first always stays.
        drop = cumulative - sorted_logits.softmax(dim=-1) >= config.top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(1, order, sorted_logits)
    if config.min_p > 0:
        probabilities = logits.softmax(dim=-1)
        floor = config.min_p * probabilities.max(dim=-1, keepdim=True).values
        logits = logits.masked_fill(probabilities < floor, float("-inf"))
    probabilities = logits.softmax(dim=-1)
    return torch.multinomial(probabilities, 1, generator=generator).squeeze(1)
