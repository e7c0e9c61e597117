"""`scratchlm finetune instruct`: teach a checkpoint to answer instructions.

    records (Alpaca or chat JSON/JSONL) → conversations → held-out split → examples (prompt ids
    as `chat` will send them, loss only on response tokens) → length-bucketed batches
    →  the checkpoint (+ the format's role tokens, + LoRA)  →  Trainer.fit (lm_loss on masked
    targets)  →  checkpoints carrying the chat template  →  answers to held-out instructions

The held-out response loss of the untuned model is measured first, so the run shows what tuning
bought; the same held-out instructions are answered before and after (greedy), next to their
references, with exact match and ROUGE-L as a first look (`responses.jsonl`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from scratchlm.config import to_dict
from scratchlm.console import info
from scratchlm.errors import UserError
from scratchlm.finetune.instruct_data import (
    Conversation,
    InstructBatches,
    describe,
    encode_examples,
    get_format,
    read_records,
    split_holdout,
)
from scratchlm.finetune.job import FinetuneRun, start_finetune
from scratchlm.finetune.metrics import exact_match, rouge_l
from scratchlm.finetune.settings import InstructConfig
from scratchlm.generate.chat import ChatFormat
from scratchlm.generate.engine import Engine, Request
from scratchlm.generate.sampling import SamplingConfig
from scratchlm.runtime import autocast
from scratchlm.train.trainer import lm_loss


def response_loss(batches: InstructBatches, micro_batch_size: int, device: torch.device, dtype: torch.dtype) -> Any:
    """An evaluator: the mean loss per response token over every held-out example, once each."""

    def evaluate(model: nn.Module) -> Mapping[str, float]:
        total, count = 0.0, 0
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad(), autocast(device, dtype):
                for x, y in batches.iter_eval(micro_batch_size):
                    _, losses = model(x, y, reduction="none")  # (B, T), 0 where y is -100
                    total += float(losses.sum())
                    count += int((y != -100).sum())
        finally:
            model.train(was_training)
        return {"loss": total / max(count, 1), "tokens": count}

    return evaluate


def _answers(run: FinetuneRun, conversations: list[Conversation], max_new_tokens: int) -> list[str]:
    """Greedy answers of the run's model to each conversation's last user turn (in one batch)."""
    chat = ChatFormat(run.tokenizer, run.chat_template)
    engine = Engine(run.model, run.tokenizer, max_batch_size=8)
    requests = [Request(chat.encode(c[:-1]), max_new_tokens, SamplingConfig(temperature=0.0), stop_ids=chat.stop_ids, overflow="truncate") for c in conversations]
    with autocast(run.device, run.dtype):
        return [g.text.strip() for g in engine.run(requests)]


def finetune_instruct(config: InstructConfig, resume: bool = False, overwrite: bool = False) -> dict[str, Any]:
    """Run an instruction-tuning job; returns the held-out figures before and after."""
    data = config.data
    if not data.train:
        raise UserError("No instruction data: set data.train to a .json or .jsonl file of Alpaca records or chat messages.")
    fmt = get_format(data.format)
    train_records = read_records(data.train)
    if data.val:
        train_conv, held_out = train_records, read_records(data.val)
    else:
        train_conv, held_out = split_holdout(train_records, data.holdout, config.train.seed)
    if not held_out:
        raise UserError("No held-out records to evaluate on: set data.val, or data.holdout above 0 with enough records.")

    run = start_finetune(config.train, config.optim, config.lora, special_tokens=fmt.special_tokens, chat_template=fmt.template, task="instruct", resume=resume, overwrite=overwrite, run_config=to_dict(config))
    max_length = min(data.max_length or run.model.config.block_size, run.model.config.block_size)
    examples, counts = encode_examples(train_conv, run.tokenizer, fmt, max_length)
    info(f"train: {describe(counts)}")
    held_examples, held_counts = encode_examples(held_out, run.tokenizer, fmt, max_length)
    info(f"held out: {describe(held_counts)}")
    micro = config.train.micro_batch_size
    if data.batch_size % micro:
        raise UserError(f"data.batch_size {data.batch_size} is not a multiple of train.micro_batch_size {micro}; use {max(1, data.batch_size // micro) * micro}.")
    pad = run.tokenizer.eot_id
    batches = InstructBatches(examples, micro, seed=config.train.seed, pad_id=pad, device=run.device)
    held_batches = InstructBatches(held_examples, micro, seed=config.train.seed, pad_id=pad, device=run.device)
    evaluator = response_loss(held_batches, micro, run.device, run.dtype)

    questions = held_out[: data.eval_responses]  # read_records ends every conversation with the assistant's turn
    before: dict[str, Any] = {}
    if not resume:
        before = dict(evaluator(run.model))
        info(f"held-out response loss before tuning: {before['loss']:.4f} over {before['tokens']:,} tokens")
    base_answers = _answers(run, questions, data.max_new_tokens) if questions and not resume else []

    # A step is batch_size sequences, each up to max_length tokens.
    final = run.fit(batches, lm_loss, {"val": evaluator}, tokens_per_micro_batch=micro * max_length, batch_tokens=data.batch_size * max_length, count_tokens=lambda batch: batch[0].numel())

    after_answers = _answers(run, questions, data.max_new_tokens) if questions else []
    summary = {"val_loss_before": before.get("loss"), "val_loss_after": final.get("val_loss"), "held_out_examples": len(held_examples)}
    if questions:
        summary |= _write_responses(run.out_dir / "responses.jsonl", questions, base_answers, after_answers)
    (run.out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if summary["val_loss_before"] is not None:
        info(f"held-out response loss: {summary['val_loss_before']:.4f} before, {summary['val_loss_after']:.4f} after tuning")
    return {**final, **summary}


def _write_responses(path: Path, questions: list[Conversation], before: list[str], after: list[str]) -> dict[str, float]:
    """responses.jsonl: each held-out instruction, its reference, the answers before (when
    measured) and after, and their scores; the mean scores."""
    scores = {"exact_match": 0.0, "rouge_l": 0.0, "exact_match_before": 0.0, "rouge_l_before": 0.0}
    with path.open("w") as f:
        for i, conversation in enumerate(questions):
            reference = conversation[-1].content
            record = {"prompt": [asdict(m) for m in conversation[:-1]], "reference": reference, "response": after[i]}
            record |= {"exact_match": exact_match(after[i], reference), "rouge_l": rouge_l(after[i], reference)}
            scores["exact_match"] += record["exact_match"]
            scores["rouge_l"] += record["rouge_l"]
            if before:
                record |= {"response_before": before[i], "exact_match_before": exact_match(before[i], reference), "rouge_l_before": rouge_l(before[i], reference)}
                scores["exact_match_before"] += record["exact_match_before"]
                scores["rouge_l_before"] += record["rouge_l_before"]
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    n = len(questions)
    means = {key: value / n for key, value in scores.items() if before or not key.endswith("_before")}
    info(f"answers to {n} held-out instructions in {path}: ROUGE-L {means['rouge_l']:.3f}" + (f" (before tuning {means['rouge_l_before']:.3f})" if before else ""))
    return means

