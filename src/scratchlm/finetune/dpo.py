"""`scratchlm finetune dpo`: preference tuning with Direct Preference Optimization.

For a prompt x with a preferred answer y_w and a worse one y_l, DPO (Rafailov et al. 2023)
minimizes  -log σ(β·[(log π(y_w|x) − log π_ref(y_w|x)) − (log π(y_l|x) − log π_ref(y_l|x))]),
where π is the model being tuned and π_ref the checkpoint it started from. β·(log π − log π_ref)
is an answer's implicit reward; the reward margin (chosen minus rejected) and the share of pairs
where it is positive are what the held-out evaluation logs.

The reference never changes, so its log-probabilities are computed once, before training, from
`train.init_from` loaded afresh (also on `--resume`), and stored with each pair: no second model
stays in memory while the policy trains. Prompts are laid out with the checkpoint's chat template
when it has one (as `chat` and `serve` send them), else as plain text; each answer ends with the
template's end-of-turn token or `<|endoftext|>`, and only answer tokens count.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from scratchlm.checkpoints import load_weights
from scratchlm.config import to_dict
from scratchlm.console import info
from scratchlm.errors import UserError
from scratchlm.finetune.job import start_finetune
from scratchlm.finetune.settings import DPOConfig
from scratchlm.generate.chat import ChatFormat, Message
from scratchlm.model.gpt import GPT
from scratchlm.runtime import autocast
from scratchlm.tokenizer.tokenizer import EOT, Tokenizer

IGNORE = -100


@dataclass
class Pair:
    """One preference pair as tokens: the prompt, then each answer (ending in its end-of-turn id)."""

    prompt: list[int]
    chosen: list[int]
    rejected: list[int]
    reference: tuple[float, float] = (0.0, 0.0)
    """log π_ref of the chosen and the rejected answer."""


class PairBatch(NamedTuple):
    """B pairs as 2B rows, the chosen answers first: ids (2B, T), targets (2B, T) with -100 outside
    the answers, and the reference log-probabilities (2B,)."""

    x: torch.Tensor
    y: torch.Tensor
    reference: torch.Tensor


# ---- reading and encoding -----------------------------------------------------------------------


def read_pairs(path: str | Path) -> list[tuple[list[Message], str, str]]:
    """(prompt messages, chosen, rejected) from a .jsonl file or a .json list; one sentence per bad record."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"No such file: {path}; pass a .jsonl file of {{\"prompt\", \"chosen\", \"rejected\"}} records.")
    text = path.read_text(encoding="utf-8")
    if not text.strip():
        raise UserError(f"{path} is empty; it needs one preference pair per line.")
    try:
        records = json.loads(text) if text.lstrip().startswith("[") else [json.loads(line) for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError as error:
        raise UserError(f"{path} is not valid JSON or JSON lines ({error}); fix the file.") from None
    pairs = []
    for number, record in enumerate(records, start=1):
        where = f"{path}, record {number}"
        if not isinstance(record, dict) or any(not isinstance(record.get(key), str) for key in ("chosen", "rejected")):
            raise UserError(f"{where} needs text fields \"chosen\" and \"rejected\" (and a \"prompt\").")
        prompt = record.get("prompt")
        if isinstance(prompt, str):
            messages = [Message("user", prompt)]
        elif isinstance(prompt, list) and all(isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in prompt):
            messages = [Message(m["role"], m["content"]) for m in prompt]
        else:
            raise UserError(f"{where} needs a \"prompt\": a text, or a list of {{\"role\", \"content\"}} messages.")
        pairs.append((messages, record["chosen"], record["rejected"]))
    return pairs


def end_of_turn(tokenizer: Tokenizer, template: str | None) -> list[int]:
    """The ids that end an answer: ChatML's <|im_end|> when the template uses it, else <|endoftext|>."""
    if template and "<|im_end|>" in template and "<|im_end|>" in tokenizer.special_tokens:
        return [tokenizer.special_tokens["<|im_end|>"]]
    return [tokenizer.special_tokens[EOT]] if EOT in tokenizer.special_tokens else []


def encode_pairs(pairs: Sequence[tuple[list[Message], str, str]], tokenizer: Tokenizer, template: str | None, max_length: int) -> tuple[list[Pair], Counter[str]]:
    """Token ids of each pair, fitted to `max_length` per sequence: the prompt loses its start
    (keeping at least half), then the longer answer its end; a pair left with an empty answer
    is skipped. Every cut is counted."""
    chat = ChatFormat(tokenizer, template)
    end = end_of_turn(tokenizer, template)
    out, counts = [], Counter[str]()
    for messages, chosen, rejected in pairs:
        prompt = chat.encode(messages)
        answers = [tokenizer.encode_ordinary(a) + end for a in (chosen, rejected)]
        longest = max(len(a) for a in answers)
        if len(prompt) + longest > max_length:
            keep = max(max_length - longest, max_length // 2, 1)
            if keep < len(prompt):
                prompt = prompt[len(prompt) - keep :]
                counts["prompt_cut"] += 1
            room = max_length - len(prompt)
            if longest > room:
                answers = [a[:room] for a in answers]
                counts["answer_cut"] += 1
        if not all(answers):
            counts["skipped"] += 1
            continue
        out.append(Pair(prompt, answers[0], answers[1]))
    counts["pairs"] = len(out)
    return out, counts


# ---- batches ----------------------------------------------------------------------------------------


def collate(pairs: Sequence[Pair], pad_id: int, device: torch.device) -> PairBatch:
    """2B rows (chosen answers, then rejected), right-padded; targets only on answer tokens."""
    rows = [(p.prompt, p.chosen) for p in pairs] + [(p.prompt, p.rejected) for p in pairs]
    width = max(len(prompt) + len(answer) for prompt, answer in rows) - 1
    x = torch.full((len(rows), width), pad_id, dtype=torch.long)
    y = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    for i, (prompt, answer) in enumerate(rows):
        ids = prompt + answer
        x[i, : len(ids) - 1] = torch.tensor(ids[:-1])
        y[i, len(prompt) - 1 : len(ids) - 1] = torch.tensor(answer)  # position t predicts ids[t + 1]
    reference = torch.tensor([p.reference[0] for p in pairs] + [p.reference[1] for p in pairs])
    return PairBatch(x.to(device), y.to(device), reference.to(device))


class PairBatches:
    """Endless micro-batches of pairs in seeded epoch order (a `BatchSource`), and one-pass evaluation."""

    def __init__(self, pairs: Sequence[Pair], micro_batch_size: int, *, pad_id: int, seed: int = 0, device: torch.device | str = "cpu") -> None:
        if not pairs:
            raise UserError("There are no preference pairs to train on; every pair was skipped (see the counts above) or the file is empty.")
        self.pairs, self.micro_batch_size, self.pad_id, self.seed = list(pairs), micro_batch_size, pad_id, seed
        self.device = torch.device(device)
        self.epoch, self.position = 0, 0

    def _order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.pairs))

    def next_batch(self) -> PairBatch:
        chosen = []
        while len(chosen) < self.micro_batch_size:
            order = self._order(self.epoch)
            take = order[self.position : self.position + self.micro_batch_size - len(chosen)]
            chosen += take.tolist()
            self.position += len(take)
            if self.position >= len(order):
                self.epoch, self.position = self.epoch + 1, 0
        return collate([self.pairs[i] for i in chosen], self.pad_id, self.device)

    def iter_eval(self) -> Iterator[PairBatch]:
        for start in range(0, len(self.pairs), self.micro_batch_size):
            yield collate(self.pairs[start : start + self.micro_batch_size], self.pad_id, self.device)

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "position": self.position, "pairs": len(self.pairs), "seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if (state["pairs"], state["seed"]) != (len(self.pairs), self.seed):
            raise UserError(f"The checkpoint was trained on {state['pairs']} pairs with seed {state['seed']}; resume with the same data and train.seed.")
        self.epoch, self.position = state["epoch"], state["position"]


# ---- the loss ----------------------------------------------------------------------------------------


def sequence_log_probs(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """log π(answer | prompt) per row (rows,): the sum over answer tokens of their log-probability."""
    _, losses = model(x, y, reduction="none")  # (rows, T): −log p at answer tokens, 0 elsewhere
    return -losses.float().sum(dim=1)


def dpo_terms(policy: torch.Tensor, reference: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss per pair, chosen reward, rejected reward) from 2B log-probabilities, chosen first."""
    pairs = policy.size(0) // 2
    rewards = beta * (policy - reference)  # (2B,)
    chosen, rejected = rewards[:pairs], rewards[pairs:]
    return -F.logsigmoid(chosen - rejected), chosen, rejected


def dpo_loss(beta: float) -> Any:
    def loss(model: nn.Module, batch: PairBatch) -> torch.Tensor:
        return dpo_terms(sequence_log_probs(model, batch.x, batch.y), batch.reference, beta)[0].mean()

    return loss


def preference_evaluator(batches: PairBatches, beta: float, device: torch.device, dtype: torch.dtype) -> Any:
    """Held-out DPO loss, reward margin (chosen − rejected), accuracy (margin > 0) and both rewards."""

    def evaluate(model: nn.Module) -> Mapping[str, float]:
        losses, chosen, rejected = [], [], []
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad(), autocast(device, dtype):
                for batch in batches.iter_eval():
                    loss, c, r = dpo_terms(sequence_log_probs(model, batch.x, batch.y), batch.reference, beta)
                    losses.append(loss)
                    chosen.append(c)
                    rejected.append(r)
        finally:
            model.train(was_training)
        c, r = torch.cat(chosen), torch.cat(rejected)
        return {"loss": float(torch.cat(losses).mean()), "reward_margin": float((c - r).mean()), "accuracy": float((c > r).float().mean()), "chosen_reward": float(c.mean()), "rejected_reward": float(r.mean())}

    return evaluate


def attach_reference(model: GPT, pairs: list[Pair], micro_batch_size: int, pad_id: int, device: torch.device, dtype: torch.dtype) -> None:
    """Store log π_ref of both answers of every pair, computed with `model` (the reference)."""
    model.eval()
    with torch.no_grad(), autocast(device, dtype):
        for start in range(0, len(pairs), micro_batch_size):
            chunk = pairs[start : start + micro_batch_size]
            batch = collate(chunk, pad_id, device)
            log_probs = sequence_log_probs(model, batch.x, batch.y).tolist()
            for i, pair in enumerate(chunk):
                pair.reference = (log_probs[i], log_probs[len(chunk) + i])


# ---- the job ---------------------------------------------------------------------------------------


def _describe(counts: Counter[str]) -> str:
    cuts = [f"{counts[k]} {name}" for k, name in (("prompt_cut", "prompts cut from the start"), ("answer_cut", "answers cut at the end"), ("skipped", "skipped: no answer left")) if counts[k]]
    return f"{counts['pairs']:,} pairs" + (f"; {', '.join(cuts)}" if cuts else "")


def finetune_dpo(config: DPOConfig, resume: bool = False, overwrite: bool = False) -> dict[str, Any]:
    """Run a DPO job; returns the held-out figures before and after."""
    data = config.data
    if not data.train:
        raise UserError("No preference pairs: set data.train to a .jsonl file of {\"prompt\", \"chosen\", \"rejected\"} records.")
    records = read_pairs(data.train)
    if data.val:
        train_records, held_records = records, read_pairs(data.val)
    else:
        order = np.random.default_rng(config.train.seed).permutation(len(records))
        held = max(1, round(data.holdout * len(records))) if data.holdout else 0
        held_records = [records[i] for i in sorted(order[:held])]
        train_records = [records[i] for i in sorted(order[held:])]
    if not held_records:
        raise UserError("No held-out pairs to evaluate on: set data.val, or data.holdout above 0.")

    run = start_finetune(config.train, config.optim, config.lora, task="dpo", resume=resume, overwrite=overwrite, run_config=to_dict(config))
    base = run.base
    assert base is not None
    template = base.meta.get("chat_template")
    if isinstance(template, str) and template:
        run.meta["chat_template"] = template  # the tuned model keeps its base's format
    max_length = min(data.max_length or run.model.config.block_size, run.model.config.block_size)
    micro, pad = config.train.micro_batch_size, run.tokenizer.eot_id or 0
    train_pairs, counts = encode_pairs(train_records, run.tokenizer, run.chat_template, max_length)
    held_pairs, held_counts = encode_pairs(held_records, run.tokenizer, run.chat_template, max_length)
    info(f"train: {_describe(counts)}; held out: {_describe(held_counts)}")

    # The reference is the starting checkpoint, loaded afresh (on --resume too) and freed after.
    reference = GPT(base.config)
    load_weights(reference, base)
    attach_reference(reference.to(run.device), train_pairs + held_pairs, micro, pad, run.device, run.dtype)
    del reference

    if data.batch_size % micro:
        raise UserError(f"data.batch_size {data.batch_size} is not a multiple of train.micro_batch_size {micro}; use {max(1, data.batch_size // micro) * micro}.")
    batches = PairBatches(train_pairs, micro, pad_id=pad, seed=config.train.seed, device=run.device)
    evaluator = preference_evaluator(PairBatches(held_pairs, micro, pad_id=pad, device=run.device), data.beta, run.device, run.dtype)
    before = dict(evaluator(run.model)) if not resume else {}
    if before:
        info(f"held out before tuning: DPO loss {before['loss']:.4f}, reward margin {before['reward_margin']:.4f}, accuracy {before['accuracy']:.3f}")
    final = run.fit(batches, dpo_loss(data.beta), {"val": evaluator}, tokens_per_micro_batch=2 * micro * max_length, batch_tokens=2 * data.batch_size * max_length, count_tokens=lambda batch: batch.x.numel())
    info(f"held out after tuning: DPO loss {final['val_loss']:.4f}, reward margin {final['val_reward_margin']:.4f}, accuracy {final['val_accuracy']:.3f}")
    summary = {"before": before, "after": {k.removeprefix("val_"): v for k, v in final.items() if k.startswith("val_")}}
    (run.out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return {**final, **summary}
