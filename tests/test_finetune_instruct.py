"""`finetune instruct` end to end on a tiny model: the held-out response loss falls, the chat
template and the new role tokens travel with the checkpoint, LoRA trains only its adapters and
leaves the base alone, and a resumed job continues exactly."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from conftest import synthetic_text

from scratchlm.checkpoints import find_checkpoint, list_checkpoints, load_model
from scratchlm.config import load_config
from scratchlm.finetune.instruct import finetune_instruct
from scratchlm.finetune.instruct_data import FORMATS
from scratchlm.finetune.settings import InstructConfig
from scratchlm.finetune.vocab import add_special_tokens, fit_vocabulary
from scratchlm.generate.chat import ChatFormat, Message
from scratchlm.model.gpt import GPT, GPTConfig
from scratchlm.model.lora import LoraConfig, load_adapter, weights_hash
from scratchlm.tokenizer.train import TokenizerTrainConfig, train_from_texts
from scratchlm.train.checkpoint import save_checkpoint
from scratchlm.train.metrics import read_metrics

torch.set_num_threads(1)
WORDS = "the of and to in was he that it for on with as his they be at one have this from".split()


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny pretrained-looking checkpoint and a file of Alpaca records (copy the word asked for)."""
    directory = tmp_path_factory.mktemp("instruct")
    tokenizer = train_from_texts([synthetic_text(0)], TokenizerTrainConfig(vocab_size=300, workers=1))
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=320, block_size=128, n_layer=2, n_head=2, n_embd=48))
    save_checkpoint(directory / "base", 100, model, tokenizer, meta={"tokens_seen": 0})
    records = [{"instruction": f"Repeat the word {w} twice.", "input": "", "output": f"{w} {w}"} for w in WORDS for _ in range(3)]
    (directory / "records.json").write_text(json.dumps(records))
    return directory


def config(base: Path, out: Path, *overrides: str) -> InstructConfig:
    settings = [
        f"data.train={base / 'records.json'}",
        "data.holdout=0.2",
        "data.batch_size=8",
        "data.eval_responses=3",
        "data.max_new_tokens=6",
        f"train.init_from={base / 'base'}",
        f"train.out_dir={out}",
        "train.micro_batch_size=4",
        "train.max_steps=30",
        "train.eval_every=15",
        "train.log_every=1",
        "train.dtype=float32",
        "optim.lr=3e-3",
        "optim.warmup_steps=2",
        *overrides,
    ]
    return load_config(InstructConfig, None, settings)


def test_instruction_tuning_lowers_the_held_out_loss_and_the_template_travels(base: Path, tmp_path: Path) -> None:
    result = finetune_instruct(config(base, tmp_path / "sft"))
    assert result["val_loss_after"] < result["val_loss_before"] - 0.5
    checkpoint = find_checkpoint(tmp_path / "sft")
    assert checkpoint.meta["task"] == "instruct" and checkpoint.meta["chat_template"] == FORMATS["alpaca"].template
    lines = (tmp_path / "sft" / "responses.jsonl").read_text().splitlines()
    assert len(lines) == 3 and {"reference", "response", "response_before", "rouge_l"} <= set(json.loads(lines[0]))
    # What `chat` and `serve` send is the prompt the model was tuned on.
    model, tokenizer, meta = load_model(tmp_path / "sft")
    prompt = ChatFormat(tokenizer, meta["chat_template"]).render([Message("user", "Repeat the word of twice.")])
    assert prompt.endswith("### Instruction:\nRepeat the word of twice.\n\n### Response:\n")


def test_chatml_adds_role_tokens_to_the_tokenizer_and_rows_to_the_model(base: Path, tmp_path: Path) -> None:
    finetune_instruct(config(base, tmp_path / "chatml", "data.format=chatml", "train.max_steps=4", "data.eval_responses=0"))
    checkpoint = find_checkpoint(tmp_path / "chatml")
    specials = checkpoint.tokenizer.special_tokens
    assert {"<|im_start|>", "<|im_end|>"} <= set(specials)
    assert checkpoint.config.vocab_size >= checkpoint.tokenizer.vocab_size
    assert "<|im_start|>" in checkpoint.meta["chat_template"]


def test_new_rows_start_at_the_mean_of_the_used_rows() -> None:
    tokenizer = train_from_texts([synthetic_text(0)], TokenizerTrainConfig(vocab_size=300, workers=1))
    grown, added = add_special_tokens(tokenizer, ("<|im_start|>", "<|im_end|>", "<|endoftext|>"))
    assert added == ["<|im_start|>", "<|im_end|>"] and grown.vocab_size == tokenizer.vocab_size + 2
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=16, tie_embeddings=False))
    fit_vocabulary(model, tokenizer.vocab_size, grown.vocab_size)
    assert model.transformer.wte.num_embeddings == model.lm_head.out_features == 64 * -(-grown.vocab_size // 64)
    for weight in (model.transformer.wte.weight, model.lm_head.weight):
        mean = weight[: tokenizer.vocab_size].mean(dim=0)
        assert torch.allclose(weight[tokenizer.vocab_size : grown.vocab_size], mean.expand(2, -1))


def test_lora_trains_only_adapters_and_they_load_onto_the_base(base: Path, tmp_path: Path) -> None:
    result = finetune_instruct(config(base, tmp_path / "lora", "lora.rank=4", "lora.alpha=8", "optim.lr=1e-2"))
    assert result["val_loss_after"] < result["val_loss_before"]
    checkpoint = find_checkpoint(tmp_path / "lora")
    assert checkpoint.meta["lora"]["rank"] == 4
    base_model, _, _ = load_model(base / "base")
    tuned, _, _ = load_model(tmp_path / "lora")  # adapters folded in
    adapter_model, _, _ = load_model(base / "base")
    base_file = list_checkpoints(base / "base")[-1] / "model.safetensors"
    assert load_adapter(adapter_model, tmp_path / "lora" / "adapter.safetensors", weights_hash(base_file)) == LoraConfig(**checkpoint.meta["lora"])
    ids = torch.tensor([[5, 9, 30, 2, 17]])
    torch.testing.assert_close(adapter_model(ids)[0], tuned(ids)[0], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(base_model(ids)[0], tuned(ids)[0])
    # Layers without adapters are the base's, untouched.
    assert torch.equal(tuned.state_dict()["transformer.h.0.mlp.c_fc.weight"], base_model.state_dict()["transformer.h.0.mlp.c_fc.weight"])


def test_a_resumed_job_continues_exactly(base: Path, tmp_path: Path) -> None:
    whole = tmp_path / "whole"
    finetune_instruct(config(base, whole, "train.max_steps=8", "train.checkpoint_every=4", "train.eval_every=4", "data.eval_responses=0", "lora.rank=2"))
    resumed = tmp_path / "resumed"
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copytree(whole / "checkpoints" / "step_0000004", resumed / "checkpoints" / "step_0000004")
    lines = (whole / "metrics.jsonl").read_text().splitlines()
    (resumed / "metrics.jsonl").write_text("".join(line + "\n" for line in lines if json.loads(line).get("step", 0) <= 4))
    finetune_instruct(config(base, resumed, "train.max_steps=8", "train.checkpoint_every=4", "train.eval_every=4", "data.eval_responses=0", "lora.rank=2"), resume=True)

    def losses(path: Path) -> list[tuple[int, float]]:
        return [(r["step"], r["loss"]) for r in read_metrics(path / "metrics.jsonl") if "loss" in r]

    assert losses(resumed) == losses(whole)


def test_bad_jobs_are_one_sentence(base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from scratchlm.cli import main

    cases = [
        ([f"train.init_from={base / 'base'}"], "No instruction data: set data.train"),
        ([f"data.train={base / 'records.json'}"], "set train.init_from"),
        ([f"data.train={tmp_path / 'nope.json'}", f"train.init_from={base / 'base'}"], "nope.json"),
        ([f"data.train={base / 'records.json'}", f"train.init_from={base / 'base'}", "data.format=vicuna"], "data.format is 'vicuna'"),
        ([f"data.train={base / 'records.json'}", f"train.init_from={base / 'base'}", "lora.targets=[\"*.attn.c_z\"]", "lora.rank=2"], "matches no linear layer"),
    ]
    for settings, message in cases:
        args = ["scratchlm", "finetune", "instruct", f"--set=train.out_dir={tmp_path / 'out'}", *[f"--set={s}" for s in settings]]
        monkeypatch.setattr(sys, "argv", args)
        with pytest.raises(SystemExit) as exit:
            main()
        err = capsys.readouterr().err
        assert exit.value.code == 2, err
        errors = [line for line in err.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and message in errors[0] and "Traceback" not in err, err
