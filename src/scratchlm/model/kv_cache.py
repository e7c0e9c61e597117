"""Key/value cache for incremental decoding: each layer's keys and values, written once.

Rows can join and leave a running batch (continuous batching): `select` keeps some rows,
`merge` appends another cache's rows, and `pad_left`/`trim_left` line up rows of different
lengths by the padding they carry on the left.
"""

from __future__ import annotations

import torch

GROWTH = 256
"""Columns added at a time when a write runs past the buffers' end: amortizes the copy."""


class KVCache:
    """Keys and values for every layer, (n_layer, B, heads, capacity, head_dim) each.

    A forward pass with the cache writes the new tokens' keys and values at `length` and attends
    over everything up to them; the model calls `advance` once per pass, after all layers. The
    buffers are allocated at the first write, with the head count of the keys written: all
    `n_kv_head` heads, or a tensor-parallel rank's share of them.
    """

    def __init__(self, n_layer: int, batch_size: int, n_kv_head: int, max_length: int, head_dim: int, device: torch.device | str, dtype: torch.dtype) -> None:
        self.n_layer, self.batch_size, self.head_dim = n_layer, batch_size, head_dim
        self.device, self.dtype = device, dtype
        self.max_length = max_length
        """Columns to allocate at the first write; a later write past them grows the buffers."""
        self.keys: torch.Tensor | None = None
        self.values: torch.Tensor | None = None
        self.length = 0
        self.offsets: torch.Tensor | None = None
        """(B,) left-padding per row when prompts of different lengths share the batch: row b's
        token at column j sits at position j - offsets[b], and its columns < offsets[b] are never
        attended to. None: every row starts at column 0."""

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (B, heads, T, hd) after the cached tokens; return all keys and values so far."""
        end = self.length + k.size(2)
        if self.keys is None or self.values is None:
            shape = (self.n_layer, self.batch_size, k.size(1), max(self.max_length, end), self.head_dim)
            self.keys = torch.zeros(shape, device=self.device, dtype=self.dtype)
            self.values = torch.zeros(shape, device=self.device, dtype=self.dtype)
        elif end > self.keys.size(3):
            self._resize(end + GROWTH)
        self.keys[layer, :, :, self.length : end] = k
        self.values[layer, :, :, self.length : end] = v
        return self.keys[layer, :, :, :end], self.values[layer, :, :, :end]

    def advance(self, n: int) -> None:
        self.length += n

    def reset(self) -> None:
        self.length = 0

    # ---- rows joining and leaving a running batch -----------------------------------------------

    @property
    def capacity(self) -> int:
        """Columns the buffers hold (or will, once allocated)."""
        return self.keys.size(3) if self.keys is not None else self.max_length

    def row_offsets(self) -> torch.Tensor:
        """(B,) each row's left padding, zeros when there is none."""
        if self.offsets is not None:
            return self.offsets
        return torch.zeros(self.batch_size, dtype=torch.long, device=self.device)

    def _set_offsets(self, offsets: torch.Tensor) -> None:
        # No padding anywhere: the model takes its faster path without a mask.
        self.offsets = offsets if bool(offsets.any()) else None

    def _resize(self, columns: int, shift: int = 0) -> None:
        """New buffers of `columns` columns, with the cached ones moved `shift` columns right."""
        self.max_length = max(self.max_length, columns)
        if self.keys is None or self.values is None:
            return
        shape = (*self.keys.shape[:3], columns, self.head_dim)
        keys, values = self.keys.new_zeros(shape), self.values.new_zeros(shape)
        keys[:, :, :, shift : shift + self.length] = self.keys[:, :, :, : self.length]
        values[:, :, :, shift : shift + self.length] = self.values[:, :, :, : self.length]
        self.keys, self.values = keys, values

    def select(self, rows: torch.Tensor) -> None:
        """Keep only `rows` (indices into the batch), in that order."""
        if self.keys is not None and self.values is not None:
            self.keys, self.values = self.keys[:, rows], self.values[:, rows]
        offsets = self.row_offsets()[rows]
        self.batch_size = len(rows)
        self._set_offsets(offsets)

    def pad_left(self, n: int) -> None:
        """Shift every row `n` columns right, behind n more columns of padding."""
        if n <= 0:
            return
        self._resize(max(self.capacity, self.length + n + 1), shift=n)
        self.length += n
        self._set_offsets(self.row_offsets() + n)

    def trim_left(self) -> int:
        """Drop the padding columns every row has; returns how many were dropped."""
        n = int(self.row_offsets().min()) if self.batch_size else 0
        if n > 0:
            if self.keys is not None and self.values is not None:
                self.keys = self.keys[:, :, :, n:]
                self.values = self.values[:, :, :, n:]
            self.length -= n
            self._set_offsets(self.row_offsets() - n)
        return n

    def merge(self, other: KVCache) -> None:
        """Append `other`'s rows after this cache's, padding whichever is shorter on the left."""
        self.pad_left(other.length - self.length)
        other.pad_left(self.length - other.length)
        columns = max(self.capacity, other.capacity)
        for cache in (self, other):
            if cache.capacity < columns:
                cache._resize(columns)
        offsets = torch.cat([self.row_offsets(), other.row_offsets()])
        if self.keys is not None and self.values is not None and other.keys is not None and other.values is not None:
            self.keys = torch.cat([self.keys, other.keys], dim=1)
            self.values = torch.cat([self.values, other.values], dim=1)
        self.batch_size += other.batch_size
        self._set_offsets(offsets)
