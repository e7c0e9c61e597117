"""LoRA: a fresh adapter is the base exactly, merging changes nothing, counts follow the formula,
adapters travel alone and in checkpoints."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from conftest import synthetic_text
from safetensors.torch import load_file

from scratchlm.checkpoints import check_checkpoint, load_model
from scratchlm.errors import UserError
from scratchlm.model.gpt import GPT, GPTConfig
from scratchlm.model.lora import (
    LoraConfig,
    LoRALinear,
    adapter_state_dict,
    apply_lora,
    load_adapter,
    lora_parameter_count,
    merge_lora,
    save_adapter,
    weights_hash,
)
from scratchlm.tokenizer.train import TokenizerTrainConfig, train_from_texts
from scratchlm.train.checkpoint import save_checkpoint

torch.set_num_threads(1)
MODERN = {"position": "rope", "norm": "rmsnorm", "mlp": "swiglu", "n_kv_head": 2, "qk_norm": True, "bias": False, "tie_embeddings": False}


def make(**overrides: object) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=96, block_size=32, n_layer=2, n_head=4, n_embd=32, **overrides)).eval()  # type: ignore[arg-type]


def randomize_adapters(model: GPT) -> None:
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, LoRALinear):
                module.lora_B.copy_(torch.randn(module.lora_B.shape, generator=generator))


IDS = torch.tensor([[1, 5, 9, 2, 7, 3], [4, 4, 8, 1, 0, 6]])


@pytest.mark.parametrize("architecture", [{}, MODERN], ids=["gpt2", "modern"])
def test_fresh_adapters_are_the_base_and_merging_keeps_the_logits(architecture: dict) -> None:
    model = make(**architecture)
    base = model(IDS)[0]
    names = apply_lora(model, LoraConfig(rank=4, targets=["*.attn.c_q", "*.attn.c_v", "*.mlp.c_fc"]))
    assert len(names) == 6
    assert torch.equal(model(IDS)[0], base)  # B = 0: exactly the base
    randomize_adapters(model)
    adapted = model(IDS)[0]
    assert not torch.allclose(adapted, base)
    assert merge_lora(model) == 6
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    torch.testing.assert_close(model(IDS)[0], adapted, atol=1e-5, rtol=1e-5)


def test_only_adapters_train_and_their_count_is_the_formula() -> None:
    model = make(**MODERN)  # width 32, 4 heads of 8, 2 KV heads: k and v are 16 wide
    apply_lora(model, LoraConfig(rank=4))  # the default targets: c_q, c_k, c_v and attention's c_proj
    r, C, kv = 4, 32, 16
    per_layer = r * (C + C) + 2 * r * (C + kv) + r * (C + C)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == lora_parameter_count(model) == 2 * per_layer
    assert all(name.endswith(("lora_A", "lora_B")) for name, p in model.named_parameters() if p.requires_grad)


def test_bad_targets_and_settings_are_one_sentence() -> None:
    with pytest.raises(UserError, match=r"'\*.attn.c_z' matches no linear layer"):
        apply_lora(make(), LoraConfig(rank=2, targets=["*.attn.c_z"]))
    with pytest.raises(UserError, match="shared with another layer"):
        apply_lora(make(), LoraConfig(rank=2, targets=["lm_head"]))  # tied to the embedding
    with pytest.raises(UserError, match="lora.rank is -1"):
        LoraConfig(rank=-1)
    with pytest.raises(UserError, match="lora.dropout is 1.5"):
        LoraConfig(rank=2, dropout=1.5)


def test_adapters_save_alone_and_load_only_onto_their_base(tmp_path: Path) -> None:
    base_file = tmp_path / "base.bin"
    base_file.write_bytes(b"the base weights")
    model = make()
    config = LoraConfig(rank=2, alpha=8, targets=["*.attn.c_q"])
    apply_lora(model, config)
    randomize_adapters(model)
    want = model(IDS)[0]
    save_adapter(tmp_path / "adapter.safetensors", model, config, weights_hash(base_file))
    fresh = make()
    assert load_adapter(fresh, tmp_path / "adapter.safetensors", weights_hash(base_file)) == config
    torch.testing.assert_close(fresh(IDS)[0], want)
    with pytest.raises(UserError, match="other base weights"):
        load_adapter(make(), tmp_path / "adapter.safetensors", "0" * 64)
    (tmp_path / "bad.safetensors").write_bytes(b"garbage")
    with pytest.raises(UserError, match="cannot be read"):
        load_adapter(make(), tmp_path / "bad.safetensors", "0" * 64)


def test_a_lora_checkpoint_is_checked_and_loads_merged(tmp_path: Path) -> None:
    tokenizer = train_from_texts([synthetic_text(0)], TokenizerTrainConfig(vocab_size=300, workers=1))
    model = GPT(GPTConfig(vocab_size=320, block_size=32, n_layer=2, n_head=4, n_embd=32)).eval()
    config = LoraConfig(rank=4, targets=["*.attn.c_q", "*.mlp.c_proj"])
    apply_lora(model, config)
    randomize_adapters(model)
    want = model(IDS)[0]
    path = save_checkpoint(tmp_path / "run", 5, model, tokenizer, meta={"lora": asdict(config)})
    assert check_checkpoint(path).meta["lora"] == asdict(config)  # shapes checked, adapters included
    assert set(adapter_state_dict(model)) <= set(load_file(str(path / "model.safetensors")))
    loaded, _, _ = load_model(path)
    assert not any(isinstance(m, LoRALinear) for m in loaded.modules())
    assert all(p.requires_grad for p in loaded.parameters())
    torch.testing.assert_close(loaded(IDS)[0], want, atol=1e-5, rtol=1e-5)
