"""Batches of token windows for training and evaluation, read from memory-mapped shards.

A window is block_size + 1 consecutive tokens of one shard file: x is the first block_size, y
the same shifted by one, so y[t] is the token that follows x[:t+1]. Windows never cross a file
boundary, which keeps indexing to a file and an offset.

Two ways to pick windows:
- "random": every start offset of every file is equally likely (a global offset is drawn and
  mapped to its file, which weights files by their number of windows).
- "sequential": the non-overlapping windows (stride block_size) in file order. Training wraps
  around into the next `epoch`; `iter_epoch` is exactly one pass, for evaluation.

Data-parallel ranks: every call draws one *global* micro-batch of batch_size × world_size
windows from a stream that all ranks share (one generator seeded with `seed`, or one position),
and rank r keeps rows r·batch_size to (r+1)·batch_size - 1. The windows a step trains on are
therefore the same for any number of ranks with the same global batch: 2 ranks × 1 micro-batch
see exactly what 1 process × 2 micro-batches sees, so losses match across layouts and a
checkpoint resumes at another world size on the same data.

`state_dict` is plain JSON-able data (counters and the generator's state), enough for the next
batch after a resume to be the one an uninterrupted run would have drawn.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from scratchlm.data.shards import open_shard, read_manifest, split_files
from scratchlm.errors import UserError

Batch = tuple[torch.Tensor, torch.Tensor]
MODES = ("random", "sequential")


class TokenLoader:
    """Endless (x, y) batches of shape (batch_size, block_size) from one split of a shards directory.

    Public counters: `num_windows` (the split's windows in one sequential pass, all ranks), `batches`
    (drawn by next_batch so far) and `epoch` (completed sequential passes; 0 in random mode).
    """

    def __init__(
        self,
        directory: str | Path,
        split: str,
        batch_size: int,
        block_size: int,
        *,
        mode: Literal["random", "sequential"] = "random",
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        device: str | torch.device = "cpu",
    ) -> None:
        if mode not in MODES:
            raise UserError(f"Unknown loader mode {mode!r}; choose one of: {', '.join(MODES)}.")
        if batch_size < 1 or block_size < 1 or seed < 0:
            raise UserError(f"batch_size ({batch_size}) and block_size ({block_size}) must be at least 1 and seed ({seed}) at least 0.")
        if not 0 <= rank < world_size:
            raise UserError(f"rank {rank} is outside 0..{world_size - 1} for world_size {world_size}; check the launcher's settings.")
        self.split, self.batch_size, self.block_size, self.mode = split, batch_size, block_size, mode
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.device = torch.device(device)
        self.manifest = read_manifest(directory)
        self._shards = [open_shard(path, self.manifest["vocab_size"]) for path in split_files(directory, split)]
        lengths = np.array([len(shard) for shard in self._shards], dtype=np.int64)
        self.split_tokens = int(lengths.sum())
        if lengths.max() < block_size + 1:
            raise UserError(
                f"The {split} split of {directory} is too small for block_size {block_size}: a window needs {block_size + 1} tokens "
                f"from one file and its largest file has {int(lengths.max()):,}; use a smaller block size or more data."
            )
        # Per-file cumulative counts of start offsets (random) and of non-overlapping windows
        # (sequential): file f owns the global numbers bounds[f] <= g < bounds[f + 1].
        self._start_bounds = np.concatenate([[0], np.cumsum(np.maximum(lengths - block_size, 0))])
        self._window_bounds = np.concatenate([[0], np.cumsum(np.maximum(lengths - 1, 0) // block_size)])
        self.num_windows = int(self._window_bounds[-1])
        if self.num_windows == 0:
            raise UserError(f"The {split} split has no whole window of {block_size} tokens; use a smaller block size or more data.")
        self._rng = np.random.default_rng(seed)
        self.batches = 0
        self.epoch = 0
        self._position = 0

    @property
    def global_batch_size(self) -> int:
        """Windows per call over all ranks."""
        return self.batch_size * self.world_size

    @property
    def batches_per_epoch(self) -> int:
        """Batches in one `iter_epoch` pass (the same on every rank); the last one may be smaller."""
        return -(-self.num_windows // self.global_batch_size)

    def _my_rows(self, rows: np.ndarray) -> np.ndarray:
        """This rank's share of a global micro-batch."""
        return rows[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]

    def next_batch(self) -> Batch:
        """The next (x, y), each int64 of shape (batch_size, block_size) on the loader's device."""
        if self.mode == "random":
            starts = self._my_rows(self._rng.integers(0, self._start_bounds[-1], size=self.global_batch_size))
            files = np.searchsorted(self._start_bounds, starts, side="right") - 1
            offsets = starts - self._start_bounds[files]
        else:
            order = self._my_rows((self._position + np.arange(self.global_batch_size)) % self.num_windows)
            files, offsets = self._locate_windows(order)
            self.epoch += (self._position + self.global_batch_size) // self.num_windows
            self._position = (self._position + self.global_batch_size) % self.num_windows
        self.batches += 1
        return self._gather(files, offsets)

    def __iter__(self) -> Iterator[Batch]:
        return self

    def __next__(self) -> Batch:
        return self.next_batch()

    def iter_epoch(self, max_windows: int | None = None) -> Iterator[Batch]:
        """Exactly one sequential pass over the split's windows (or its first `max_windows`), each
        window once over all ranks, whatever the mode; leaves the training position alone.

        Every rank yields `batches_per_epoch` batches, because sharded models need every rank in
        every forward pass: a rank whose share of the last global batch is empty gets one
        window with every target -100 (ignored by the loss and by evaluation).
        """
        end = self.num_windows if max_windows is None else min(max_windows, self.num_windows)
        for first in range(0, end, self.global_batch_size):
            windows = self._my_rows(np.arange(first, min(first + self.global_batch_size, end)))
            if len(windows):
                yield self._gather(*self._locate_windows(windows))
            else:
                x, y = self._gather(*self._locate_windows(np.zeros(1, dtype=np.int64)))
                yield x, torch.full_like(y, -100)

    def _locate_windows(self, windows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(file, token offset) of the sequential pass's windows number `windows`."""
        files = np.searchsorted(self._window_bounds, windows, side="right") - 1
        return files, (windows - self._window_bounds[files]) * self.block_size

    def _gather(self, files: np.ndarray, offsets: np.ndarray) -> Batch:
        span = self.block_size + 1
        rows = np.empty((len(files), span), dtype=np.int64)
        for row, (file, offset) in enumerate(zip(files.tolist(), offsets.tolist())):
            rows[row] = self._shards[file][offset : offset + span]
        batch = torch.from_numpy(rows)
        if self.device.type == "cuda":
            # One pinned host-to-device copy that overlaps with compute; x and y are cut on the device.
            batch = batch.pin_memory().to(self.device, non_blocking=True)
        else:
            batch = batch.to(self.device)
        return batch[:, :-1].contiguous(), batch[:, 1:].contiguous()

    # ---- resume -------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Where the loader stands, as JSON-able data: the same on every rank, and valid for any
        number of ranks (the stream is shared)."""
        state: dict[str, Any] = {**self._identity(), "batches": self.batches, "epoch": self.epoch}
        if self.mode == "random":
            state["rng"] = self._rng.bit_generator.state
        else:
            state["position"] = self._position
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a saved state; it must come from a loader over the same data and settings."""
        saved = {key: state.get(key) for key in self._identity()}
        if saved != self._identity():
            raise UserError(f"The saved data-loader state is for {saved}, not {self._identity()}; resume with the same shards, split, mode and block size.")
        self.batches, self.epoch = state["batches"], state["epoch"]
        if self.mode == "random":
            self._rng.bit_generator.state = state["rng"]
        else:
            self._position = state["position"]

    def _identity(self) -> dict[str, Any]:
        """What a saved position is only meaningful for."""
        return {
            "split": self.split,
            "split_tokens": self.split_tokens,
            "mode": self.mode,
            "block_size": self.block_size,
        }
