"""Reading checkpoints: find them, check them, load a model from them.

    step_0000500/
      model.safetensors    weights (fp32), HF-GPT-2-style names; a tied head is stored once
      config.json          the GPTConfig
      tokenizer/           the tokenizer, so a checkpoint is self-contained
      meta.json            format version, step, tokens seen, metrics, the whole run config
      train_state/         what exact resume needs:
        state.pt           data-loader position, schedule, clocks, loss scaler, process layout
        optimizer/         optimizer states, a torch.distributed.checkpoint directory (resharded
                           on load, so a run resumes at another number of processes)
        deepspeed/         instead of optimizer/ with the DeepSpeed backend: its engine checkpoint
        rng_rank{r}.pt     RNG states of rank r

Writing them is the training package's job (`scratchlm.train.checkpoint`); this module is what
generation, evaluation and serving use, so inference never imports training.

A run directory's checkpoints are tried newest first: one that cannot be read (a truncated or
garbled file, a config that does not fit its weights) is skipped with a warning that names the
file, and the newest readable one is used. A checkpoint named directly must be readable.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from scratchlm.config import from_dict
from scratchlm.console import info
from scratchlm.errors import UserError
from scratchlm.model.classifier import GPTClassifier
from scratchlm.model.gpt import GPT, GPTConfig
from scratchlm.model.lora import LoraConfig, LoRALinear, apply_lora, merge_lora
from scratchlm.tokenizer.tokenizer import Tokenizer

FORMAT_NAME = "scratchlm-checkpoint"
FORMAT_VERSION = 2
"""Version 2 stores attention as c_q/c_k/c_v and SwiGLU as c_gate/c_fc; version 1 (fused c_attn,
and SwiGLU's gate and up in one c_fc) is read and split on load."""
READABLE_VERSIONS = (1, 2)
PREFIX = "step_"
SHARED_STATE = Path("train_state") / "state.pt"
OPTIMIZER_STATE = Path("train_state") / "optimizer"
LEGACY_TRAIN_STATE = Path("train_state") / "rank0.pt"
"""Before distributed training, one file held the optimizer, data and RNG states."""


def rank_state_file(rank: int) -> Path:
    return Path("train_state") / f"rng_rank{rank}.pt"


def checkpoint_name(step: int) -> str:
    return f"{PREFIX}{step:07d}"


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first (temporary directories are not listed)."""
    directory = Path(run_dir) / "checkpoints"
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and p.name[len(PREFIX) :].isdigit())


# ---- reading each file, with one clear sentence per way it can be broken ---------------------


def _read_json_object(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UserError(f"{path} is missing.")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UserError(f"{path} is not valid JSON ({error}); the file is corrupt.") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} holds a JSON {type(data).__name__}, not an object; the file is corrupt.")
    return data


def read_meta(checkpoint: Path) -> dict[str, Any]:
    meta = _read_json_object(checkpoint / "meta.json")
    if meta.get("format") != FORMAT_NAME or meta.get("version") not in READABLE_VERSIONS:
        raise UserError(f"{checkpoint / 'meta.json'} is format {meta.get('format')!r} version {meta.get('version')!r}; this scratchlm reads {FORMAT_NAME} versions {', '.join(map(str, READABLE_VERSIONS))}.")
    if not isinstance(meta.get("step"), int):
        raise UserError(f"{checkpoint / 'meta.json'} has no step number; the file is corrupt.")
    return meta


def read_model_config(checkpoint: Path) -> GPTConfig:
    data = _read_json_object(checkpoint / "config.json")
    try:
        return from_dict(GPTConfig, data)
    except UserError as error:
        raise UserError(f"{checkpoint / 'config.json'} is not a valid model config: {error}") from None


def _safetensors_layout(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes from a safetensors header, checked against the file's length.

    Reads only the header: a truncated or garbled file is found without loading the weights.
    """
    if not path.is_file():
        raise UserError(f"{path} is missing.")
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise UserError(f"{path} is truncated ({size} bytes); the file is corrupt.")
        (header_length,) = struct.unpack("<Q", head)
        if header_length > min(size - 8, 100 << 20):
            raise UserError(f"{path} is not a safetensors file (its header claims {header_length:,} bytes); the file is corrupt.")
        try:
            header = json.loads(f.read(header_length))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise UserError(f"{path} has an unreadable safetensors header; the file is corrupt.") from None
    if not isinstance(header, dict):
        raise UserError(f"{path} has an unreadable safetensors header; the file is corrupt.")
    shapes, end = {}, 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            shapes[name] = tuple(int(d) for d in entry["shape"])
            end = max(end, int(entry["data_offsets"][1]))
        except (TypeError, KeyError, IndexError, ValueError):
            raise UserError(f"{path} has an unreadable safetensors header entry {name!r}; the file is corrupt.") from None
    if 8 + header_length + end != size:
        raise UserError(f"{path} is {size:,} bytes but its header describes {8 + header_length + end:,}; the file is truncated or corrupt.")
    return shapes


def expected_shapes(config: GPTConfig, lora: dict[str, Any] | None = None, classes: int = 0) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes a checkpoint of `config` stores (a tied head once, as wte), with
    the adapters of a LoRA fine-tune (meta.json's `lora`) beside the base weights, and a
    classifier's head when it has `classes` (meta.json's `labels`)."""
    with torch.device("meta"):
        model = GPT(config)
        if lora:
            apply_lora(model, _lora_config(lora))
    shapes = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    if classes:
        shapes |= {"classifier.weight": (classes, config.n_embd), "classifier.bias": (classes,)}
    if config.tie_embeddings:
        shapes.pop("lm_head.weight")
    return shapes


def split_fused(state: dict[str, torch.Tensor], config: GPTConfig) -> dict[str, torch.Tensor]:
    """Version-1 tensors to version-2 names: fused c_attn → c_q, c_k, c_v; SwiGLU's fused c_fc
    (gate rows, then up rows) → c_gate, c_fc."""
    out: dict[str, torch.Tensor] = {}
    q_width, kv_width = config.n_head * config.head_dim, config.n_kv_head * config.head_dim
    for name, tensor in state.items():
        if ".attn.c_attn." in name:
            for part, piece in zip(("c_q", "c_k", "c_v"), tensor.split([q_width, kv_width, kv_width], dim=0)):
                out[name.replace("c_attn", part)] = piece.contiguous()
        elif config.mlp == "swiglu" and ".mlp.c_fc." in name:
            gate, up = tensor.chunk(2, dim=0)
            out[name.replace("c_fc", "c_gate")], out[name] = gate.contiguous(), up.contiguous()
        else:
            out[name] = tensor
    return out


def _legacy_shapes(shapes: dict[str, tuple[int, ...]], config: GPTConfig) -> dict[str, tuple[int, ...]]:
    return {name: tuple(t.shape) for name, t in split_fused({n: torch.empty(s, device="meta") for n, s in shapes.items()}, config).items()}


@dataclass
class CheckpointInfo:
    """A checkpoint that passed `check_checkpoint`."""

    path: Path
    meta: dict[str, Any]
    config: GPTConfig
    tokenizer: Tokenizer
    train_state: dict[str, Any] | None = None
    """Optimizer, batch position and RNG states, when asked for (resume): read once, here."""


def check_checkpoint(checkpoint: Path, need_train_state: bool = False) -> CheckpointInfo:
    """Read a checkpoint's small files, its tokenizer and the weights' header; a UserError names
    the broken file. The weights are not loaded here; `need_train_state` also loads train_state/
    (resume needs it)."""
    meta = read_meta(checkpoint)
    config = read_model_config(checkpoint)
    weights = checkpoint / "model.safetensors"
    shapes = _safetensors_layout(weights)
    if meta["version"] == 1:
        shapes = _legacy_shapes(shapes, config)
    labels = meta.get("labels")
    expected = expected_shapes(config, meta.get("lora"), len(labels) if isinstance(labels, list) else 0)
    if shapes != expected:
        wrong = sorted(set(shapes) ^ set(expected)) or sorted(n for n in expected if shapes[n] != expected[n])
        detail = f"{wrong[0]}: stored {shapes.get(wrong[0])}, config.json implies {expected.get(wrong[0])}"
        raise UserError(f"{weights} does not fit {checkpoint / 'config.json'} ({detail}); one of the two files is corrupt or from another model.")
    tokenizer = load_checkpoint_tokenizer(checkpoint)
    train_state = load_train_state(checkpoint) if need_train_state else None
    return CheckpointInfo(checkpoint, meta, config, tokenizer, train_state)


def _load_torch_file(path: Path, checkpoint: Path) -> Any:
    if not path.is_file():
        raise UserError(f"{path} is missing, so {checkpoint} cannot be resumed; start a new run from its weights with train.init_from instead.")
    try:
        # Our own file, holding optimizer tensors, RNG states and plain data.
        return torch.load(path, weights_only=False, map_location="cpu")
    except Exception as error:  # noqa: BLE001 - torch raises many types for a damaged file
        raise UserError(f"{path} cannot be read ({type(error).__name__}: {str(error)[:120]}); the file is corrupt.") from None


def _check_distributed_checkpoint(directory: Path, checkpoint: Path) -> None:
    """A torch.distributed.checkpoint directory's index is readable and every file it points
    into is long enough: a lost or truncated shard is named now, not midway through a resume."""
    from torch.distributed.checkpoint import FileSystemReader

    if not (directory / ".metadata").is_file():
        raise UserError(f"{directory / '.metadata'} is missing, so {checkpoint} cannot be resumed; start a new run from its weights with train.init_from instead.")
    try:
        storage = FileSystemReader(str(directory)).read_metadata().storage_data
    except Exception as error:  # noqa: BLE001 - pickle and torch raise many types for a damaged file
        raise UserError(f"{directory / '.metadata'} cannot be read ({type(error).__name__}); the file is corrupt.") from None
    needed: dict[str, int] = {}
    for item in storage.values():
        needed[item.relative_path] = max(needed.get(item.relative_path, 0), item.offset + item.length)
    for name, length in sorted(needed.items()):
        path = directory / name
        size = path.stat().st_size if path.is_file() else -1
        if size < length:
            state = "missing" if size < 0 else f"{size:,} bytes where its index needs {length:,}"
            raise UserError(f"{path} is {state}: the checkpoint's optimizer state is incomplete, so {checkpoint} cannot be resumed.")


def load_train_state(checkpoint: Path) -> dict[str, Any]:
    """The shared state, with `rng` mapping each saving rank to its RNG states, and either
    `optimizer_dir` (the sharded optimizer states) or, from a checkpoint of an older version,
    `optimizer` (one process's optimizer state dict)."""
    if not (checkpoint / SHARED_STATE).exists() and (checkpoint / LEGACY_TRAIN_STATE).exists():
        state = _load_torch_file(checkpoint / LEGACY_TRAIN_STATE, checkpoint)
        if not isinstance(state, dict) or not {"optimizer", "loader", "rng"} <= set(state):
            raise UserError(f"{checkpoint / LEGACY_TRAIN_STATE} is not a scratchlm training state; the file is corrupt.")
        return {**state, "rng": {0: state["rng"]}, "layout": {"world_size": 1}}
    state = _load_torch_file(checkpoint / SHARED_STATE, checkpoint)
    if not isinstance(state, dict) or not {"loader", "layout"} <= set(state):
        raise UserError(f"{checkpoint / SHARED_STATE} is not a scratchlm training state; the file is corrupt.")
    if state["layout"].get("backend", "torch") == "deepspeed":
        if not (checkpoint / SHARED_STATE.parent / "deepspeed" / "latest").is_file():
            raise UserError(f"{checkpoint / SHARED_STATE.parent / 'deepspeed'} is missing or incomplete, so {checkpoint} cannot be resumed; start a new run from its weights with train.init_from instead.")
    else:
        _check_distributed_checkpoint(checkpoint / OPTIMIZER_STATE, checkpoint)
    rng = {}
    for rank in range(state["layout"]["world_size"]):
        saved = _load_torch_file(checkpoint / rank_state_file(rank), checkpoint)
        if not isinstance(saved, dict) or "rng" not in saved:
            raise UserError(f"{checkpoint / rank_state_file(rank)} is not a scratchlm RNG state; the file is corrupt.")
        rng[rank] = saved["rng"]
    return {**state, "rng": rng, "optimizer_dir": checkpoint / OPTIMIZER_STATE}


def find_checkpoint(path: str | Path, need_train_state: bool = False) -> CheckpointInfo:
    """The checkpoint at `path`, or a run directory's newest readable one (with a warning for
    each newer one that could not be read)."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"No checkpoint at {path}; pass a checkpoint directory (with model.safetensors) or a run directory that has checkpoints/.")
    if (path / "model.safetensors").exists() or (path / "meta.json").exists():
        return check_checkpoint(path, need_train_state)
    candidates = list_checkpoints(path)
    if not candidates:
        raise UserError(f"No checkpoint at {path}; pass a checkpoint directory (with model.safetensors) or a run directory that has checkpoints/.")
    problems: list[str] = []
    for candidate in reversed(candidates):
        try:
            found = check_checkpoint(candidate, need_train_state)
        except UserError as error:
            problems.append(str(error))
            info(f"[yellow]warning:[/yellow] skipping {candidate.name}: {error}")
            continue
        if problems:
            info(f"[yellow]warning:[/yellow] using {candidate} instead, the newest readable checkpoint")
        return found
    raise UserError(f"No readable checkpoint in {path}: {problems[0]}")


def _lora_config(stored: Any) -> LoraConfig:
    try:
        return LoraConfig(**stored)
    except TypeError:
        raise UserError(f"meta.json's lora settings {stored!r} are not valid; the file is corrupt.") from None


def load_weights(model: GPT, found: CheckpointInfo) -> None:
    """Load a checked checkpoint's weights into `model` (same config).

    A LoRA fine-tune's checkpoint loads into a model that already has its adapters (resuming
    it); into a plain model its adapters are folded into the weights, which leaves an ordinary
    model with every weight trainable."""
    weights = found.path / "model.safetensors"
    try:
        state = load_file(str(weights))
    except Exception as error:  # noqa: BLE001 - safetensors raises its own error types
        raise UserError(f"{weights} cannot be read ({str(error)[:120]}); the file is corrupt.") from None
    if found.meta["version"] == 1:
        state = split_fused(state, found.config)
    if model.config.tie_embeddings:
        state["lm_head.weight"] = state["transformer.wte.weight"]
    if not hasattr(model, "classifier"):
        # A classifier's checkpoint holds a whole GPT: a plain model takes it without the head.
        state = {name: tensor for name, tensor in state.items() if not name.startswith("classifier.")}
    lora = found.meta.get("lora")
    adapted = any(isinstance(m, LoRALinear) for m in model.modules())
    if lora and not adapted:
        apply_lora(model, _lora_config(lora))
    model.load_state_dict(state, strict=True)
    if lora and not adapted:
        merge_lora(model)
        for parameter in model.parameters():
            parameter.requires_grad_(True)


def load_model(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> tuple[GPT, Tokenizer, dict[str, Any]]:
    """A trained model in eval mode, its tokenizer and its meta, from a checkpoint or run
    directory; says which checkpoint it loaded. `dtype` is the weights' dtype for inference
    (checkpoints store fp32)."""
    found = find_checkpoint(path)
    model = GPT(found.config)
    load_weights(model, found)
    precision = "" if dtype == torch.float32 else f", weights in {str(dtype).removeprefix('torch.')}"
    info(f"loaded {found.path} (step {found.meta['step']}{precision})")
    return model.to(device=device, dtype=dtype).eval(), found.tokenizer, found.meta


def load_classifier(path: str | Path, device: str | torch.device = "cpu") -> tuple[GPTClassifier, Tokenizer, dict[str, Any]]:
    """A classifier from `finetune classify` in eval mode, its tokenizer and meta (labels, pooling)."""
    found = find_checkpoint(path)
    labels = found.meta.get("labels")
    if not isinstance(labels, list) or not labels:
        raise UserError(f"{found.path} is not a classifier (its meta.json names no labels); train one with `scratchlm finetune classify`.")
    model = GPTClassifier(found.config, len(labels), found.meta.get("pooling", "last"))
    load_weights(model, found)
    info(f"loaded {found.path} (step {found.meta['step']}; {len(labels)} classes)")
    return model.to(device).eval(), found.tokenizer, found.meta


def load_checkpoint_tokenizer(checkpoint: Path) -> Tokenizer:
    if not (checkpoint / "tokenizer").is_dir():
        raise UserError(f"{checkpoint / 'tokenizer'} is missing.")
    try:
        return Tokenizer.load(checkpoint / "tokenizer")
    except UserError:
        raise
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise UserError(f"{checkpoint / 'tokenizer'} cannot be read ({error}); the tokenizer files are corrupt.") from None
