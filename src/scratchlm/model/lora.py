"""LoRA (Hu et al. 2021): low-rank adapters on chosen linear layers, the base weights frozen.

A wrapped layer computes W·x + b + (α/r)·B·A·dropout(x), with A (r × in) random and B (out × r)
zero at the start, so a freshly wrapped model is exactly the base model. Only A and B train:
r·(in + out) parameters per layer instead of in·out.

`LoRALinear` is an `nn.Linear` that keeps the base layer's own `weight` and `bias` Parameters,
so every base tensor keeps its name (`transformer.h.0.attn.c_q.weight`) and the adapters add
`...c_q.lora_A` and `...c_q.lora_B` beside them. A checkpoint of a LoRA run stores both (and its
meta.json the `LoraConfig`), so it resumes exactly and loads anywhere; `merge_lora` folds the
adapters into the weights (what inference and `convert to-hf` use), and `adapter_state_dict` is
the adapters alone, which `save_adapter` writes with the hash of the base weights they belong to.
"""

from __future__ import annotations

import fnmatch
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from scratchlm.errors import UserError
from scratchlm.paths import file_sha256


@dataclass
class LoraConfig:
    """Low-rank adapters: which linear layers get them, and their size."""

    rank: int = 0
    """Rank r of each adapter; 0 turns LoRA off (every weight trains)."""
    alpha: float = 16.0
    """The adapters' output is scaled by alpha / rank."""
    dropout: float = 0.0
    """Dropout on the adapters' input during training."""
    targets: list[str] = field(default_factory=lambda: ["*.attn.c_q", "*.attn.c_k", "*.attn.c_v", "*.attn.c_proj"])
    """Linear layers to adapt, as glob patterns over module names (e.g. "*.mlp.*", "transformer.h.11.*")."""

    def __post_init__(self) -> None:
        if self.rank < 0:
            raise UserError(f"lora.rank is {self.rank}; it must be 0 (off) or more.")
        if self.rank and not (self.alpha > 0 and math.isfinite(self.alpha)):
            raise UserError(f"lora.alpha is {self.alpha}; it must be positive.")
        if not 0 <= self.dropout < 1:
            raise UserError(f"lora.dropout is {self.dropout}; it must be within [0, 1).")
        if self.rank and not self.targets:
            raise UserError("lora.targets is empty; name the linear layers to adapt, e.g. [\"*.attn.c_q\", \"*.attn.c_v\"].")


class LoRALinear(nn.Linear):
    """A linear layer with a low-rank adapter; `weight` and `bias` are the base layer's own."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float) -> None:
        nn.Module.__init__(self)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight, self.bias = base.weight, base.bias
        self.scaling = alpha / rank
        self.lora_dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.lora_A = nn.Parameter(torch.empty(rank, self.in_features, device=base.weight.device, dtype=base.weight.dtype))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, rank, device=base.weight.device, dtype=base.weight.dtype))
        # A as nn.Linear initializes its weight, B zero: the adapter starts as a no-op.
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        update = F.linear(F.linear(self.lora_dropout(x), self.lora_A), self.lora_B)  # (..., r) → (..., out)
        return F.linear(x, self.weight, self.bias) + self.scaling * update

    def merged(self) -> nn.Linear:
        """A plain linear layer with the adapter folded into its weight."""
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device=self.weight.device, dtype=self.weight.dtype)
        with torch.no_grad():
            linear.weight.copy_(self.weight + self.scaling * (self.lora_B @ self.lora_A))
            if self.bias is not None:
                linear.bias.copy_(self.bias)
        return linear


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def apply_lora(model: nn.Module, config: LoraConfig) -> list[str]:
    """Wrap the matching linear layers with adapters and freeze everything else; the names wrapped.

    Tied weights (the output head is the embedding) are never targets: an adapter on one would
    silently change the other. A pattern that matches no linear layer is a UserError naming it.
    """
    linears = {name: m for name, m in model.named_modules() if type(m) is nn.Linear}
    chosen = {}
    for pattern in config.targets:
        found = {name: m for name, m in linears.items() if fnmatch.fnmatchcase(name, pattern)}
        if not found:
            examples = ", ".join(list(linears)[:4])
            raise UserError(f"lora.targets pattern {pattern!r} matches no linear layer; names look like {examples}.")
        chosen |= found
    shared = _shared_weights(model)
    for name, module in chosen.items():
        if id(module.weight) in shared:
            raise UserError(f"lora.targets includes {name}, whose weight is shared with another layer (a tied head); leave it out.")
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    for name, module in chosen.items():
        _replace(model, name, LoRALinear(module, config.rank, config.alpha, config.dropout))
    return sorted(chosen)


def _shared_weights(model: nn.Module) -> set[int]:
    counts: dict[int, int] = {}
    for _, parameter in model.named_parameters(remove_duplicate=False):
        counts[id(parameter)] = counts.get(id(parameter), 0) + 1
    return {key for key, count in counts.items() if count > 1}


def merge_lora(model: nn.Module) -> int:
    """Fold every adapter into its weight, leaving plain linear layers; how many were merged."""
    wrapped = [(name, m) for name, m in model.named_modules() if isinstance(m, LoRALinear)]
    for name, module in wrapped:
        _replace(model, name, module.merged())
    return len(wrapped)


def lora_parameter_count(model: nn.Module) -> int:
    return sum(m.lora_A.numel() + m.lora_B.numel() for m in model.modules() if isinstance(m, LoRALinear))


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapters' tensors alone, by their names in the model."""
    return {name: tensor.detach().float().contiguous().cpu() for name, tensor in model.state_dict().items() if name.endswith((".lora_A", ".lora_B"))}


def weights_hash(path: Path) -> str:
    """SHA-256 of a weights file: which base an adapter belongs to."""
    return file_sha256(path)


def save_adapter(path: Path, model: nn.Module, config: LoraConfig, base_hash: str) -> None:
    """Write the adapters alone as safetensors, with their config and the base weights' hash."""
    from safetensors.torch import save_file

    save_file(adapter_state_dict(model), str(path), metadata={"format": "scratchlm-lora", "lora": json.dumps(asdict(config)), "base_sha256": base_hash})


def load_adapter(model: nn.Module, path: Path, base_hash: str) -> LoraConfig:
    """Wrap `model` (the base weights whose hash is `base_hash`) with the adapters in `path`."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    if not path.is_file():
        raise UserError(f"{path} is missing; pass the adapter.safetensors a LoRA fine-tune wrote.")
    try:
        with safe_open(str(path), "pt") as f:
            metadata = f.metadata() or {}
        tensors = load_file(str(path))
    except Exception as error:  # noqa: BLE001 - safetensors raises its own error types
        raise UserError(f"{path} cannot be read ({str(error)[:120]}); the file is corrupt.") from None
    if metadata.get("format") != "scratchlm-lora":
        raise UserError(f"{path} is not a scratchlm LoRA adapter file.")
    if metadata.get("base_sha256") != base_hash:
        raise UserError(f"{path} was trained on other base weights than these (their hashes differ); load it onto the checkpoint it was trained from.")
    config = LoraConfig(**json.loads(metadata["lora"]))
    apply_lora(model, config)
    missing = set(adapter_state_dict(model)) ^ set(tensors)
    if missing:
        raise UserError(f"{path} does not fit this model ({sorted(missing)[0]}); load it onto the checkpoint it was trained from.")
    model.load_state_dict(tensors, strict=False)
    return config
