"""The GPT model, top to bottom: embeddings, transformer blocks, final norm, language-model head.

GPT-2 by default (learned positions, LayerNorm, GELU MLP ×4, tied embeddings, std-0.02 init
with residual projections scaled by 1/√(2·n_layer)), with switches for the parts modern models
use: rotary positions, RMSNorm, SwiGLU, grouped-query attention, QK-norm, untied embeddings.
Parameter names follow Hugging Face's GPT-2 (`transformer.h.0.ln_1.weight`, ...), except that
attention has separate `c_q`, `c_k`, `c_v` and SwiGLU separate `c_gate`, `c_fc` linears, so that
tensor parallelism can split each one (HF's fused tensors are split and joined at the conversion
boundary): conversion is a table of names, not a rewrite.

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

from scratchlm.errors import UserError
from scratchlm.model.attention import CausalSelfAttention
from scratchlm.model.kv_cache import KVCache
from scratchlm.model.loss import linear_cross_entropy, token_cross_entropy


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
    mlp_hidden_size: int = 0
    """Hidden width of the MLP (of each SwiGLU branch) exactly, overriding mlp_ratio; 0 = from mlp_ratio. For converted models whose width no ratio reproduces."""
    dropout: float = 0.0
    """Dropout on attention weights and residual branches during training."""
    bias: bool = True
    """Biases in linear layers and LayerNorms (GPT-2 has them)."""
    norm: Literal["layernorm", "rmsnorm"] = "layernorm"
    """Normalization: GPT-2's LayerNorm or RMSNorm."""
    norm_eps: float = 0.0
    """Epsilon of every norm (QK-norm included); 0 = the norm's usual value, 1e-5 for LayerNorm and 1e-6 for RMSNorm."""
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
        for name in ("block_size", "n_layer", "n_head", "n_embd"):
            if getattr(self, name) < 1:
                raise UserError(f"model.{name} is {getattr(self, name)}; it must be at least 1.")
        if self.vocab_size < 0 or self.n_kv_head < 0 or self.mlp_hidden_size < 0:
            raise UserError("model.vocab_size, model.n_kv_head and model.mlp_hidden_size must be 0 or more (0 = automatic).")
        if not (self.norm_eps >= 0 and math.isfinite(self.norm_eps)):
            raise UserError(f"model.norm_eps is {self.norm_eps}; it must be 0 (the norm's usual value) or a small positive number.")
        if not (self.mlp_ratio > 0 and math.isfinite(self.mlp_ratio)) or not 0 <= self.dropout < 1 or not self.rope_theta > 0:
            raise UserError("model.mlp_ratio and model.rope_theta must be positive and model.dropout within [0, 1).")
        self.n_kv_head = self.n_kv_head or self.n_head
        if self.n_embd % self.n_head:
            raise UserError(f"n_embd {self.n_embd} must be divisible by n_head {self.n_head}; change one of them.")
        if self.n_head % self.n_kv_head:
            raise UserError(f"n_head {self.n_head} must be a multiple of n_kv_head {self.n_kv_head} for grouped-query attention.")
        if self.position == "rope" and (self.n_embd // self.n_head) % 2:
            raise UserError(f"Rotary positions need an even head size, not {self.n_embd // self.n_head}; change n_embd or n_head.")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def mlp_hidden(self) -> int:
        if self.mlp_hidden_size:
            return self.mlp_hidden_size
        if self.mlp == "swiglu":
            # Two input branches: 2/3 of the width keeps the parameter count of a GELU MLP.
            return 64 * math.ceil(self.mlp_ratio * self.n_embd * 2 / 3 / 64)
        return int(self.mlp_ratio * self.n_embd)

    @property
    def eps(self) -> float:
        """The epsilon the norms use: norm_eps, or the usual value of the chosen norm."""
        return self.norm_eps or (1e-6 if self.norm == "rmsnorm" else 1e-5)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # In fp32 under autocast, as autocast runs LayerNorm: a bf16 input with an fp32 weight
        # would miss the fused kernel, and the mean of squares wants fp32 anyway.
        return F.rms_norm(x.float(), (x.size(-1),), self.weight.float(), self.eps).to(x.dtype)


def make_norm(config: GPTConfig, dim: int | None = None) -> nn.Module:
    dim = dim or config.n_embd
    if config.norm == "rmsnorm":
        return RMSNorm(dim, config.eps)
    return nn.LayerNorm(dim, eps=config.eps, bias=config.bias)


class MLP(nn.Module):
    """GELU: c_proj(gelu(c_fc(x))). SwiGLU: c_proj(silu(c_gate(x)) · c_fc(x)), with gate and up as
    two linears so that a column-wise split keeps each rank's gate and up channels paired."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, config.mlp_hidden, bias=config.bias)
        self.c_gate = nn.Linear(config.n_embd, config.mlp_hidden, bias=config.bias) if config.mlp == "swiglu" else None
        self.c_proj = nn.Linear(config.mlp_hidden, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.c_fc(x)  # (B, T, hidden)
        if self.c_gate is not None:
            h = F.silu(self.c_gate(x)) * h
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

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        cache: KVCache | None = None,
        *,
        last_only: bool = False,
        reduction: Literal["mean", "none"] = "mean",
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(logits, loss) for token ids `idx` (B, T).

        Without targets: logits (B, T, vocab), or (B, 1, vocab) for the last position only with
        `last_only` (what sampling needs after a prefill), and no loss. With targets (B, T): no
        logits (the head and the cross-entropy run chunk by chunk, never holding all B·T·vocab
        logits) and the loss: the mean over targets that are not -100, or with
        `reduction="none"` each position's loss (B, T), 0 where the target is -100. With a
        `cache`, `idx` continues the cached sequence at position `cache.length`.
        """
        x = self.features(idx, cache)  # (B, T, C)
        if targets is None:
            if last_only:
                x = x[:, -1:]  # (B, 1, C)
            return self.lm_head(x), None  # (B, T or 1, vocab)
        if reduction == "none":
            return None, token_cross_entropy(x, self.lm_head.weight, targets)  # (B, T)
        return None, linear_cross_entropy(x, self.lm_head.weight, targets)

    def features(self, idx: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """The final hidden states (B, T, C), after the last norm: what the head reads."""
        _, T = idx.shape
        start = cache.length if cache is not None else 0
        if start + T > self.config.block_size:
            raise UserError(f"The sequence is {start + T} tokens, longer than the model's context of {self.config.block_size}; shorten the prompt or generate fewer tokens.")
        x = self.transformer.wte(idx)  # (B, T, C)
        positions = torch.arange(start, start + T, device=idx.device)  # (T,)
        if cache is not None and cache.offsets is not None:
            positions = (positions[None, :] - cache.offsets[:, None]).clamp(min=0)  # (B, T): left-padded rows
        rope = None
        if self.config.position == "learned":
            x = x + self.transformer.wpe(positions)  # (T or B·T, C), broadcast over B
        else:
            rope = (self.rope_cos[positions], self.rope_sin[positions])  # (T or B·T, hd/2) each
        x = self.transformer.drop(x)
        for layer, block in enumerate(self.transformer.h):
            x = block(x, rope, cache, layer)
        if cache is not None:
            cache.advance(T)
        return self.transformer.ln_f(x)  # (B, T, C)
