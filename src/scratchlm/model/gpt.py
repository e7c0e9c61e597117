"""The GPT model, top to bottom: embeddings, transformer blocks, final norm, language-model head.

GPT-2 by default (learned positions, LayerNorm, GELU MLP ×4, tied embeddings, std-0.02 init
with residual projections scaled by 1/√(2·n_layer)), with switches for the parts modern models
use: rotary positions, RMSNorm, SwiGLU, grouped-query attention, QK-norm, untied embeddings.
Parameter names follow Hugging Face's GPT-2 (`transformer.h.0.attn.c_attn.weight`, ...) so that
conversion is a table of names, not a rewrite.

This file never changes for scale-out: data, tensor and sequence parallelism are applied from
`train/distributed.py`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from scratchlm.errors import UserError
from scratchlm.model.attention import CausalSelfAttention
from scratchlm.model.kv_cache import KVCache


@dataclass
class GPTConfig:
    """The architecture of a GPT."""

    vocab_size: int = 0
    """Embedding rows, at least the tokenizer's vocabulary; 0 = the tokenizer's size rounded up to a multiple of 64 (faster matmuls)."""
    block_size: int = 1024
    """Context length: the most tokens the model attends over."""
    n_layer: int = 12
    """Number of transformer blocks."""
    n_head: int = 12
    """Attention heads per block (query heads)."""
    n_kv_head: int = 0
    """Key/value heads for grouped-query attention; 0 means n_head (ordinary multi-head attention)."""
    n_embd: int = 768
    """Width of the residual stream; must be divisible by n_head."""
    mlp_ratio: float = 4.0
    """Hidden width of the MLP as a multiple of n_embd (SwiGLU uses 2/3 of it per branch, rounded to 64)."""
    dropout: float = 0.0
    """Dropout on attention weights and residual branches during training."""
    bias: bool = True
    """Biases in linear layers and LayerNorms (GPT-2 has them)."""
    norm: Literal["layernorm", "rmsnorm"] = "layernorm"
    """Normalization: GPT-2's LayerNorm or RMSNorm."""
    mlp: Literal["gelu", "swiglu"] = "gelu"
    """MLP type: GPT-2's GELU (tanh approximation) or SwiGLU."""
    position: Literal["learned", "rope"] = "learned"
    """Positions: learned absolute embeddings (GPT-2) or rotary embeddings on queries and keys."""
    rope_theta: float = 10000.0
    """Base of the rotary frequencies."""
    qk_norm: bool = False
    """Normalize queries and keys per head before attention (stabilizes training at high learning rates)."""
    tie_embeddings: bool = True
    """Share the token embedding with the output head (GPT-2 does)."""

    def __post_init__(self) -> None:
        self.n_kv_head = self.n_kv_head or self.n_head
        if self.n_embd % self.n_head:
            raise UserError(f"n_embd {self.n_embd} must be divisible by n_head {self.n_head}; change one of them.")
        if self.n_head % self.n_kv_head:
            raise UserError(f"n_head {self.n_head} must be a multiple of n_kv_head {self.n_kv_head} for grouped-query attention.")
        if self.position == "rope" and (self.n_embd // self.n_head) % 2:
            raise UserError(f"Rotary positions need an even head size, not {self.n_embd // self.n_head}; change n_embd or n_head.")
        for name in ("block_size", "n_layer", "n_head", "n_embd"):
            if getattr(self, name) < 1:
                raise UserError(f"model.{name} must be at least 1.")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def mlp_hidden(self) -> int:
        if self.mlp == "swiglu":
            # Two input branches: 2/3 of the width keeps the parameter count of a GELU MLP.
            return 64 * math.ceil(self.mlp_ratio * self.n_embd * 2 / 3 / 64)
        return int(self.mlp_ratio * self.n_embd)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.size(-1),), self.weight, self.eps)


def make_norm(config: GPTConfig, dim: int | None = None) -> nn.Module:
    dim = dim or config.n_embd
    if config.norm == "rmsnorm":
        return RMSNorm(dim)
    return nn.LayerNorm(dim, bias=config.bias)


class MLP(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.swiglu = config.mlp == "swiglu"
        width = config.mlp_hidden * (2 if self.swiglu else 1)
        self.c_fc = nn.Linear(config.n_embd, width, bias=config.bias)
        self.c_proj = nn.Linear(config.mlp_hidden, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.c_fc(x)  # (B, T, hidden) or (B, T, 2·hidden) for SwiGLU
        if self.swiglu:
            gate, up = h.chunk(2, dim=-1)
            h = F.silu(gate) * up
        else:
            h = F.gelu(h, approximate="tanh")
        return self.dropout(self.c_proj(h))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = make_norm(config)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = make_norm(config)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None, cache: KVCache | None, layer: int) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), rope, cache, layer)
        return x + self.mlp(self.ln_2(x))


def rope_tables(config: GPTConfig, length: int, device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of the rotary angles for positions 0..length-1, each (length, head_dim/2)."""
    inverse = 1.0 / (config.rope_theta ** (torch.arange(0, config.head_dim, 2, dtype=torch.float32, device=device) / config.head_dim))
    angles = torch.outer(torch.arange(length, dtype=torch.float32, device=device), inverse)
    return angles.cos(), angles.sin()


class GPT(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        if config.vocab_size < 1:
            raise UserError("model.vocab_size is 0; set it, or let the training run take it from the tokenizer.")
        self.config = config
        self.transformer = nn.ModuleDict(
            {
                "wte": nn.Embedding(config.vocab_size, config.n_embd),
                "drop": nn.Dropout(config.dropout),
                "h": nn.ModuleList(Block(config) for _ in range(config.n_layer)),
                "ln_f": make_norm(config),
            }
        )
        if config.position == "learned":
            self.transformer["wpe"] = nn.Embedding(config.block_size, config.n_embd)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.transformer.wte.weight
        # Recompute each block in the backward pass instead of storing its activations; set by
        # the training loop (`activation_checkpointing = true`), not part of the architecture.
        self.activation_checkpointing = False
        if config.position == "rope":
            cos, sin = rope_tables(config, config.block_size)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        self.apply(self._init_weights)
        # Residual projections write into the residual stream once per block per branch; scaling
        # them by 1/√(2·n_layer) keeps the stream's variance independent of depth (GPT-2).
        for name, parameter in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(parameter, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def reset_rope(self) -> None:
        """Recompute the rotary tables (after building on the meta device and materializing)."""
        if self.config.position == "rope":
            cos, sin = rope_tables(self.config, self.config.block_size, self.rope_cos.device)
            self.rope_cos.copy_(cos)
            self.rope_sin.copy_(sin)

    def num_params(self, non_embedding: bool = False) -> int:
        """Parameter count (shared tensors once); `non_embedding` leaves out position embeddings
        and, when untied, the token-embedding lookup, which do no matrix multiplication."""
        total = sum(p.numel() for p in self.parameters())
        if non_embedding:
            if "wpe" in self.transformer:
                total -= self.transformer.wpe.weight.numel()
            if not self.config.tie_embeddings:
                total -= self.transformer.wte.weight.numel()
        return total

    def flops_per_token(self, sequence_length: int | None = None) -> float:
        """Training FLOPs per token: 6 per matmul parameter plus the attention scores
        (forward + backward of QKᵀ and AV: 12 · n_layer · n_embd · T), as in the PaLM paper."""
        length = sequence_length or self.config.block_size
        return 6 * self.num_params(non_embedding=True) + 12 * self.config.n_layer * self.config.n_embd * length

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, cache: KVCache | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits for every position (B, T, vocab) and, given targets (B, T), the mean
        cross-entropy loss over targets that are not -100. With a `cache`, `idx` continues the
        cached sequence at position `cache.length`."""
        _, T = idx.shape
        start = cache.length if cache is not None else 0
        if start + T > self.config.block_size:
            raise UserError(f"The sequence is {start + T} tokens, longer than the model's context of {self.config.block_size}; shorten the prompt or generate fewer tokens.")
        x = self.transformer.wte(idx)  # (B, T, C)
        rope = None
        if self.config.position == "learned":
            positions = torch.arange(start, start + T, device=idx.device)
            x = x + self.transformer.wpe(positions)  # (T, C) broadcast over B
        else:
            rope = (self.rope_cos[start : start + T], self.rope_sin[start : start + T])  # (T, hd/2) each
        x = self.transformer.drop(x)
        for layer, block in enumerate(self.transformer.h):
            if self.activation_checkpointing and self.training:
                x = checkpoint(block, x, rope, cache, layer, use_reentrant=False)
            else:
                x = block(x, rope, cache, layer)
        if cache is not None:
            cache.advance(T)
        x = self.transformer.ln_f(x)
        logits = self.lm_head(x)  # (B, T, vocab)
        if targets is None:
            return logits, None
        loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-100)
        return logits, loss
