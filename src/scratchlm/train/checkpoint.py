"""Checkpoints: everything needed to use a model, and everything needed to resume its training.

    step_000500/
      model.safetensors    weights (fp32), HF-GPT-2-style names; a tied head is stored once
      config.json          the GPTConfig
      tokenizer/           the tokenizer, so a checkpoint is self-contained
      meta.json            format version, step, tokens seen, metrics, the whole run config
      train_state/         rank{r}.pt: optimizer, data-loader position and RNG states per rank

A checkpoint is written under a temporary name and renamed when complete, so a crash never
leaves a half-written checkpoint as the latest; the newest `keep` checkpoints are kept.
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
from safetensors.torch import load_file, save_file

from scratchlm.config import from_dict, to_dict
from scratchlm.errors import UserError
from scratchlm.model.gpt import GPT, GPTConfig
from scratchlm.tokenizer.tokenizer import Tokenizer

FORMAT_NAME = "scratchlm-checkpoint"
FORMAT_VERSION = 1
PREFIX = "step_"


def checkpoint_name(step: int) -> str:
    return f"{PREFIX}{step:07d}"


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first (temporary directories are not listed)."""
    directory = Path(run_dir) / "checkpoints"
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and (p / "meta.json").is_file())


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


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


def save_checkpoint(run_dir: Path, step: int, model: GPT, tokenizer: Tokenizer, meta: dict[str, Any], train_state: dict[str, Any] | None = None, keep: int = 2) -> Path:
    """Write a checkpoint atomically and delete all but the newest `keep`."""
    directory = Path(run_dir) / "checkpoints"
    final = directory / checkpoint_name(step)
    temporary = directory / f".tmp-{checkpoint_name(step)}"
    if temporary.exists():
        shutil.rmtree(temporary)
    (temporary / "train_state").mkdir(parents=True)
    save_file(model_state(model), str(temporary / "model.safetensors"))
    (temporary / "config.json").write_text(json.dumps(to_dict(model.config), indent=2) + "\n")
    tokenizer.save(temporary / "tokenizer")
    full_meta = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "step": step, **meta}
    (temporary / "meta.json").write_text(json.dumps(full_meta, indent=2) + "\n")
    if train_state is not None:
        torch.save(train_state, temporary / "train_state" / "rank0.pt")
    if final.exists():
        shutil.rmtree(final)
    os.replace(temporary, final)
    for old in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(old)
    return final


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory, or a run directory (its latest checkpoint)."""
    path = Path(path)
    if (path / "meta.json").is_file() and (path / "model.safetensors").is_file():
        return path
    latest = latest_checkpoint(path) if path.is_dir() else None
    if latest is None:
        raise UserError(f"No checkpoint at {path}; pass a checkpoint directory (with model.safetensors) or a run directory that has checkpoints/.")
    return latest


def read_meta(checkpoint: Path) -> dict[str, Any]:
    meta = json.loads((checkpoint / "meta.json").read_text())
    if meta.get("format") != FORMAT_NAME or meta.get("version") != FORMAT_VERSION:
        raise UserError(f"{checkpoint} is format {meta.get('format')} version {meta.get('version')}; this scratchlm reads {FORMAT_NAME} version {FORMAT_VERSION}.")
    return meta


def load_weights(model: GPT, checkpoint: Path) -> None:
    state = load_file(str(checkpoint / "model.safetensors"))
    if model.config.tie_embeddings:
        state["lm_head.weight"] = state["transformer.wte.weight"]
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise UserError(f"{checkpoint} does not fit its config.json (missing {missing[:3]}, unexpected {unexpected[:3]}); the checkpoint is corrupt.")


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[GPT, Tokenizer, dict[str, Any]]:
    """A trained model in eval mode, its tokenizer and its meta, from a checkpoint or run directory."""
    checkpoint = resolve_checkpoint(path)
    meta = read_meta(checkpoint)
    config = from_dict(GPTConfig, json.loads((checkpoint / "config.json").read_text()))
    model = GPT(config)
    load_weights(model, checkpoint)
    tokenizer = Tokenizer.load(checkpoint / "tokenizer")
    return model.to(device).eval(), tokenizer, meta


def load_train_state(checkpoint: Path) -> dict[str, Any]:
    path = checkpoint / "train_state" / "rank0.pt"
    if not path.is_file():
        raise UserError(f"{checkpoint} has no training state to resume from ({path} is missing); start a new run instead.")
    return torch.load(path, weights_only=False)

