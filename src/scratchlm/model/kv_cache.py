"""Key/value cache for incremental decoding: each layer's keys and values, written once."""

from __future__ import annotations

import torch


class KVCache:
    """Keys and values for every layer, (B, heads, max_length, head_dim) each.

    A forward pass with the cache writes the new tokens' keys and values at `length` and attends
    over everything up to them; the model calls `advance` once per pass, after all layers. The
    buffers are allocated at the first write, with the head count of the keys written: all
    `n_kv_head` heads, or a tensor-parallel rank's share of them.
    """

    def __init__(self, n_layer: int, batch_size: int, n_kv_head: int, max_length: int, head_dim: int, device: torch.device | str, dtype: torch.dtype) -> None:
        self.n_layer, self.batch_size, self.head_dim = n_layer, batch_size, head_dim
        self.device, self.dtype = device, dtype
        self.max_length = max_length
        self.keys: torch.Tensor | None = None
        self.values: torch.Tensor | None = None
        self.length = 0
        self.offsets: torch.Tensor | None = None
        """(B,) left-padding per row when prompts of different lengths share the batch: row b's
        token at column j sits at position j - offsets[b], and its columns < offsets[b] are never
        attended to. None: every row starts at column 0."""

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (B, heads, T, hd) after the cached tokens; return all keys and values so far."""
        if self.keys is None or self.values is None:
            shape = (self.n_layer, self.batch_size, k.size(1), self.max_length, self.head_dim)
            self.keys = torch.zeros(shape, device=self.device, dtype=self.dtype)
            self.values = torch.zeros(shape, device=self.device, dtype=self.dtype)
        end = self.length + k.size(2)
        self.keys[layer, :, :, self.length : end] = k
        self.values[layer, :, :, self.length : end] = v
        return self.keys[layer, :, :, :end], self.values[layer, :, :, :end]

    def advance(self, n: int) -> None:
        self.length += n

    def reset(self) -> None:
        self.length = 0
