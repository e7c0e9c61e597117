"""DPO: the loss equals a hand computation, the policy starts at the reference (margin 0), and
training makes the held-out reward margin grow, with and without LoRA."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch
from conftest import synthetic_text

from scratchlm.config import load_config
from scratchlm.finetune.dpo import Pair, collate, dpo_loss, encode_pairs, finetune_dpo, read_pairs
from scratchlm.finetune.settings import DPOConfig
from scratchlm.generate.chat import Message
from scratchlm.model.gpt import GPT, GPTConfig
from scratchlm.tokenizer.train import TokenizerTrainConfig, train_from_texts
from scratchlm.train.checkpoint import save_checkpoint

torch.set_num_threads(1)
WORDS = "the of and to in was he that it for on with as his they be at one have this from".split()


def answer_log_prob(model: GPT, prompt: list[int], answer: list[int]) -> float:
    """By hand: run the whole sequence, sum log p of each answer token given what precedes it."""
    ids = torch.tensor([prompt + answer])
    with torch.no_grad():
        logits, _ = model(ids)
    log_probs = logits[0].log_softmax(dim=-1)
    return sum(float(log_probs[len(prompt) - 1 + i, token]) for i, token in enumerate(answer))


def test_the_dpo_loss_is_the_hand_computed_one() -> None:
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=64, block_size=32, n_layer=2, n_head=2, n_embd=32)).eval()
    pairs = [Pair([1, 2, 3], [4, 5, 6], [7, 8], (-9.0, -7.5)), Pair([9, 10], [11], [12, 13, 14, 15], (-3.0, -12.0))]
    beta = 0.3
    want = 0.0
    for p in pairs:
        chosen = beta * (answer_log_prob(model, p.prompt, p.chosen) - p.reference[0])
        rejected = beta * (answer_log_prob(model, p.prompt, p.rejected) - p.reference[1])
        want += -math.log(1 / (1 + math.exp(-(chosen - rejected))))
    with torch.no_grad():
        got = float(dpo_loss(beta)(model, collate(pairs, pad_id=0, device=torch.device("cpu"))))
    assert got == pytest.approx(want / len(pairs), rel=1e-5)


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("dpo")
    tokenizer = train_from_texts([synthetic_text(0)], TokenizerTrainConfig(vocab_size=300, workers=1))
    torch.manual_seed(0)
    save_checkpoint(directory / "base", 1, GPT(GPTConfig(vocab_size=320, block_size=64, n_layer=2, n_head=2, n_embd=48)), tokenizer, meta={"tokens_seen": 0})
    lines = [json.dumps({"prompt": f"Say {w}:", "chosen": f" {w} {w}", "rejected": f" {WORDS[(i + 5) % len(WORDS)]} no"}) for i, w in enumerate(WORDS * 3)]
    (directory / "pairs.jsonl").write_text("\n".join(lines) + "\n")
    return directory


def config(base: Path, out: Path, *overrides: str) -> DPOConfig:
    return load_config(DPOConfig, None, [
        f"data.train={base / 'pairs.jsonl'}", "data.holdout=0.2", "data.batch_size=8", "data.beta=0.5",
        f"train.init_from={base / 'base'}", f"train.out_dir={out}", "train.micro_batch_size=4", "train.max_steps=40",
        "train.eval_every=20", "train.dtype=float32", "optim.lr=2e-3", "optim.warmup_steps=2", *overrides,
    ])


@pytest.mark.parametrize("lora", [[], ["lora.rank=4", "optim.lr=1e-2"]], ids=["full", "lora"])
def test_training_grows_the_held_out_reward_margin(base: Path, tmp_path: Path, lora: list[str]) -> None:
    result = finetune_dpo(config(base, tmp_path / "run", *lora))
    assert result["before"]["reward_margin"] == pytest.approx(0.0, abs=1e-4)  # the policy starts as the reference
    assert result["before"]["loss"] == pytest.approx(math.log(2), abs=1e-4)
    assert result["after"]["reward_margin"] > 1.0 and result["after"]["accuracy"] >= 0.9
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["after"]["accuracy"] == result["after"]["accuracy"]


def test_long_pairs_are_cut_and_counted() -> None:
    tokenizer = train_from_texts([synthetic_text(0)], TokenizerTrainConfig(vocab_size=300, workers=1))
    records = [([Message("user", "the word " * 30)], " a long answer " * 10, " no"), ([Message("user", "hi")], " yes", " no")]
    pairs, counts = encode_pairs(records, tokenizer, None, 32)
    assert counts["pairs"] == 2 and counts["prompt_cut"] == 1 and counts["answer_cut"] == 1
    assert all(len(p.prompt) + max(len(p.chosen), len(p.rejected)) <= 32 for p in pairs)
    assert pairs[1].chosen[-1] == tokenizer.eot_id  # an answer ends with <|endoftext|>


def test_bad_pair_files_are_one_sentence(tmp_path: Path, base: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "bad.jsonl").write_text(json.dumps({"prompt": "x", "chosen": "y"}) + "\n")
    (tmp_path / "broken.jsonl").write_text("{not json\n")
    for name, message in (("empty.jsonl", "is empty"), ("bad.jsonl", "record 1 needs text fields"), ("broken.jsonl", "not valid JSON"), ("missing.jsonl", "No such file")):
        with pytest.raises(Exception, match=message):
            read_pairs(tmp_path / name)
    from scratchlm.cli import main

    monkeypatch.setattr(sys, "argv", ["scratchlm", "finetune", "dpo", f"--set=data.train={tmp_path / 'bad.jsonl'}", f"--set=train.init_from={base / 'base'}", f"--set=train.out_dir={tmp_path / 'o'}"])
    with pytest.raises(SystemExit) as exit:
        main()
    err = capsys.readouterr().err
    assert exit.value.code == 2 and "record 1 needs text fields" in err and "Traceback" not in err
