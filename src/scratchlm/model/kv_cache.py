"""Key/value cache for incremental decoding: each layer's keys and values, written once."""

from __future__ import annotations

import torch


class KVCache:
    """Preallocated keys and values for every layer, (B, n_kv_head, max_length, head_dim) each.

    A forward pass with the cache writes the new tokens' keys and values at `length` and attends
    over everything up to them; the model calls `advance` once per pass, after all layers.
    """

    def __init__(self, n_layer: int, batch_size: int, n_kv_head: int, max_length: int, head_dim: int, device: torch.device | str, dtype: torch.dtype) -> None:
        shape = (n_layer, batch_size, n_kv_head, max_length, head_dim)
        self.keys = torch.zeros(shape, device=device, dtype=dtype)
        self.values = torch.zeros(shape, device=device, dtype=dtype)
        self.length = 0

    @property
    def max_length(self) -> int:
        return self.keys.size(3)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (B, n_kv_head, T, hd) after the cached tokens; return all keys and values so far."""
        end = self.length + k.size(2)
        self.keys[layer, :, :, self.length : end] = k
        self.values[layer, :, :, self.length : end] = v
        return self.keys[layer, :, :, :end], self.values[layer, :, :, :end]

    def advance(self, n: int) -> None:
        self.length += n

    def reset(self) -> None:
        self.length = 0
