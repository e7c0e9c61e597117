"""DeepSpeed ZeRO as the alternative to PyTorch's own engines (`parallel.backend = "deepspeed"`).

The run is the same run: our model, our AdamW (DeepSpeed wraps it: ZeRO-1 shards its states,
ZeRO-2 also the gradients, ZeRO-3 also the parameters), our warmup + cosine schedule (the
Trainer sets each step's learning rate on the wrapped optimizer), our gradient clipping value,
our micro-batches and accumulation. DeepSpeed does the accumulation boundary (its `backward`
divides by the accumulation steps; its `step` updates only on the last micro-batch), the
clipping and the communication.

Precision: float32, or bfloat16 either as DeepSpeed's own mixed precision (bf16 parameters with
fp32 master weights; `parallel.mixed_precision`, the default) or as autocast over fp32
parameters, as the torch backend runs. float16 is refused (DeepSpeed's loss scaler and ours
would both scale).

Checkpoints hold the full fp32 weights (gathered from the ZeRO shards, so every scratchlm command
reads them) and DeepSpeed's own checkpoint of the engine under `train_state/deepspeed/`, which
resumes at the same number of processes.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import warnings
from pathlib import Path
from typing import Any

import torch

from scratchlm.errors import UserError
from scratchlm.model.gpt import GPT
from scratchlm.train.distributed import Distributed
from scratchlm.train.optim import make_optimizer
from scratchlm.train.settings import RunConfig

TAG = "engine"


def require_deepspeed() -> None:
    if importlib.util.find_spec("deepspeed") is None:
        raise UserError("parallel.backend = \"deepspeed\" needs DeepSpeed: pip install 'scratchlm[deepspeed]' (or pip install deepspeed).")


def _import_deepspeed(device: torch.device) -> Any:
    if device.type == "cpu":
        # Without it DeepSpeed guesses the accelerator, and says so on every rank.
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    require_deepspeed()
    import deepspeed

    # DeepSpeed's collectives call torch's deprecated names; the warnings say nothing to a user.
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"deepspeed\..*")
    warnings.filterwarnings("ignore", message=r".*(all_gather_into_tensor|reduce_scatter_tensor).*")
    return deepspeed


def is_engine(module: Any) -> bool:
    """Whether `module` is a DeepSpeed engine (without importing DeepSpeed when it is not in use)."""
    deepspeed = sys.modules.get("deepspeed")
    return deepspeed is not None and isinstance(module, deepspeed.DeepSpeedEngine)


def engine_config(config: RunConfig, dist_info: Distributed, dtype: torch.dtype, grad_accum: int) -> dict[str, Any]:
    """DeepSpeed's JSON config from ours, then the user's `parallel.deepspeed_config` file over it."""
    settings: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": config.train.micro_batch_size,
        "gradient_accumulation_steps": grad_accum,
        "train_batch_size": config.train.micro_batch_size * grad_accum * dist_info.world_size,
        "gradient_clipping": config.optim.grad_clip,
        "zero_optimization": {"stage": config.parallel.zero_stage},
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }
    if dtype == torch.bfloat16 and config.parallel.mixed_precision:
        settings["bf16"] = {"enabled": True}
    if config.parallel.deepspeed_config:
        path = Path(config.parallel.deepspeed_config)
        try:
            extra = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            raise UserError(f"parallel.deepspeed_config {path} cannot be read as JSON ({error}); pass a DeepSpeed JSON config file.") from None
        settings = _merge(settings, extra)
    return settings


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        merged[key] = _merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
    return merged


def make_engine(model: GPT, config: RunConfig, dist_info: Distributed, dtype: torch.dtype, grad_accum: int) -> tuple[Any, torch.optim.Optimizer]:
    """(the engine, its wrapped optimizer) around `model` and our AdamW."""
    if dtype == torch.float16:
        raise UserError("parallel.backend = \"deepspeed\" runs float32 or bfloat16 here; set train.dtype = \"bfloat16\" (or \"float32\").")
    if config.train.fp8:
        raise UserError("train.fp8 is not supported with parallel.backend = \"deepspeed\" here; use the torch backend or set train.fp8 = false.")
    if config.train.compile:
        raise UserError("train.compile is not supported with parallel.backend = \"deepspeed\" here; set train.compile = false (or use the torch backend).")
    deepspeed = _import_deepspeed(dist_info.device)
    deepspeed.init_distributed(dist_backend="nccl" if dist_info.device.type == "cuda" else "gloo")
    optimizer = make_optimizer(model, config.optim, dist_info.device.type)
    engine, wrapped, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=engine_config(config, dist_info, dtype, grad_accum))
    return engine, wrapped


def full_weights(engine: Any, dist_info: Distributed) -> dict[str, torch.Tensor]:
    """The fp32 master weights gathered from the ZeRO shards, on rank 0 (empty elsewhere);
    every rank must call it."""
    from deepspeed.utils import safe_get_full_fp32_param

    state = {}
    for name, parameter in engine.module.named_parameters():
        full = safe_get_full_fp32_param(parameter)
        if dist_info.is_main:
            state[name] = full.detach().float().contiguous().cpu()
    return state


def save_engine(engine: Any, train_state_dir: Path) -> None:
    """DeepSpeed's checkpoint of the engine (its ZeRO shards of the optimizer, per rank)."""
    engine.save_checkpoint(str(train_state_dir / "deepspeed"), tag=TAG)


def load_engine(engine: Any, train_state_dir: Path) -> None:
    path, _ = engine.load_checkpoint(str(train_state_dir / "deepspeed"), tag=TAG, load_optimizer_states=True, load_lr_scheduler_states=False)
    if path is None:
        raise UserError(f"DeepSpeed found no checkpoint in {train_state_dir / 'deepspeed'}; the checkpoint is incomplete.")
