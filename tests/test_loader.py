"""The batch loader: windows come from the shards, ranks split the work, and resume is exact."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import synthetic_text

from scratchlm.data.documents import Document
from scratchlm.data.loader import TokenLoader
from scratchlm.data.shards import ShardConfig, open_shard, split_files, write_shards
from scratchlm.errors import UserError
from scratchlm.tokenizer.train import TokenizerTrainConfig, train_from_texts

BLOCK = 16


@pytest.fixture(scope="module")
def directory(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """About 16,000 train tokens in 15 files of uneven length, and a val split of two files."""
    tokenizer = train_from_texts([synthetic_text(seed, 2000) for seed in range(2)], TokenizerTrainConfig(vocab_size=400, workers=1))
    docs = [Document(f"d{i}", synthetic_text(50 + i, 30 + 17 * i)) for i in range(30)]
    output = tmp_path_factory.mktemp("loader") / "shards"
    write_shards(docs, tokenizer, output, ShardConfig(shard_tokens=1500, val_fraction=0.1, workers=2))
    return output


def shards_of(directory: Path, split: str = "train") -> list[np.ndarray]:
    return [np.asarray(open_shard(path)) for path in split_files(directory, split)]


def all_windows(directory: Path, block: int = BLOCK) -> Counter:
    """Every non-overlapping (x + next token) window of every file, computed independently of the loader."""
    return Counter(
        tuple(shard[start : start + block + 1].tolist()) for shard in shards_of(directory) for start in range(0, len(shard) - block, block)
    )


def rows(x: torch.Tensor, y: torch.Tensor) -> list[tuple[int, ...]]:
    return [tuple(row) for row in torch.cat([x, y[:, -1:]], dim=1).tolist()]


def test_batches_are_shifted_windows_of_one_file(directory: Path) -> None:
    loader = TokenLoader(directory, "train", batch_size=8, block_size=BLOCK, seed=1)
    x, y = loader.next_batch()
    assert x.shape == y.shape == (8, BLOCK) and x.dtype == y.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    files = [np.lib.stride_tricks.sliding_window_view(shard, BLOCK + 1) for shard in shards_of(directory)]
    for row in rows(x, y):
        assert any((windows == np.array(row)).all(axis=1).any() for windows in files)
    assert sum(len(shard) for shard in shards_of(directory)) == loader.split_tokens
    assert len(split_files(directory, "train")) > 2


def test_random_mode_is_seeded_and_ranks_split_the_global_batch(directory: Path) -> None:
    def draws(**kwargs: int) -> list[torch.Tensor]:
        loader = TokenLoader(directory, "train", batch_size=4, block_size=BLOCK, **kwargs)
        return [next(loader)[0] for _ in range(3)]

    same = draws(seed=5)
    assert all(torch.equal(a, b) for a, b in zip(same, draws(seed=5)))
    assert not torch.equal(same[0], draws(seed=6)[0])
    assert not torch.equal(draws(seed=5, rank=0, world_size=2)[0], draws(seed=5, rank=1, world_size=2)[0])


@pytest.mark.parametrize("mode", ["random", "sequential"])
def test_two_ranks_draw_what_one_process_draws_in_two_micro_batches(directory: Path, mode: str) -> None:
    """The data of a step does not depend on how it is split over ranks (layout-independent losses)."""
    single = TokenLoader(directory, "train", batch_size=3, block_size=BLOCK, mode=mode, seed=4)
    ranks = [TokenLoader(directory, "train", batch_size=3, block_size=BLOCK, mode=mode, seed=4, rank=r, world_size=2) for r in range(2)]
    for _ in range(40):  # several sequential epochs
        want = rows(*single.next_batch()) + rows(*single.next_batch())
        got = [row for loader in ranks for row in rows(*loader.next_batch())]
        assert got == want
    assert ranks[0].state_dict() == ranks[1].state_dict() == {**single.state_dict(), "batches": 40}


def test_sequential_ranks_cover_each_window_once(directory: Path) -> None:
    expected = all_windows(directory)
    seen: Counter = Counter()
    loaders = [TokenLoader(directory, "train", batch_size=5, block_size=BLOCK, mode="sequential", rank=r, world_size=2) for r in range(2)]
    for loader in loaders:
        batches = list(loader.iter_epoch())
        assert len(batches) == loader.batches_per_epoch
        # A rank left without windows in the last global batch gets one fully ignored row.
        seen.update(row for x, y in batches if (y >= 0).all() for row in rows(x, y))
        assert all((y >= 0).all() or (y == -100).all() for _, y in batches)
    assert seen == expected
    assert all(loader.num_windows == sum(expected.values()) for loader in loaders)


def test_sequential_training_wraps_into_the_next_epoch(directory: Path) -> None:
    loader = TokenLoader(directory, "train", batch_size=6, block_size=BLOCK, mode="sequential")
    one_pass = [row for x, y in loader.iter_epoch() for row in rows(x, y)]
    assert loader.num_windows % 6  # so that the last batch of the pass wraps around
    drawn: list[tuple[int, ...]] = []
    while loader.epoch == 0:
        drawn.extend(rows(*loader.next_batch()))
    assert loader.batches == loader.batches_per_epoch
    assert drawn[: len(one_pass)] == one_pass
    assert drawn[len(one_pass) :] == one_pass[: len(drawn) - len(one_pass)]


@pytest.mark.parametrize("mode", ["random", "sequential"])
def test_resume_equals_uninterrupted(directory: Path, mode: str) -> None:
    def loader() -> TokenLoader:
        return TokenLoader(directory, "train", batch_size=9, block_size=BLOCK, mode=mode, seed=2, rank=1, world_size=2)

    uninterrupted = loader()
    reference = [uninterrupted.next_batch() for _ in range(60)]  # sequential mode passes several epochs
    interrupted = loader()
    for _ in range(25):
        interrupted.next_batch()
    state = json.loads(json.dumps(interrupted.state_dict()))
    resumed = loader()
    resumed.load_state_dict(state)
    for x_ref, y_ref in reference[25:]:
        x, y = resumed.next_batch()
        assert torch.equal(x, x_ref) and torch.equal(y, y_ref)
    assert resumed.batches == uninterrupted.batches and resumed.epoch == uninterrupted.epoch


def test_state_from_other_settings_is_refused(directory: Path) -> None:
    state = TokenLoader(directory, "train", batch_size=2, block_size=BLOCK).state_dict()
    with pytest.raises(UserError, match="resume with the same shards"):
        TokenLoader(directory, "train", batch_size=2, block_size=BLOCK * 2).load_state_dict(state)


def test_split_too_small_for_block_size(directory: Path) -> None:
    largest = max(len(shard) for shard in shards_of(directory, "val"))
    TokenLoader(directory, "val", batch_size=1, block_size=largest - 1)
    with pytest.raises(UserError, match=f"too small for block_size {largest}: .* has {largest:,}; use a smaller block size or more data"):
        TokenLoader(directory, "val", batch_size=1, block_size=largest)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"mode": "shuffled"}, "Unknown loader mode"),
        ({"rank": 2, "world_size": 2}, "rank 2 is outside"),
        ({"batch_size": 0}, "at least 1"),
    ],
)
def test_bad_settings(directory: Path, kwargs: dict, match: str) -> None:
    with pytest.raises(UserError, match=match):
        TokenLoader(directory, "train", **{"batch_size": 2, "block_size": BLOCK, **kwargs})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_batches_match_cpu(directory: Path) -> None:
    cpu = TokenLoader(directory, "train", batch_size=4, block_size=BLOCK, seed=3).next_batch()
    cuda = TokenLoader(directory, "train", batch_size=4, block_size=BLOCK, seed=3, device="cuda").next_batch()
    assert cuda[0].is_cuda and all(torch.equal(a, b.cpu()) for a, b in zip(cpu, cuda))
