"""Hugging Face interop against transformers itself: tiny random GPT-2, Llama and Qwen3 models
saved by `save_pretrained` convert to checkpoints with the same logits, our models convert to
folders that `AutoModelForCausalLM` and `AutoTokenizer` load with the same logits and token ids,
the chat template travels both ways, and every bad input is one sentence with exit status 2."""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import typer
from conftest import shared_file, synthetic_text
from safetensors.torch import load_file, save_file

from scratchlm import cli
from scratchlm.checkpoints import checkpoint_name, load_model
from scratchlm.convert.commands import convert_app
from scratchlm.convert.hf import GPT2, LLAMA, QWEN3, config_from_hf, from_hf, to_hf
from scratchlm.errors import UserError
from scratchlm.model.gpt import GPT, GPTConfig
from scratchlm.tokenizer.formats import to_hf_json
from scratchlm.tokenizer.tokenizer import EOT, Tokenizer
from scratchlm.tokenizer.train import TokenizerTrainConfig, train_from_texts
from scratchlm.train.checkpoint import write_checkpoint_dir

VOCAB = 320
"""Embedding rows: more than the test tokenizer's 300 ids, as HF models often have."""
TEMPLATE = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}{{ eos_token }}\n{% endfor %}ünïcode ✓"
TEXTS = ["Hello, world! It's 2024.", "naïve café — 東京 🚀", f"first document{EOT}second one", "  spaces\n\nand\ttabs  "]


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return train_from_texts([synthetic_text(0, 2000)], TokenizerTrainConfig(vocab_size=300, workers=1))


@pytest.fixture(scope="module")
def transformers() -> Any:
    return pytest.importorskip("transformers", reason="transformers is the reference for interop; install the hf (or dev) extra")


def randomize(model: torch.nn.Module, seed: int = 0) -> None:
    """Non-trivial values everywhere (norm gains around 1, biases non-zero), so a misplaced tensor shows."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1 and name.endswith("weight"):
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=generator))
            else:
                p.copy_(0.2 * torch.randn(p.shape, generator=generator))


def hf_model(transformers: Any, architecture: str, tied: bool, vocab_size: int = VOCAB, eot: int | None = None) -> torch.nn.Module:
    """A tiny random HF model whose epsilon, MLP width and rotary base are not the defaults."""
    common = dict(vocab_size=vocab_size, tie_word_embeddings=tied, bos_token_id=eot, eos_token_id=eot)
    if architecture == GPT2:
        config = transformers.GPT2Config(n_positions=64, n_embd=64, n_layer=2, n_head=4, n_inner=96, layer_norm_epsilon=1e-4, **common)
    else:
        llama = dict(hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-5, rope_parameters={"rope_type": "default", "rope_theta": 50000.0}, **common)
        config = transformers.LlamaConfig(**llama) if architecture == LLAMA else transformers.Qwen3Config(head_dim=16, **llama)
    model = getattr(transformers, architecture)(config).eval()
    randomize(model)
    return model


def save_hf_tokenizer(transformers: Any, tokenizer: Tokenizer, directory: Path) -> None:
    """Our tokenizer as transformers itself saves one (tokenizer.json, its config, the template)."""
    from tokenizers import Tokenizer as HFTokenizer

    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=HFTokenizer.from_str(json.dumps(to_hf_json(tokenizer))), bos_token=EOT, eos_token=EOT)
    fast.chat_template = TEMPLATE
    fast.save_pretrained(directory)


def hf_logits(model: torch.nn.Module, idx: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(idx).logits


def our_logits(model: GPT, idx: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(idx)[0]


# ---- from-hf --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("architecture", "tied", "weights"),
    [(GPT2, False, "sharded"), (GPT2, True, "hub"), (LLAMA, True, "bin"), (LLAMA, False, "safetensors"), (QWEN3, True, "safetensors")],
    ids=["gpt2-untied-sharded", "gpt2-hub-names", "llama-tied-bin", "llama-untied", "qwen3-tied"],
)
def test_from_hf_gives_transformers_logits_and_to_hf_gives_the_tensors_back(transformers: Any, tokenizer: Tokenizer, tmp_path: Path, architecture: str, tied: bool, weights: str) -> None:
    reference = hf_model(transformers, architecture, tied, eot=tokenizer.eot_id)
    folder = tmp_path / "hf"
    if weights == "bin":
        reference.config.save_pretrained(folder)
        torch.save(reference.state_dict(), folder / "pytorch_model.bin")
    elif weights == "hub":
        # As the hub's gpt2 stores it: saved from GPT2Model (no "transformer."), with mask buffers.
        reference.config.save_pretrained(folder)
        state = {name.removeprefix("transformer."): t for name, t in reference.state_dict().items() if name != "lm_head.weight"}
        state.update({f"h.{i}.attn.bias": torch.ones(1, 1, 64, 64).tril() for i in range(2)})
        save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    else:
        reference.save_pretrained(folder, max_shard_size="100KB" if weights == "sharded" else "1GB")
        assert (folder / "model.safetensors.index.json").exists() == (weights == "sharded")
    save_hf_tokenizer(transformers, tokenizer, folder)

    from_hf(folder, tmp_path / "ours")
    model, loaded_tokenizer, meta = load_model(tmp_path / "ours")
    config = model.config
    assert (config.vocab_size, config.tie_embeddings, config.mlp_hidden) == (VOCAB, tied, 96 if architecture == GPT2 else 160)
    assert config.eps == (1e-4 if architecture == GPT2 else 1e-5) == model.transformer.ln_f.eps
    assert config.qk_norm == (architecture == QWEN3) and (architecture == GPT2 or config.rope_theta == 50000.0)
    assert loaded_tokenizer.hash == tokenizer.hash
    assert meta["source"] == {"path": str(folder.resolve()), "architecture": architecture} and meta["chat_template"] == TEMPLATE
    idx = torch.randint(0, VOCAB, (2, 24), generator=torch.Generator().manual_seed(1))  # ids past the tokenizer's too
    torch.testing.assert_close(our_logits(model, idx), hf_logits(reference, idx), atol=1e-5, rtol=1e-5)

    to_hf(tmp_path / "ours", tmp_path / "back")
    back = load_file(str(tmp_path / "back" / "model.safetensors"))
    expected = {name: t for name, t in reference.state_dict().items() if not (tied and name == "lm_head.weight")}
    assert set(back) == set(expected)
    for name, tensor in expected.items():
        assert torch.equal(back[name], tensor), name
    again = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "back", local_files_only=True).eval()
    torch.testing.assert_close(hf_logits(again, idx), hf_logits(reference, idx), atol=1e-5, rtol=1e-5)
    assert transformers.AutoTokenizer.from_pretrained(tmp_path / "back", local_files_only=True).chat_template == TEMPLATE


def test_from_hf_gpt2_with_openai_vocabulary_files(transformers: Any, tmp_path: Path) -> None:
    """GPT-2's vocab.json + merges.txt (no tokenizer.json): the real 50,257-token vocabulary
    encodes as transformers' GPT-2 tokenizer does, and the logits match."""
    folder = tmp_path / "gpt2"
    shutil.copy(shared_file("gpt2/encoder.json"), tmp_path / "vocab.json")
    shutil.copy(shared_file("gpt2/vocab.bpe"), tmp_path / "merges.txt")
    reference = hf_model(transformers, GPT2, tied=True, vocab_size=50257, eot=50256)
    reference.save_pretrained(folder)
    for name in ("vocab.json", "merges.txt"):
        shutil.move(tmp_path / name, folder / name)

    from_hf(folder, tmp_path / "ours")
    model, ours, meta = load_model(tmp_path / "ours")
    assert "chat_template" not in meta and ours.eot_id == 50256
    theirs = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
    for text in TEXTS:
        assert ours.encode(text, allowed_special="all") == theirs(text)["input_ids"], text
    idx = torch.tensor([ours.encode_ordinary(TEXTS[1])])
    torch.testing.assert_close(our_logits(model, idx), hf_logits(reference, idx), atol=1e-5, rtol=1e-5)


# ---- to-hf ----------------------------------------------------------------------------------

OURS = {
    GPT2: dict(norm_eps=1e-4, mlp_hidden_size=80),
    LLAMA: dict(position="rope", norm="rmsnorm", mlp="swiglu", bias=False, n_kv_head=2, tie_embeddings=False, rope_theta=20000.0),
    QWEN3: dict(position="rope", norm="rmsnorm", mlp="swiglu", bias=False, n_kv_head=1, qk_norm=True, norm_eps=1e-5, mlp_hidden_size=100),
}


def our_checkpoint(path: Path, tokenizer: Tokenizer, meta: dict[str, Any] | None = None, **settings: Any) -> GPT:
    model = GPT(GPTConfig(vocab_size=VOCAB, block_size=64, n_layer=2, n_head=4, n_embd=64, **settings)).eval()
    randomize(model, seed=2)
    write_checkpoint_dir(path, model.state_dict(), model.config, tokenizer, meta or {})
    return model


@pytest.mark.parametrize("architecture", [GPT2, LLAMA, QWEN3])
def test_to_hf_loads_in_transformers_with_the_same_logits_ids_and_template(transformers: Any, tokenizer: Tokenizer, tmp_path: Path, architecture: str) -> None:
    run = tmp_path / "run"  # a run directory: its newest checkpoint is converted
    ours = our_checkpoint(run / "checkpoints" / checkpoint_name(0), tokenizer, {"chat_template": TEMPLATE}, **OURS[architecture])
    to_hf(run, tmp_path / "hf")

    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", local_files_only=True).eval()
    assert type(theirs).__name__ == architecture
    idx = torch.randint(0, VOCAB, (2, 32), generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(hf_logits(theirs, idx), our_logits(ours, idx), atol=1e-5, rtol=1e-5)

    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf", local_files_only=True)
    for text in TEXTS:
        ids = tokenizer.encode(text, allowed_special="all")
        assert hf_tokenizer(text)["input_ids"] == ids, text
        assert hf_tokenizer.decode(ids) == text
    assert hf_tokenizer.eos_token == EOT and hf_tokenizer.model_max_length == 64
    assert hf_tokenizer.chat_template == TEMPLATE
    # generate stops at every special token, as our engine does.
    generation = transformers.GenerationConfig.from_pretrained(tmp_path / "hf", local_files_only=True)
    assert generation.eos_token_id == sorted(tokenizer.special_tokens.values())
    assert hf_tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False) == "<|im_start|>user\nhi<|endoftext|>\nünïcode ✓"

    # And back: the template from tokenizer_config.json, the same architecture and weights (an
    # MLP width is the same whether a ratio or mlp_hidden_size gives it).
    from_hf(tmp_path / "hf", tmp_path / "again")
    again, _, meta = load_model(tmp_path / "again")
    assert meta["chat_template"] == TEMPLATE
    width = {"mlp_ratio": 1.0, "mlp_hidden_size": ours.config.mlp_hidden}
    assert dataclasses.replace(again.config, **width) == dataclasses.replace(ours.config, **width)
    for name, tensor in ours.state_dict().items():
        assert torch.equal(again.state_dict()[name], tensor), name


def test_to_hf_bfloat16(tokenizer: Tokenizer, tmp_path: Path) -> None:
    our_checkpoint(tmp_path / "ckpt", tokenizer, **OURS[LLAMA])
    to_hf(tmp_path / "ckpt", tmp_path / "hf", dtype="bfloat16")
    assert {t.dtype for t in load_file(str(tmp_path / "hf" / "model.safetensors")).values()} == {torch.bfloat16}
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["dtype"] == "bfloat16"


# ---- refusals -------------------------------------------------------------------------------


LLAMA_CONFIG = {"architectures": [LLAMA], "hidden_size": 64, "intermediate_size": 160, "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 320}


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "rope_scaling of rope_type 'llama3'"),
        ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e6}}, "rope_parameters of rope_type 'yarn'"),
        ({"attention_bias": True}, "attention_bias true"),
        ({"mlp_bias": True}, "mlp_bias true"),
        ({"head_dim": 32}, "head_dim 32"),
        ({"hidden_act": "gelu"}, "hidden_act 'gelu'"),
        ({"architectures": [QWEN3], "head_dim": 16, "use_sliding_window": True}, "use_sliding_window true"),
        ({"architectures": [QWEN3]}, "head_dim 128"),  # Qwen3Config's default, not hidden / heads
        ({"architectures": [GPT2], "activation_function": "gelu"}, "activation_function 'gelu'"),
        ({"architectures": [GPT2], "scale_attn_by_inverse_layer_idx": True}, "scale_attn_by_inverse_layer_idx true"),
        ({"architectures": ["MistralForCausalLM"]}, "MistralForCausalLM model"),
        ({"num_attention_heads": "four"}, 'num_attention_heads to "four"'),
        ({"intermediate_size": 0}, "intermediate_size to 0"),
        ({"hidden_size": None}, "hidden_size to null"),
    ],
)
def test_settings_that_cannot_be_reproduced_are_named(changes: dict[str, Any], named: str) -> None:
    with pytest.raises(UserError, match="^[^\n]*$") as error:
        config_from_hf({**LLAMA_CONFIG, **changes}, Path("config.json"))
    assert named in str(error.value)


def test_llama_defaults_and_widths_are_carried_exactly() -> None:
    architecture, config = config_from_hf({**LLAMA_CONFIG, "num_key_value_heads": 2, "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "rope_scaling": None}, Path("config.json"))
    assert architecture == LLAMA and not config.tie_embeddings and config.n_kv_head == 2
    assert (config.mlp_hidden, config.eps, config.rope_theta, config.block_size) == (160, 1e-5, 500000.0, 2048)


def convert(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str]:
    """`scratchlm convert ARGS` through the CLI's entry point: exit status and what it printed."""
    app = typer.Typer()
    app.callback()(lambda: None)
    app.add_typer(convert_app, name="convert")
    monkeypatch.setattr(cli, "app", app)
    monkeypatch.setattr(sys, "argv", ["scratchlm", "convert", *map(str, args)])
    with pytest.raises(SystemExit) as exit:
        cli.main()
    captured = capsys.readouterr()
    return exit.value.code, captured.out + captured.err


def assert_one_sentence(status: int, output: str, *words: str) -> None:
    assert status == 2, output
    assert output.startswith("error: ") and output.count("\n") == 1 and "Traceback" not in output, output
    for word in words:
        assert word in output, output


def test_bad_inputs_are_one_sentence(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tokenizer: Tokenizer, tmp_path: Path) -> None:
    folder = tmp_path / "hf"
    assert_one_sentence(*convert(monkeypatch, capsys, "from-hf", folder, tmp_path / "out"), "No Hugging Face model folder")
    folder.mkdir()
    assert_one_sentence(*convert(monkeypatch, capsys, "from-hf", folder, tmp_path / "out"), "has no config.json")
    (folder / "config.json").write_text('{"architectures": ["Llama')
    assert_one_sentence(*convert(monkeypatch, capsys, "from-hf", folder, tmp_path / "out"), "not valid JSON")
    (folder / "config.json").write_text(json.dumps({"architectures": ["BertForMaskedLM"]}))
    assert_one_sentence(*convert(monkeypatch, capsys, "from-hf", folder, tmp_path / "out"), "BertForMaskedLM", GPT2)
    (folder / "config.json").write_text(json.dumps(LLAMA_CONFIG))
    (folder / "tokenizer.json").write_text(json.dumps({"model": {"type": "WordPiece", "vocab": {}}}))
    assert_one_sentence(*convert(monkeypatch, capsys, "from-hf", folder, tmp_path / "out"), "BPE")
    (folder / "tokenizer.json").write_text(json.dumps({"model": {"type": "BPE"}, "pre_tokenizer": {"type": "ByteLevel"}}))
    assert_one_sentence(*convert(monkeypatch, capsys, "from-hf", folder, tmp_path / "out"), "tokenizer files", "cannot be read")
    (folder / "tokenizer.json").write_text(json.dumps(to_hf_json(tokenizer)))
    assert_one_sentence(*convert(monkeypatch, capsys, "from-hf", folder, tmp_path / "out"), "holds no weights")
    (folder / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header}")
    assert_one_sentence(*convert(monkeypatch, capsys, "from-hf", folder, tmp_path / "out"), "model.safetensors cannot be read")

    assert_one_sentence(*convert(monkeypatch, capsys, "to-hf", tmp_path / "nothing", tmp_path / "out"), "No checkpoint at")
    our_checkpoint(tmp_path / "ckpt", tokenizer, norm="rmsnorm")
    assert_one_sentence(*convert(monkeypatch, capsys, "to-hf", tmp_path / "ckpt", tmp_path / "out"), "No Hugging Face architecture", "norm='rmsnorm'")
    our_checkpoint(tmp_path / "ckpt", tokenizer, position="rope", norm="rmsnorm", mlp="swiglu")
    assert_one_sentence(*convert(monkeypatch, capsys, "to-hf", tmp_path / "ckpt", tmp_path / "out"), "Llama or Qwen3", "bias=true")
    assert_one_sentence(*convert(monkeypatch, capsys, "to-hf", tmp_path / "ckpt", tmp_path / "out", "--dtype", "int8"), "--dtype")


def test_out_is_replaced_only_with_overwrite_and_only_if_it_is_a_conversion(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tokenizer: Tokenizer, tmp_path: Path) -> None:
    our_checkpoint(tmp_path / "ckpt", tokenizer)
    out = tmp_path / "hf"
    assert convert(monkeypatch, capsys, "to-hf", tmp_path / "ckpt", out)[0] == 0
    assert_one_sentence(*convert(monkeypatch, capsys, "to-hf", tmp_path / "ckpt", out), "already exists", "--overwrite")
    assert convert(monkeypatch, capsys, "to-hf", tmp_path / "ckpt", out, "--overwrite")[0] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "hf"]  # no temporary left behind

    assert convert(monkeypatch, capsys, "from-hf", out, tmp_path / "again")[0] == 0
    assert_one_sentence(*convert(monkeypatch, capsys, "from-hf", out, tmp_path / "again"), "already exists", "--overwrite")
    assert convert(monkeypatch, capsys, "from-hf", out, tmp_path / "again", "--overwrite")[0] == 0
    assert_one_sentence(*convert(monkeypatch, capsys, "from-hf", out, tmp_path, "--overwrite"), "would replace")
    (out / "notes.txt").write_text("mine")
    assert_one_sentence(*convert(monkeypatch, capsys, "to-hf", tmp_path / "ckpt", out, "--overwrite"), "not a converted Hugging Face model's")
    assert (out / "notes.txt").read_text() == "mine"
