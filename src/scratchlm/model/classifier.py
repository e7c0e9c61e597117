"""A GPT with a classification head: the trunk's final hidden states, pooled, then a linear layer
to one logit per class (Raschka's chapter 6: the last token has attended to every other one).

The language-model head stays (a classifier checkpoint still holds a whole GPT, so every tool
that reads checkpoints reads it); `classifier` adds `classifier.weight` and `classifier.bias`.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn as nn

from scratchlm.model.gpt import GPT, GPTConfig

Pooling = Literal["last", "mean"]


class GPTClassifier(GPT):
    def __init__(self, config: GPTConfig, num_classes: int, pooling: Pooling = "last") -> None:
        super().__init__(config)
        self.pooling = pooling
        self.classifier = nn.Linear(config.n_embd, num_classes)
        nn.init.normal_(self.classifier.weight, std=0.02)
        nn.init.zeros_(self.classifier.bias)

    @classmethod
    def from_gpt(cls, gpt: GPT, num_classes: int, pooling: Pooling = "last") -> GPTClassifier:
        """A classifier whose trunk is `gpt`'s weights (the head is new)."""
        model = cls(gpt.config, num_classes, pooling).to(device=gpt.transformer.wte.weight.device)
        model.load_state_dict(gpt.state_dict(), strict=False)
        return model

    def classify(self, idx: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Class logits (B, classes) for right-padded ids (B, T) with `lengths` (B,) real tokens each."""
        x = self.features(idx)  # (B, T, C)
        if self.pooling == "last":
            pooled = x[torch.arange(x.size(0), device=x.device), lengths - 1]  # (B, C): the last real token
        else:
            real = (torch.arange(x.size(1), device=x.device)[None, :] < lengths[:, None]).to(x.dtype)  # (B, T)
            pooled = (x * real[..., None]).sum(dim=1) / lengths[:, None].to(x.dtype)  # (B, C)
        return self.classifier(pooled)
