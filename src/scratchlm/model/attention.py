"""Causal self-attention through `F.scaled_dot_product_attention` (flash / memory-efficient
kernels where available), with grouped-query heads, QK-norm, rotary positions and a KV cache.

Queries, keys and values are three linears, not one fused `c_attn`, and the number of heads is
read from the projections' output width at run time: tensor parallelism then shards each of them
column-wise (whole heads per rank) and the output projection row-wise, and this code runs
unchanged on a rank's local heads. Hugging Face's fused GPT-2 `c_attn` is split and joined at the
conversion boundary (`scratchlm.convert.hf`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn as nn
import torch.nn.functional as F

from scratchlm.model.kv_cache import KVCache

if TYPE_CHECKING:
    from scratchlm.model.gpt import GPTConfig


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (first half, second half) of each head's channels by position-dependent angles.

    x: (B, H, T, hd); cos, sin: (T, hd/2), or (B, T, hd/2) when each row has its own positions.
    """
    if cos.dim() == 3:
        cos, sin = cos[:, None], sin[:, None]  # (B, 1, T, hd/2)
    half = x.size(-1) // 2
    x1, x2 = x[..., :half], x[..., half:]
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        from scratchlm.model.gpt import make_norm

        self.head_dim = config.head_dim
        self.c_q = nn.Linear(config.n_embd, config.n_head * config.head_dim, bias=config.bias)
        self.c_k = nn.Linear(config.n_embd, config.n_kv_head * config.head_dim, bias=config.bias)
        self.c_v = nn.Linear(config.n_embd, config.n_kv_head * config.head_dim, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = config.dropout
        self.resid_dropout = nn.Dropout(config.dropout)
        self.q_norm = make_norm(config, config.head_dim) if config.qk_norm else None
        self.k_norm = make_norm(config, config.head_dim) if config.qk_norm else None

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None, cache: KVCache | None, layer: int) -> torch.Tensor:
        B, T, _ = x.shape
        # -1 heads: all of them, or this rank's share under tensor parallelism.
        q = self.c_q(x).view(B, T, -1, self.head_dim).transpose(1, 2)  # (B, H, T, hd)
        k = self.c_k(x).view(B, T, -1, self.head_dim).transpose(1, 2)  # (B, KV, T, hd)
        v = self.c_v(x).view(B, T, -1, self.head_dim).transpose(1, 2)  # (B, KV, T, hd)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)

        start = 0
        if cache is not None:
            start = cache.length
            k, v = cache.update(layer, k, v)  # (B, KV, start+T, hd)
        if k.size(1) != q.size(1):
            # Each key/value head serves H / KV query heads.
            k = k.repeat_interleave(q.size(1) // k.size(1), dim=1)
            v = v.repeat_interleave(q.size(1) // v.size(1), dim=1)

        dropout = self.dropout if self.training else 0.0
        if cache is not None and cache.offsets is not None:
            # Rows padded on the left: query i (column start+i) sees keys up to itself, but not a
            # row's padding columns; a padding query sees only itself, so no row is all masked.
            keys = torch.arange(start + T, device=x.device)
            queries = keys[start:, None]  # (T, 1)
            real = keys[None, None, :] >= cache.offsets[:, None, None]  # (B, 1, S)
            mask = (keys[None, :] <= queries) & (real | (keys[None, :] == queries))  # (B, T, S)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None], dropout_p=dropout)
        elif start == 0:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True)
        elif T == 1:
            # One new token attends to every cached position: no mask needed.
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)
        else:
            # New token i sits at absolute position start+i and sees keys 0..start+i.
            mask = torch.ones(T, start + T, dtype=torch.bool, device=x.device).tril(diagonal=start)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        y = y.transpose(1, 2).reshape(B, T, -1)  # (B, T, H·hd)
        return self.resid_dropout(self.c_proj(y))
