"""scratchlm GPT-2 tensors ⇄ Hugging Face `GPT2LMHeadModel` tensors: a table of names.

Two differences are bridged here, at the boundary, so the model itself stays shardable:
- HF fuses queries, keys and values into one `attn.c_attn` ([q; k; v] along the output), where
  scratchlm has `attn.c_q`, `attn.c_k`, `attn.c_v`;
- HF's `Conv1D` stores weights as (in, out), where `nn.Linear` stores (out, in).
Only the GPT-2 architecture maps (learned positions, LayerNorm with biases, GELU, multi-head).
"""

from __future__ import annotations

import torch

from scratchlm.errors import UserError
from scratchlm.model.gpt import GPTConfig

CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def check_gpt2_architecture(config: GPTConfig) -> None:
    different = {
        name: getattr(config, name)
        for name, gpt2 in (("position", "learned"), ("norm", "layernorm"), ("mlp", "gelu"), ("bias", True), ("qk_norm", False))
        if getattr(config, name) != gpt2
    }
    if config.n_kv_head != config.n_head:
        different["n_kv_head"] = config.n_kv_head
    if different:
        raise UserError(f"Only the GPT-2 architecture maps onto Hugging Face GPT-2; this model has {different}.")


def to_hf_gpt2(state: dict[str, torch.Tensor], config: GPTConfig) -> dict[str, torch.Tensor]:
    """scratchlm tensors (a model's state_dict) → `GPT2LMHeadModel` tensors."""
    check_gpt2_architecture(config)
    out: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        if ".attn.c_k." in name or ".attn.c_v." in name:
            continue
        if ".attn.c_q." in name:
            name = name.replace("c_q", "c_attn")
            tensor = torch.cat([state[name.replace("c_attn", part)] for part in ("c_q", "c_k", "c_v")], dim=0)
        if name.endswith(CONV1D):
            tensor = tensor.t()
        out[name] = tensor.contiguous()
    if "lm_head.weight" not in out:
        out["lm_head.weight"] = out["transformer.wte.weight"]
    return out


def from_hf_gpt2(hf_state: dict[str, torch.Tensor], config: GPTConfig) -> dict[str, torch.Tensor]:
    """`GPT2LMHeadModel` tensors → scratchlm tensors (HF's causal-mask buffers are dropped)."""
    check_gpt2_architecture(config)
    out: dict[str, torch.Tensor] = {}
    for name, tensor in hf_state.items():
        if name.endswith((".attn.bias", ".attn.masked_bias")):
            continue
        if name.endswith(CONV1D):
            tensor = tensor.t()
        if ".attn.c_attn." in name:
            for part, piece in zip(("c_q", "c_k", "c_v"), tensor.split(config.n_embd, dim=0)):
                out[name.replace("c_attn", part)] = piece.contiguous()
            continue
        out[name] = tensor.contiguous()
    return out
