"""Writing checkpoints, and the training state that exact resume needs (see
`scratchlm.checkpoints` for the layout and for reading them back).

A checkpoint is written under a temporary name, every file and the directory are fsynced, and
only then is it renamed into place, so a crash or power loss never leaves a half-written
checkpoint as the latest. Re-saving a step moves the old copy aside first and deletes it only
once the new one is in place. The newest `keep` checkpoints are kept.

Over several processes: the weights are gathered into one full fp32 file (the same file a
single process writes, so generation, evaluation and conversion never care how a model was
trained); the optimizer states go through `torch.distributed.checkpoint`, each rank writing its
own shards, which a run at any other number of processes reads back resharded; each rank writes
its RNG states; rank 0 writes everything else and renames the checkpoint into place. Every rank
must see the same `train.out_dir` (a shared filesystem across machines).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import shutil
import signal
import threading
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from scratchlm.checkpoints import (
    FORMAT_NAME,
    FORMAT_VERSION,
    SHARED_STATE,
    checkpoint_name,
    list_checkpoints,
    rank_state_file,
)
from scratchlm.config import to_dict
from scratchlm.model.gpt import GPT, GPTConfig
from scratchlm.tokenizer.tokenizer import Tokenizer
from scratchlm.train.distributed import Distributed


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def full_weights(model: GPT, dist_info: Distributed | None) -> dict[str, torch.Tensor]:
    """The whole model's weights on rank 0, in fp32 on the CPU, a tied head stored once (as the
    embedding); an empty dict on the other ranks. Gathers FSDP and tensor-parallel shards: every
    rank must call it."""
    if dist_info is not None and dist_info.enabled:
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
        )

        # Gathering a 2-D (FSDP × TP) tensor takes two all-gathers, which torch logs as a warning
        # on every rank at every checkpoint; it is the expected cost, not a problem.
        redistribute_log = logging.getLogger("torch.distributed.tensor._redistribute")
        level = redistribute_log.level
        redistribute_log.setLevel(logging.ERROR)
        try:
            state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        finally:
            redistribute_log.setLevel(level)
        if not dist_info.is_main:
            return {}
    else:
        state = model.state_dict()
    return _without_tied_head({name: tensor.detach().float().contiguous().cpu() for name, tensor in state.items()}, model)


def _without_tied_head(state: dict[str, torch.Tensor], model: GPT) -> dict[str, torch.Tensor]:
    if model.config.tie_embeddings:
        state.pop("lm_head.weight", None)
    return state


@contextlib.contextmanager
def _single_process_is_intended() -> Iterator[None]:
    """torch.distributed.checkpoint warns whenever it runs without a process group, which is
    how a single-process run saves: nothing for the user to act on."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def save_optimizer(model: GPT, optimizer: torch.optim.Optimizer, directory: Path) -> None:
    """Each rank writes its shards of the optimizer states, keyed by parameter name."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    with _single_process_is_intended():
        dcp.save({"optimizer": get_optimizer_state_dict(model, optimizer)}, checkpoint_id=str(directory), no_dist=not torch.distributed.is_initialized())


def load_optimizer(model: GPT, optimizer: torch.optim.Optimizer, directory: Path) -> None:
    """Read optimizer states saved by `save_optimizer` at any number of processes into this
    run's (possibly differently sharded) optimizer."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        get_optimizer_state_dict,
        set_optimizer_state_dict,
    )

    # The template has this run's shapes and shards; DCP fills it from whatever layout saved it.
    state = {"optimizer": get_optimizer_state_dict(model, optimizer)}
    with _single_process_is_intended():
        dcp.load(state, checkpoint_id=str(directory), no_dist=not torch.distributed.is_initialized())
    set_optimizer_state_dict(model, optimizer, state["optimizer"])


def _default_file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _fsync_tree(directory: Path) -> None:
    """Flush every file under `directory`, and the directories themselves, to disk."""
    for root, _, files in os.walk(directory):
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                os.fsync(f.fileno())
        _fsync_dir(Path(root))


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _interrupts_deferred() -> Iterator[None]:
    """Ctrl-C while a checkpoint is written takes effect once it is written: the checkpoint is
    whole, and every rank finishes its part of it (torch.distributed.checkpoint would otherwise
    turn the interrupt into an error of its own)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received:
        raise KeyboardInterrupt


def save_checkpoint(
    run_dir: Path,
    step: int,
    model: GPT,
    tokenizer: Tokenizer,
    meta: dict[str, Any],
    train_state: dict[str, Any] | None = None,
    keep: int = 2,
    *,
    write_state: Callable[[Path], None] | None = None,
    weights: dict[str, torch.Tensor] | None = None,
    dist_info: Distributed | None = None,
) -> Path:
    """Write a checkpoint atomically and delete all but the newest `keep`; every rank calls it.

    `train_state` (what every rank shares: data position, schedule, clocks) and what
    `write_state(train_state_dir)` writes on every rank (the optimizer's states) make it
    resumable; each rank's RNG states are added. `weights` are the full weights when the caller
    gathered them itself (DeepSpeed); by default they are gathered from `model`.
    """
    with _interrupts_deferred():
        return _save_checkpoint(run_dir, step, model, tokenizer, meta, train_state, keep, write_state, weights, dist_info)


def _save_checkpoint(
    run_dir: Path,
    step: int,
    model: GPT,
    tokenizer: Tokenizer,
    meta: dict[str, Any],
    train_state: dict[str, Any] | None,
    keep: int,
    write_state: Callable[[Path], None] | None,
    weights: dict[str, torch.Tensor] | None,
    dist_info: Distributed | None,
) -> Path:
    directory = Path(run_dir) / "checkpoints"
    final = directory / checkpoint_name(step)
    temporary = directory / f".tmp-{checkpoint_name(step)}"
    main = dist_info is None or dist_info.is_main
    if main:
        if temporary.exists():
            shutil.rmtree(temporary)
        (temporary / SHARED_STATE).parent.mkdir(parents=True)
    weights = full_weights(model, dist_info) if weights is None else _without_tied_head(weights, model)
    if dist_info is not None:
        dist_info.barrier()  # the temporary directory exists for every rank
    if train_state is not None:
        if write_state is not None:
            write_state(temporary / SHARED_STATE.parent)
        torch.save({"rng": rng_state()}, temporary / rank_state_file(dist_info.rank if dist_info else 0))
    if dist_info is not None:
        dist_info.barrier()  # every rank's files are written
    if main:
        _write_and_swap(temporary, final, weights, model.config, tokenizer, {"format": FORMAT_NAME, "version": FORMAT_VERSION, "step": step, **meta}, train_state)
        for old in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
            shutil.rmtree(old)
    if dist_info is not None:
        dist_info.barrier()  # nobody moves on before the checkpoint is in place
    return final


def write_checkpoint_dir(path: Path, weights: dict[str, torch.Tensor], config: GPTConfig, tokenizer: Tokenizer, meta: dict[str, Any]) -> Path:
    """Write a standalone checkpoint directory (weights, config, tokenizer, meta; no training
    state) at `path`, atomically as training writes one, replacing a checkpoint already there.

    `meta` adds to (or overrides) format, version and step 0. A tied head is stored once.
    """
    path = Path(path)
    temporary = path.parent / f".tmp-{path.name}"
    if temporary.exists():
        shutil.rmtree(temporary)
    (temporary / SHARED_STATE).parent.mkdir(parents=True)
    if config.tie_embeddings:
        weights = {name: tensor for name, tensor in weights.items() if name != "lm_head.weight"}
    try:
        _write_and_swap(temporary, path, weights, config, tokenizer, {"format": FORMAT_NAME, "version": FORMAT_VERSION, "step": 0, **meta}, None)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    return path


def _write_and_swap(temporary: Path, final: Path, weights: dict[str, torch.Tensor], config: GPTConfig, tokenizer: Tokenizer, meta: dict[str, Any], train_state: dict[str, Any] | None) -> None:
    save_weights(weights, temporary / "model.safetensors")
    (temporary / "config.json").write_text(json.dumps(to_dict(config), indent=2) + "\n")
    tokenizer.save(temporary / "tokenizer")
    (temporary / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    if train_state is not None:
        torch.save(train_state, temporary / SHARED_STATE)
    else:
        shutil.rmtree(temporary / SHARED_STATE.parent)
    replace_directory(temporary, final)


def save_weights(weights: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    """Write tensors as a safetensors file with the mode of the files beside it (safetensors
    alone creates it private, 0600)."""
    save_file(weights, str(path), metadata=metadata)
    os.chmod(path, _default_file_mode())


def replace_directory(temporary: Path, final: Path) -> None:
    """Sync the finished directory `temporary` to disk and rename it to `final`. A `final`
    already there is moved aside first and deleted only once the new one is in place, so a crash
    leaves one of the two whole."""
    _fsync_tree(temporary)
    previous = final.parent / f".old-{final.name}"
    if final.exists():
        if previous.exists():
            shutil.rmtree(previous)
        os.replace(final, previous)
    try:
        os.replace(temporary, final)
    except OSError:
        if previous.exists():
            os.replace(previous, final)  # the old copy goes back in place
        raise
    _fsync_dir(final.parent)
    if previous.exists():
        shutil.rmtree(previous)
