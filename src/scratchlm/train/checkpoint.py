"""Writing checkpoints, and the training state that exact resume needs (see
`scratchlm.checkpoints` for the layout and for reading them back).

A checkpoint is written under a temporary name, every file and the directory are fsynced, and
only then is it renamed into place, so a crash or power loss never leaves a half-written
checkpoint as the latest. Re-saving a step moves the old copy aside first and deletes it only
once the new one is in place. The newest `keep` checkpoints are kept.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from scratchlm.checkpoints import (
    FORMAT_NAME,
    FORMAT_VERSION,
    TRAIN_STATE,
    checkpoint_name,
    list_checkpoints,
)
from scratchlm.config import to_dict
from scratchlm.model.gpt import GPT
from scratchlm.tokenizer.tokenizer import Tokenizer


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


def model_state(model: GPT) -> dict[str, torch.Tensor]:
    """Weights to save: fp32, contiguous, a tied output head stored once (as the embedding)."""
    state = {name: tensor.detach().float().contiguous().cpu() for name, tensor in model.state_dict().items()}
    if model.config.tie_embeddings:
        state.pop("lm_head.weight", None)
    return state


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


def save_checkpoint(run_dir: Path, step: int, model: GPT, tokenizer: Tokenizer, meta: dict[str, Any], train_state: dict[str, Any] | None = None, keep: int = 2) -> Path:
    """Write a checkpoint atomically and delete all but the newest `keep`."""
    directory = Path(run_dir) / "checkpoints"
    final = directory / checkpoint_name(step)
    temporary = directory / f".tmp-{checkpoint_name(step)}"
    if temporary.exists():
        shutil.rmtree(temporary)
    (temporary / "train_state").mkdir(parents=True)
    weights = temporary / "model.safetensors"
    save_file(model_state(model), str(weights))
    # safetensors creates its file private (0600); give it the mode of the files beside it.
    os.chmod(weights, _default_file_mode())
    (temporary / "config.json").write_text(json.dumps(to_dict(model.config), indent=2) + "\n")
    tokenizer.save(temporary / "tokenizer")
    full_meta = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "step": step, **meta}
    (temporary / "meta.json").write_text(json.dumps(full_meta, indent=2) + "\n")
    if train_state is not None:
        torch.save(train_state, temporary / TRAIN_STATE)
    _fsync_tree(temporary)
    previous = directory / f".old-{checkpoint_name(step)}"
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
    _fsync_dir(directory)
    if previous.exists():
        shutil.rmtree(previous)
    for old in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(old)
    return final
