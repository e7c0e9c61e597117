"""Hugging Face interop: a local HF model folder ⇄ a scratchlm checkpoint directory.

Three HF architectures are switch settings of our GPT, so converting is a table of names and
never an approximation:

    GPT2LMHeadModel    learned positions, LayerNorm with biases, GELU (tanh), multi-head
    LlamaForCausalLM   rotary positions, RMSNorm, SwiGLU, grouped-query heads, no biases
    Qwen3ForCausalLM   Llama + a per-head RMSNorm of queries and keys before the rotation

The model file does not change for interop; the differences are bridged here, at the boundary:
- GPT-2 fuses queries, keys and values into one `attn.c_attn` ([q; k; v] along the output) and
  stores its `Conv1D` weights as (in, out), where we have three `nn.Linear`s stored (out, in);
- Llama and Qwen3 only name things differently (`model.layers.0.self_attn.q_proj` is our
  `transformer.h.0.attn.c_q`). Their rotary embedding pairs channel i with i + head_dim/2
  (`rotate_half`) with frequencies θ^(-2i/head_dim), exactly as `apply_rope` does, so query and
  key rows need no permutation (Meta's original Llama weights pair adjacent channels; HF's own
  converter already permuted them into this order).
A setting the HF config has and our GPT cannot reproduce exactly (RoPE scaling, a sliding
window, biases on Llama, a head size other than hidden/heads, another activation) is refused
with one sentence naming it; epsilons and MLP widths are carried exactly (`GPTConfig.norm_eps`,
`GPTConfig.mlp_hidden_size`).

Reading an HF folder needs only json, safetensors and torch (`transformers` is never imported,
so nothing can be downloaded), and both directions write under a temporary name that is renamed
into place, as training writes its checkpoints.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors.torch import load_file

from scratchlm.checkpoints import expected_shapes, find_checkpoint, load_weights
from scratchlm.console import info
from scratchlm.errors import UserError
from scratchlm.model.gpt import GPT, GPTConfig
from scratchlm.paths import check_output_location
from scratchlm.tokenizer.formats import load_gpt2_files, load_hf_json, to_hf_json
from scratchlm.tokenizer.tokenizer import EOT, Tokenizer
from scratchlm.train.checkpoint import (
    replace_directory,
    save_weights,
    write_checkpoint_dir,
)

GPT2 = "GPT2LMHeadModel"
LLAMA = "LlamaForCausalLM"
QWEN3 = "Qwen3ForCausalLM"
MODEL_TYPES = {"gpt2": GPT2, "llama": LLAMA, "qwen3": QWEN3}
"""`model_type` → architecture, for a config.json without an `architectures` list."""

CHECKPOINT_FILES = frozenset({"model.safetensors", "config.json", "tokenizer", "meta.json"})
HF_FILES = frozenset({"config.json", "model.safetensors", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"})
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# ---- names --------------------------------------------------------------------------------------

GPT2_CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
GPT2_BUFFERS = (".attn.bias", ".attn.masked_bias")
"""HF GPT-2's causal-mask buffers, found in older files: not weights, dropped on reading."""

LLAMA_BLOCK = {
    "ln_1.weight": "input_layernorm.weight",
    "attn.c_q.weight": "self_attn.q_proj.weight",
    "attn.c_k.weight": "self_attn.k_proj.weight",
    "attn.c_v.weight": "self_attn.v_proj.weight",
    "attn.c_proj.weight": "self_attn.o_proj.weight",
    "attn.q_norm.weight": "self_attn.q_norm.weight",
    "attn.k_norm.weight": "self_attn.k_norm.weight",
    "ln_2.weight": "post_attention_layernorm.weight",
    "mlp.c_gate.weight": "mlp.gate_proj.weight",
    "mlp.c_fc.weight": "mlp.up_proj.weight",
    "mlp.c_proj.weight": "mlp.down_proj.weight",
}
"""Our name → Llama's (and Qwen3's) inside block i: `transformer.h.i.` ⇄ `model.layers.i.`."""
LLAMA_OUTSIDE = {"transformer.wte.weight": "model.embed_tokens.weight", "transformer.ln_f.weight": "model.norm.weight", "lm_head.weight": "lm_head.weight"}
LLAMA_BUFFERS = (".rotary_emb.inv_freq",)
"""Rotary frequencies that older Llama files store: recomputed from rope_theta, dropped."""
FROM_LLAMA_BLOCK = {hf: ours for ours, hf in LLAMA_BLOCK.items()}
FROM_LLAMA_OUTSIDE = {hf: ours for ours, hf in LLAMA_OUTSIDE.items()}


def _rename(name: str, block: dict[str, str], outside: dict[str, str], prefix: str, new_prefix: str) -> str | None:
    if name in outside:
        return outside[name]
    match = re.fullmatch(rf"{re.escape(prefix)}(\d+)\.(.+)", name)
    if match is None or match[2] not in block:
        return None
    return f"{new_prefix}{match[1]}.{block[match[2]]}"


def to_llama_name(name: str) -> str | None:
    return _rename(name, LLAMA_BLOCK, LLAMA_OUTSIDE, "transformer.h.", "model.layers.")


def from_llama_name(name: str) -> str | None:
    return _rename(name, FROM_LLAMA_BLOCK, FROM_LLAMA_OUTSIDE, "model.layers.", "transformer.h.")


def _to_hf_gpt2(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        if ".attn.c_k." in name or ".attn.c_v." in name:
            continue
        if ".attn.c_q." in name:
            name = name.replace("c_q", "c_attn")
            tensor = torch.cat([state[name.replace("c_attn", part)] for part in ("c_q", "c_k", "c_v")], dim=0)
        if name.endswith(GPT2_CONV1D):
            tensor = tensor.t()
        out[name] = tensor.contiguous()
    return out


def _from_hf_gpt2(hf_state: dict[str, torch.Tensor], config: GPTConfig, where: str) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for name, tensor in hf_state.items():
        if name.endswith(GPT2_CONV1D):
            tensor = tensor.t()
        if ".attn.c_attn." in name:
            if tensor.size(0) != 3 * config.n_embd:
                raise UserError(f"{name} in {where} is {tensor.size(0)} wide where config.json implies 3 × {config.n_embd}; the weights and config.json are from different models.")
            # Own copies: pieces that share one storage cannot be saved as safetensors.
            for part, piece in zip(("c_q", "c_k", "c_v"), tensor.split(config.n_embd, dim=0)):
                out[name.replace("c_attn", part)] = piece.clone(memory_format=torch.contiguous_format)
            continue
        out[name] = tensor.contiguous()
    return out


def _from_hf_llama(hf_state: dict[str, torch.Tensor], architecture: str, where: str) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for name, tensor in hf_state.items():
        ours = from_llama_name(name)
        if ours is None:
            raise UserError(f"{name} in {where} has no place in scratchlm's {architecture} (a bias, say); this model cannot be converted exactly.")
        out[ours] = tensor
    return out


def hf_name(name: str, architecture: str) -> str:
    """The HF tensor that holds our tensor `name` (GPT-2's fused c_attn for c_q, c_k and c_v)."""
    if architecture == GPT2:
        return re.sub(r"\.attn\.c_[qkv]\.", ".attn.c_attn.", name)
    return to_llama_name(name) or name


def to_hf_state(state: dict[str, torch.Tensor], config: GPTConfig) -> dict[str, torch.Tensor]:
    """A model's state dict → the state dict of its HF model (the head included, the very same
    tensor as the embedding when tied, as HF's own state dicts have it)."""
    architecture = hf_architecture(config)
    out = _to_hf_gpt2(state) if architecture == GPT2 else {hf_name(name, architecture): tensor for name, tensor in state.items()}
    if config.tie_embeddings:
        out["lm_head.weight"] = out[hf_name("transformer.wte.weight", architecture)]
    return out


def from_hf_state(hf_state: dict[str, torch.Tensor], config: GPTConfig, architecture: str, where: str = "the weights") -> dict[str, torch.Tensor]:
    """An HF model's tensors (a state dict, or a saved file's, which omits a tied head) → our
    model's state dict, checked name by name and shape by shape against `config`."""
    buffers = GPT2_BUFFERS if architecture == GPT2 else LLAMA_BUFFERS
    hf_state = {name: tensor for name, tensor in hf_state.items() if not name.endswith(buffers)}
    if config.tie_embeddings:
        # HF ties the head to the embedding on loading, whatever a file holds for it.
        hf_state.pop("lm_head.weight", None)
    state = _from_hf_gpt2(hf_state, config, where) if architecture == GPT2 else _from_hf_llama(hf_state, architecture, where)
    _check_shapes(state, config, architecture, where)
    if config.tie_embeddings:
        state["lm_head.weight"] = state["transformer.wte.weight"]
    return state


def _check_shapes(state: dict[str, torch.Tensor], config: GPTConfig, architecture: str, where: str) -> None:
    expected = expected_shapes(config)
    for name, shape in expected.items():
        if name not in state:
            raise UserError(f"{hf_name(name, architecture)} is missing from {where}, and the {architecture} of config.json needs it; the weights are incomplete or from another model.")
        if tuple(state[name].shape) != shape:
            # Reported in HF's layout: GPT-2's Conv1D weights are (in, out).
            stored, implied = tuple(state[name].shape), shape
            if architecture == GPT2 and name.endswith(GPT2_CONV1D):
                stored, implied = stored[::-1], implied[::-1]
            raise UserError(f"{hf_name(name, architecture)} in {where} has shape {list(stored)} where config.json implies {list(implied)}; the weights and config.json are from different models.")
    extra = sorted(set(state) - set(expected))
    if extra:
        raise UserError(f"{hf_name(extra[0], architecture)} in {where} is not part of the {architecture} that config.json describes; the weights and config.json are from different models.")


# ---- configs ------------------------------------------------------------------------------------

T = TypeVar("T")
KINDS = {int: "a positive whole number", float: "a number", bool: "true or false", str: "a string"}
"""What each kind of config.json value must be (every whole number read here is a size)."""


def _optional(hf: dict[str, Any], key: str, kind: type[T], default: T | None, where: Path) -> T | None:
    """`hf[key]` checked to be a `kind` (an int is a float too): `default` when absent, None when
    null (transformers derives n_inner, num_key_value_heads and head_dim from a null)."""
    value = hf.get(key, default)
    if value is None:
        return None
    if kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    else:
        ok = isinstance(value, kind) and not (kind is int and (isinstance(value, bool) or value < 1))
    if not ok:
        raise UserError(f"{where} sets {key} to {json.dumps(value)}, where transformers expects {KINDS[kind]}; the file is corrupt.")
    return float(value) if kind is float else value  # type: ignore[return-value]


def _read(hf: dict[str, Any], key: str, kind: type[T], default: T, where: Path) -> T:
    """`hf[key]` as `_optional`, where null is not allowed."""
    value = _optional(hf, key, kind, default, where)
    if value is None:
        raise UserError(f"{where} sets {key} to null, where transformers expects {KINDS[kind]}; the file is corrupt.")
    return value


def hf_architecture_of(hf: dict[str, Any], where: Path) -> str:
    names = hf.get("architectures")
    if names is not None and not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
        raise UserError(f"{where} has an architectures entry that is not a list of names; the file is corrupt.")
    architecture = names[0] if names else MODEL_TYPES.get(hf.get("model_type"))
    if architecture not in (GPT2, LLAMA, QWEN3) or (names and len(names) > 1):
        shown = " + ".join(names) if names else hf.get("model_type")
        named = f"describes a {shown} model" if shown else "names no architecture (neither architectures nor model_type)"
        raise UserError(f"{where} {named}; scratchlm converts {GPT2}, {LLAMA} and {QWEN3} only.")
    return architecture


def config_from_hf(hf: dict[str, Any], where: Path) -> tuple[str, GPTConfig]:
    """The architecture named by an HF config.json and the GPTConfig that reproduces it, or a
    UserError naming the first setting it cannot reproduce. Missing keys take the defaults of
    transformers' config classes, as `from_pretrained` would."""
    architecture = hf_architecture_of(hf, where)
    settings = _gpt2_settings(hf, where) if architecture == GPT2 else _llama_settings(hf, where, qwen3=architecture == QWEN3)
    try:
        return architecture, GPTConfig(**settings)
    except UserError as error:
        raise UserError(f"{where} describes a model scratchlm cannot build: {error}") from None


def _refuse(where: Path, setting: str, why: str) -> UserError:
    return UserError(f"{where} has {setting}, which scratchlm cannot reproduce exactly ({why}); this model cannot be converted.")


def _gpt2_settings(hf: dict[str, Any], where: Path) -> dict[str, Any]:
    n_embd = _read(hf, "n_embd", int, 768, where)
    activation = _read(hf, "activation_function", str, "gelu_new", where)
    # Both are the tanh approximation of GELU that our MLP computes; "gelu" is the exact erf one.
    if activation not in ("gelu_new", "gelu_pytorch_tanh"):
        raise _refuse(where, f"activation_function {activation!r}", "its GPT-2 MLP uses GELU with the tanh approximation, gelu_new")
    for key, default, why in (
        ("scale_attn_weights", True, "attention scores are always scaled by 1/√head_dim"),
        ("scale_attn_by_inverse_layer_idx", False, "attention scores are scaled by 1/√head_dim only"),
        ("add_cross_attention", False, "a GPT has no cross-attention"),
    ):
        if _read(hf, key, bool, default, where) != default:
            raise _refuse(where, f"{key} {json.dumps(not default)}", why)
    return dict(
        vocab_size=_read(hf, "vocab_size", int, 50257, where),
        block_size=_read(hf, "n_positions", int, 1024, where),
        n_layer=_read(hf, "n_layer", int, 12, where),
        n_head=_read(hf, "n_head", int, 12, where),
        n_embd=n_embd,
        norm_eps=_norm_eps(_read(hf, "layer_norm_epsilon", float, 1e-5, where), "layernorm"),
        tie_embeddings=_read(hf, "tie_word_embeddings", bool, True, where),
        **_mlp_width(_optional(hf, "n_inner", int, None, where) or 4 * n_embd, n_embd, "gelu"),
    )


def _llama_settings(hf: dict[str, Any], where: Path, qwen3: bool) -> dict[str, Any]:
    name = "Qwen3" if qwen3 else "Llama"
    hidden = _read(hf, "hidden_size", int, 4096, where)
    heads = _read(hf, "num_attention_heads", int, 32, where)
    activation = _read(hf, "hidden_act", str, "silu", where)
    if activation != "silu":
        raise _refuse(where, f"hidden_act {activation!r}", f"{name}'s MLP is SwiGLU, whose gate uses silu")
    for key in ("attention_bias", "mlp_bias"):
        if _read(hf, key, bool, False, where):
            raise _refuse(where, f"{key} true", f"scratchlm's {name} has no biases")
    # transformers' Qwen3Config defaults head_dim to 128 whatever the width; LlamaConfig derives it.
    head_dim = _optional(hf, "head_dim", int, 128 if qwen3 else None, where)
    if head_dim is not None and head_dim * heads != hidden:
        default = " (Qwen3's default when config.json omits it)" if "head_dim" not in hf else ""
        raise _refuse(where, f"head_dim {head_dim}{default}", f"scratchlm's heads split hidden_size evenly, {hidden} / {heads} heads")
    if qwen3:
        _check_full_attention(hf, where)
    return dict(
        vocab_size=_read(hf, "vocab_size", int, 151936 if qwen3 else 32000, where),
        block_size=_read(hf, "max_position_embeddings", int, 32768 if qwen3 else 2048, where),
        n_layer=_read(hf, "num_hidden_layers", int, 32, where),
        n_head=heads,
        n_kv_head=_optional(hf, "num_key_value_heads", int, 32 if qwen3 else None, where) or heads,
        n_embd=hidden,
        bias=False,
        norm="rmsnorm",
        norm_eps=_norm_eps(_read(hf, "rms_norm_eps", float, 1e-6, where), "rmsnorm"),
        mlp="swiglu",
        position="rope",
        rope_theta=_rope_theta(hf, where),
        qk_norm=qwen3,
        tie_embeddings=_read(hf, "tie_word_embeddings", bool, False, where),
        **_mlp_width(_read(hf, "intermediate_size", int, 22016 if qwen3 else 11008, where), hidden, "swiglu"),
    )


def _check_full_attention(hf: dict[str, Any], where: Path) -> None:
    if _read(hf, "use_sliding_window", bool, False, where):
        raise _refuse(where, "use_sliding_window true", "every layer attends to the whole context")
    layer_types = hf.get("layer_types") or []
    if not isinstance(layer_types, list) or any(kind != "full_attention" for kind in layer_types):
        raise _refuse(where, f"layer_types {layer_types!r}", "every layer attends to the whole context")


def _rope_theta(hf: dict[str, Any], where: Path) -> float:
    """The rotary base from transformers 5's `rope_parameters` or older `rope_theta` +
    `rope_scaling`; any scaling is refused."""
    key = "rope_parameters" if hf.get("rope_parameters") else "rope_scaling"
    rope = hf.get(key) or {}
    if not isinstance(rope, dict):
        raise UserError(f"{where} has a {key} entry that is not an object; the file is corrupt.")
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind != "default":
        raise _refuse(where, f"{key} of rope_type {kind!r}", "its rotary embedding has no scaling")
    partial = rope.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0))
    if partial != 1.0:
        raise _refuse(where, f"partial_rotary_factor {partial!r}", "the rotation covers whole heads")
    return _read(rope, "rope_theta", float, hf.get("rope_theta", 10000.0), where)


def _norm_eps(eps: float, norm: str) -> float:
    """norm_eps for an epsilon: 0 (the norm's usual value) when that is what it is."""
    return 0.0 if eps == GPTConfig(norm=norm).eps else eps


def _mlp_width(hidden: int, n_embd: int, mlp: str) -> dict[str, Any]:
    """The mlp_ratio that describes an MLP `hidden` wide, and mlp_hidden_size as well where the
    ratio's rounding (SwiGLU's 2/3, to a multiple of 64) does not give exactly `hidden`."""
    ratio = hidden / n_embd * (1.5 if mlp == "swiglu" else 1.0)
    if GPTConfig(n_embd=n_embd, n_head=1, mlp=mlp, mlp_ratio=ratio).mlp_hidden == hidden:
        return {"mlp_ratio": ratio}
    return {"mlp_ratio": ratio, "mlp_hidden_size": hidden}


GPT2_NEEDS = {"norm": "layernorm", "mlp": "gelu", "bias": True, "qk_norm": False}
LLAMA_NEEDS = {"norm": "rmsnorm", "mlp": "swiglu", "bias": False}


def hf_architecture(config: GPTConfig) -> str:
    """The HF architecture that expresses `config` exactly: learned positions are GPT-2, rotary
    ones Llama, or Qwen3 with QK-norm; a UserError names the settings neither can express."""
    learned = config.position == "learned"
    needs = GPT2_NEEDS if learned else LLAMA_NEEDS
    wrong = {name: getattr(config, name) for name, value in needs.items() if getattr(config, name) != value}
    if learned and config.n_kv_head != config.n_head:
        wrong["n_kv_head"] = config.n_kv_head
    if wrong:
        family = "GPT-2, which needs " + _settings(GPT2_NEEDS) + " and n_kv_head = n_head" if learned else "Llama or Qwen3, which need " + _settings(LLAMA_NEEDS)
        raise UserError(f"No Hugging Face architecture expresses this model: with position={config.position!r} it would be {family}, but this model has {_settings(wrong)}.")
    return GPT2 if learned else QWEN3 if config.qk_norm else LLAMA


def _settings(values: dict[str, Any]) -> str:
    return ", ".join(f"{name}={json.dumps(value) if isinstance(value, bool) else repr(value)}" for name, value in values.items())


def config_to_hf(config: GPTConfig, tokenizer: Tokenizer, dtype: str) -> dict[str, Any]:
    """The config.json of the HF model that `config` is."""
    architecture = hf_architecture(config)
    common = {
        "architectures": [architecture],
        "vocab_size": config.vocab_size,
        "bos_token_id": tokenizer.eot_id,
        "eos_token_id": tokenizer.eot_id,
        "tie_word_embeddings": config.tie_embeddings,
        "dtype": dtype,
    }
    if architecture == GPT2:
        return {
            **common,
            "model_type": "gpt2",
            "n_positions": config.block_size,
            "n_embd": config.n_embd,
            "n_layer": config.n_layer,
            "n_head": config.n_head,
            "n_inner": config.mlp_hidden,
            "activation_function": "gelu_new",
            "layer_norm_epsilon": config.eps,
            "resid_pdrop": config.dropout,
            "embd_pdrop": config.dropout,
            "attn_pdrop": config.dropout,
            "scale_attn_weights": True,
        }
    specific = {"mlp_bias": False} if architecture == LLAMA else {"use_sliding_window": False, "sliding_window": None, "max_window_layers": config.n_layer}
    return {
        **common,
        "model_type": "llama" if architecture == LLAMA else "qwen3",
        "hidden_size": config.n_embd,
        "intermediate_size": config.mlp_hidden,
        "num_hidden_layers": config.n_layer,
        "num_attention_heads": config.n_head,
        "num_key_value_heads": config.n_kv_head,
        "head_dim": config.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": config.block_size,
        "rms_norm_eps": config.eps,
        # transformers 5 reads rope_parameters, earlier versions rope_theta.
        "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_theta},
        "rope_theta": config.rope_theta,
        "attention_bias": False,
        "attention_dropout": config.dropout,
        **specific,
    }


# ---- reading an HF folder -----------------------------------------------------------------------


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UserError(f"{path} is not valid JSON ({error}); the file is corrupt.") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} holds a JSON {type(data).__name__}, not an object; the file is corrupt.")
    return data


def _weight_files(directory: Path) -> list[Path]:
    for single, index in (("model.safetensors", "model.safetensors.index.json"), ("pytorch_model.bin", "pytorch_model.bin.index.json")):
        if (directory / single).is_file():
            return [directory / single]
        if (directory / index).is_file():
            weight_map = _read_json(directory / index).get("weight_map")
            if not isinstance(weight_map, dict) or not all(isinstance(f, str) for f in weight_map.values()):
                raise UserError(f"{directory / index} has no weight_map of tensor names to files; the file is corrupt.")
            files = [directory / name for name in sorted(set(weight_map.values()))]
            for file in files:
                if not file.is_file():
                    raise UserError(f"{file} is missing, and {directory / index} lists it; copy every shard of the model into {directory}.")
            return files
    raise UserError(f"{directory} holds no weights (model.safetensors, model-*.safetensors with model.safetensors.index.json, or pytorch_model.bin); pass the folder save_pretrained wrote.")


def _load_weight_file(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            state = load_file(str(path))
        else:
            # weights_only: a pickle from elsewhere may not run code.
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - safetensors and pickle raise many types for a damaged file
        raise UserError(f"{path} cannot be read ({type(error).__name__}: {str(error)[:120]}); the file is corrupt.") from None
    if not isinstance(state, dict) or not all(isinstance(t, torch.Tensor) for t in state.values()):
        raise UserError(f"{path} does not hold a dictionary of tensors; it is not a model's weights.")
    return state


def read_hf_weights(directory: Path, architecture: str) -> dict[str, torch.Tensor]:
    """Every tensor of an HF folder, in fp32, named as the `...ForCausalLM` model names them
    (a file saved from the bare GPT2Model or LlamaModel lacks the `transformer.`/`model.` prefix)."""
    state: dict[str, torch.Tensor] = {}
    for file in _weight_files(directory):
        state.update(_load_weight_file(file))
    prefix = "transformer." if architecture == GPT2 else "model."
    if not any(name.startswith(prefix) for name in state):
        state = {name if name == "lm_head.weight" else prefix + name: tensor for name, tensor in state.items()}
    return {name: tensor.float() if tensor.is_floating_point() else tensor for name, tensor in state.items()}


def read_hf_tokenizer(directory: Path) -> Tokenizer:
    """tokenizer.json, else GPT-2's vocab.json + merges.txt (the format of encoder.json + vocab.bpe)."""
    try:
        if (directory / "tokenizer.json").is_file():
            return load_hf_json(directory / "tokenizer.json")
        if (directory / "vocab.json").is_file() and (directory / "merges.txt").is_file():
            return load_gpt2_files(directory / "vocab.json", directory / "merges.txt")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        # What the readers' own checks do not catch: files cut short or of another layout.
        raise UserError(f"The tokenizer files in {directory} cannot be read ({type(error).__name__}: {str(error)[:120]}); they are corrupt.") from None
    raise UserError(f"{directory} has no tokenizer.json (nor GPT-2's vocab.json and merges.txt); a scratchlm checkpoint carries its tokenizer, so copy the model's tokenizer files into {directory}.")


def read_chat_template(directory: Path) -> str | None:
    """The chat template: chat_template.jinja (where transformers now saves it), else
    tokenizer_config.json's `chat_template` (a string, or a list of named ones: "default")."""
    if (directory / "chat_template.jinja").is_file():
        try:
            return (directory / "chat_template.jinja").read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise UserError(f"{directory / 'chat_template.jinja'} is not UTF-8 text; the file is corrupt.") from None
    if not (directory / "tokenizer_config.json").is_file():
        return None
    template = _read_json(directory / "tokenizer_config.json").get("chat_template")
    if isinstance(template, list):
        template = next((t.get("template") for t in template if isinstance(t, dict) and t.get("name") == "default"), None)
    return template if isinstance(template, str) else None


# ---- the two directions ---------------------------------------------------------------------


def _check_out(out: Path, overwrite: bool, ours: frozenset[str], source: Path, kind: str) -> None:
    """OUT may be new or empty, or (with `overwrite`) hold only what a conversion writes; it may
    not be, or contain, what it is converted from."""
    check_output_location(out, "OUT")
    if out.resolve() == source.resolve() or out.resolve() in source.resolve().parents:
        raise UserError(f"OUT {out} would replace {source}, the model being converted; choose another path.")
    entries = set(os.listdir(out)) if out.is_dir() else set()
    if not entries:
        return
    if not entries <= ours:
        raise UserError(f"OUT {out} already exists and holds files that are not {kind}; choose a new path (--overwrite replaces only an earlier conversion).")
    if not overwrite:
        raise UserError(f"OUT {out} already exists; pass --overwrite to replace it, or choose another path.")


def from_hf(directory: str | Path, out: str | Path, overwrite: bool = False) -> Path:
    """Convert a local HF model folder into a scratchlm checkpoint directory `out`."""
    directory, out = Path(directory), Path(out)
    if not directory.is_dir():
        raise UserError(f"No Hugging Face model folder at {directory}; pass a local folder holding config.json, the weights and the tokenizer (save_pretrained writes one).")
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise UserError(f"{directory} has no config.json; pass the folder save_pretrained wrote (config.json, model.safetensors, tokenizer.json).")
    architecture, config = config_from_hf(_read_json(config_path), config_path)
    tokenizer = read_hf_tokenizer(directory)
    if tokenizer.vocab_size > config.vocab_size:
        raise UserError(f"The tokenizer in {directory} has {tokenizer.vocab_size} tokens but {config_path} gives the model {config.vocab_size} embedding rows; the tokenizer is from another model.")
    _check_out(out, overwrite, CHECKPOINT_FILES, directory, "a scratchlm checkpoint's")
    state = from_hf_state(read_hf_weights(directory, architecture), config, architecture, where=f"the weights in {directory}")
    meta: dict[str, Any] = {"source": {"path": str(directory.resolve()), "architecture": architecture}}
    template = read_chat_template(directory)
    if template is not None:
        meta["chat_template"] = template
    write_checkpoint_dir(out, state, config, tokenizer, meta)
    info(f"converted the {architecture} in {directory} to the checkpoint {out}")
    return out


def tokenizer_files(tokenizer: Tokenizer, block_size: int, chat_template: str | None) -> dict[str, dict[str, Any]]:
    """tokenizer.json, tokenizer_config.json and special_tokens_map.json for `AutoTokenizer`."""
    special = {"bos_token": EOT, "eos_token": EOT} if tokenizer.eot_id is not None else {}
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": block_size,
        # Otherwise decoding would remove spaces before punctuation, unlike our decode.
        "clean_up_tokenization_spaces": False,
        **special,
    }
    if chat_template is not None:
        config["chat_template"] = chat_template
    return {"tokenizer.json": to_hf_json(tokenizer), "tokenizer_config.json": config, "special_tokens_map.json": special}


def to_hf(checkpoint: str | Path, out: str | Path, overwrite: bool = False, dtype: str = "float32") -> Path:
    """Write a checkpoint (or a run directory's newest) as a folder that transformers'
    `AutoModelForCausalLM` and `AutoTokenizer` load."""
    if dtype not in DTYPES:
        raise UserError(f"--dtype is {dtype!r}; choose one of {', '.join(DTYPES)}.")
    out = Path(out)
    found = find_checkpoint(checkpoint)
    config = found.config
    hf_config = config_to_hf(config, found.tokenizer, dtype)
    _check_out(out, overwrite, HF_FILES, found.path, "a converted Hugging Face model's")
    with torch.device("meta"):
        model = GPT(config)
    model = model.to_empty(device="cpu")  # no initialization: every weight is loaded next
    load_weights(model, found)
    state = to_hf_state(model.state_dict(), config)
    if config.tie_embeddings:
        del state["lm_head.weight"]  # safetensors refuses shared tensors; HF ties it again on loading
    tensors = {name: tensor.detach().to(DTYPES[dtype]).contiguous() for name, tensor in state.items()}
    template = found.meta.get("chat_template")
    files = {
        "config.json": hf_config,
        # Every special token ends a turn, as in scratchlm's engine (a ChatML model's <|im_end|> too).
        "generation_config.json": {"bos_token_id": found.tokenizer.eot_id, "eos_token_id": sorted(found.tokenizer.special_tokens.values()) or None},
        **tokenizer_files(found.tokenizer, config.block_size, template if isinstance(template, str) else None),
    }
    _write_folder(out, tensors, files)
    info(f"wrote {found.path} as a Hugging Face {hf_config['architectures'][0]} to {out}")
    return out


def _write_folder(out: Path, tensors: dict[str, torch.Tensor], files: dict[str, dict[str, Any]]) -> None:
    temporary = out.parent / f".tmp-{out.name}"
    if temporary.exists():
        shutil.rmtree(temporary)
    temporary.mkdir(parents=True)
    try:
        # transformers refuses a safetensors file whose metadata does not name its framework.
        save_weights(tensors, temporary / "model.safetensors", metadata={"format": "pt"})
        for name, content in files.items():
            (temporary / name).write_text(json.dumps(content, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        replace_directory(temporary, out)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
