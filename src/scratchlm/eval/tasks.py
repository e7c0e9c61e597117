"""Multiple-choice benchmarks (HellaSwag, ARC, PIQA style) scored by log-likelihood.

A task is a JSONL file, one item a line: `{"context": str, "choices": [str, ...], "label": int}`
(HellaSwag-style `"query"`, `"endings"`, `"gold"` are accepted too; other keys are ignored). Each
choice is a continuation of the context; the model picks the one it finds most likely:

- `accuracy`: the highest summed log-probability of the continuation's tokens (lm-eval's `acc`);
- `accuracy_norm`: the highest log-probability per UTF-8 byte of the continuation (lm-eval's
  `acc_norm`), which does not favour short choices just for having fewer tokens to pay for.

Both come with their standard error sqrt(p(1-p)/n), beside the random baseline (the mean of
1/len(choices)) and the centred accuracy (acc - baseline) / (1 - baseline) that nanochat's CORE
reports: 0 is chance, 1 is perfect, whatever the number of choices.

Tokenization follows lm-eval: context and continuation are encoded separately and concatenated,
so a continuation carries its own leading space (" the end"), and every choice of an item gets
exactly the same context tokens. A row is context + choice, right-padded; targets are -100
everywhere but the choice's tokens. A row longer than the model's context loses tokens from the
left (those requests are counted as `truncated`).
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from scratchlm.console import progress_bar
from scratchlm.errors import UserError
from scratchlm.tokenizer.tokenizer import Tokenizer

FEWSHOT_SEPARATOR = "\n\n"
"""Joins few-shot examples (context + correct choice) and the item's own context."""


@dataclass(frozen=True)
class Item:
    """One question: a context, its candidate continuations, and the index of the right one."""

    context: str
    choices: tuple[str, ...]
    label: int


@dataclass(frozen=True)
class Task:
    """A named list of items."""

    name: str
    items: tuple[Item, ...]

    @property
    def random_baseline(self) -> float:
        """Expected accuracy of guessing: the mean of 1/len(choices)."""
        return sum(1 / len(item.choices) for item in self.items) / len(self.items)


# ---- reading a task file, one sentence per way it can be wrong -------------------------------


def _field(record: dict[str, Any], names: tuple[str, ...], where: str) -> Any:
    for name in names:
        if name in record:
            return record[name]
    raise UserError(f"{where} has no {' or '.join(repr(n) for n in names)} field; each line needs context, choices and label.")


def parse_item(record: Any, where: str) -> Item:
    """An item from one decoded JSON record; `where` ("file line N") names it in errors."""
    if not isinstance(record, dict):
        raise UserError(f"{where} is a JSON {type(record).__name__}, not an object with context, choices and label.")
    context = _field(record, ("context", "query"), where)
    choices = _field(record, ("choices", "endings"), where)
    label = _field(record, ("label", "gold"), where)
    if not isinstance(context, str):
        raise UserError(f"{where} has a context of type {type(context).__name__}; it must be a string.")
    if not isinstance(choices, list) or len(choices) < 2:
        raise UserError(f"{where} has {len(choices) if isinstance(choices, list) else 'no list of'} choices; an item needs a list of at least 2.")
    for k, choice in enumerate(choices):
        if not isinstance(choice, str):
            raise UserError(f"{where} has choice {k} of type {type(choice).__name__}; every choice must be a string.")
        if not choice:
            raise UserError(f"{where} has an empty choice {k}; every choice must have text to score.")
    if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < len(choices):
        raise UserError(f"{where} has label {label!r}, not an index into its {len(choices)} choices (0 to {len(choices) - 1}).")
    return Item(context, tuple(choices), label)


def load_task(path: str | Path) -> Task:
    """The items of a JSONL task file (blank lines are skipped), named after the file's stem."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"No such task file: {path}; pass a JSONL file of {{\"context\", \"choices\", \"label\"}} items.")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise UserError(f"{path} is not UTF-8 text; a task file is JSONL.") from None
    items = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise UserError(f"{path} line {number} is not valid JSON ({error.msg}).") from None
        items.append(parse_item(record, f"{path} line {number}"))
    if not items:
        raise UserError(f"{path} holds no items; a task file has one JSON object per line.")
    return Task(path.stem, tuple(items))


# ---- scoring continuations ------------------------------------------------------------------


def _model_context(model: nn.Module) -> int:
    config = getattr(model, "config", None)
    return int(getattr(config, "block_size", 1 << 30))


def encode_request(tokenizer: Tokenizer, context: str, continuation: str, max_length: int) -> tuple[list[int], int, bool]:
    """(tokens, number of continuation tokens at the end, truncated?) for one request.

    Context and continuation are encoded separately. An empty context is the end-of-text token
    (as in lm-eval), so the first continuation token has something to be predicted from. At most
    `max_length` + 1 tokens are kept, cut from the left (the model sees max_length inputs)."""
    context_ids = tokenizer.encode_ordinary(context)
    continuation_ids = tokenizer.encode_ordinary(continuation)
    if not context_ids:
        if tokenizer.eot_id is None:
            raise UserError("An empty context needs the tokenizer's <|endoftext|> token to start from, and this tokenizer has none; give every item a context.")
        context_ids = [tokenizer.eot_id]
    tokens = context_ids + continuation_ids
    truncated = len(tokens) > max_length + 1
    if truncated:
        tokens = tokens[-(max_length + 1) :]
    return tokens, min(len(continuation_ids), len(tokens) - 1), truncated


@torch.no_grad()
def _score_rows(model: nn.Module, rows: list[tuple[list[int], int]], device: torch.device, autocast: AbstractContextManager | None) -> list[tuple[float, bool]]:
    """Log-likelihood and is-greedy of the last n tokens of each row, in one right-padded batch."""
    width = max(len(tokens) for tokens, _ in rows) - 1
    inputs = torch.zeros(len(rows), width, dtype=torch.long)
    targets = torch.full((len(rows), width), -100, dtype=torch.long)
    for r, (tokens, n) in enumerate(rows):
        t = torch.tensor(tokens, dtype=torch.long)
        inputs[r, : len(t) - 1] = t[:-1]
        if n:
            targets[r, len(t) - 1 - n : len(t) - 1] = t[len(t) - n :]
    inputs, targets = inputs.to(device), targets.to(device)
    scored = targets != -100  # (B, T)
    with autocast or nullcontext():
        if hasattr(model, "features") and hasattr(model, "lm_head"):
            # Only the continuation positions go through the head: no B·T·vocab logits.
            logits = model.lm_head(model.features(inputs)[scored])  # (N, vocab)
        else:
            logits = model(inputs)[0][scored]  # (N, vocab)
    logprobs = F.log_softmax(logits.float(), dim=-1)  # (N, vocab)
    wanted = targets[scored]  # (N,)
    token_logprobs = logprobs.gather(-1, wanted[:, None])[:, 0].double()  # (N,)
    hits = logprobs.argmax(dim=-1) == wanted  # (N,)
    row_of = scored.nonzero()[:, 0]  # (N,): the row of each scored position
    totals = torch.zeros(len(rows), dtype=torch.float64, device=device).index_add_(0, row_of, token_logprobs)
    misses = torch.zeros(len(rows), dtype=torch.long, device=device).index_add_(0, row_of, (~hits).long())
    return [(float(total), int(miss) == 0) for total, miss in zip(totals.tolist(), misses.tolist(), strict=True)]


def score_continuations(
    model: nn.Module,
    tokenizer: Tokenizer,
    requests: Sequence[tuple[str, str]],
    batch_size: int = 32,
    autocast: AbstractContextManager | None = None,
    stats: dict[str, int] | None = None,
    description: str = "scoring",
) -> list[tuple[float, bool]]:
    """(log-likelihood, is-greedy) of each (context, continuation), in the requests' order.

    The log-likelihood is the sum of the natural-log probabilities of the continuation's tokens
    given everything before them; is-greedy says whether each of those tokens is the model's
    argmax. Rows are batched longest first (little padding). A `stats` dict receives the number
    of `truncated` requests. The model is put in eval mode for the call and restored after.
    """
    if batch_size < 1:
        raise UserError(f"batch_size is {batch_size}; it must be at least 1.")
    max_length = _model_context(model)
    encoded = [encode_request(tokenizer, context, continuation, max_length) for context, continuation in requests]
    if stats is not None:
        stats["truncated"] = stats.get("truncated", 0) + sum(truncated for _, _, truncated in encoded)
    # Empty continuations have nothing to score: log-likelihood 0, trivially greedy.
    order = sorted((i for i in range(len(encoded)) if encoded[i][1]), key=lambda i: -len(encoded[i][0]))
    results: list[tuple[float, bool]] = [(0.0, True)] * len(encoded)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with progress_bar(description, total=len(order)) as advance:
            for start in range(0, len(order), batch_size):
                chunk = order[start : start + batch_size]
                for i, result in zip(chunk, _score_rows(model, [encoded[i][:2] for i in chunk], device, autocast), strict=True):
                    results[i] = result
                advance(len(chunk))
    finally:
        model.train(was_training)
    return results


# ---- evaluating a task ----------------------------------------------------------------------


def fewshot_indices(n_items: int, index: int, shots: int, seed: int = 0) -> list[int]:
    """The `shots` example items for item `index`: drawn with an RNG seeded by (seed, index), never
    the item itself, so an item's prompt does not depend on which other items are evaluated."""
    if shots < 0:
        raise UserError(f"shots is {shots}; it must be 0 or more.")
    if shots > n_items - 1:
        raise UserError(f"shots is {shots}, but the task has only {n_items} items, so at most {n_items - 1} others to show; use fewer shots.")
    if shots == 0:
        return []
    rng = random.Random(f"scratchlm-fewshot:{seed}:{index}")
    return [j + (j >= index) for j in rng.sample(range(n_items - 1), shots)]


def fewshot_context(task: Task, index: int, shots: int = 0, seed: int = 0) -> str:
    """Item `index`'s context preceded by `shots` solved examples, joined by blank lines."""
    examples = [task.items[j] for j in fewshot_indices(len(task.items), index, shots, seed)]
    parts = [example.context + example.choices[example.label] for example in examples]
    return FEWSHOT_SEPARATOR.join([*parts, task.items[index].context])


def _stderr(p: float, n: int) -> float:
    return math.sqrt(p * (1 - p) / n)


def summarize(task: Task, loglikelihoods: Sequence[Sequence[float]]) -> dict[str, Any]:
    """Accuracies, standard errors, random baseline and centred accuracy from per-choice scores
    (one list of log-likelihoods per item). Ties go to the first choice, as numpy's argmax."""
    n = len(task.items)
    correct = correct_norm = 0
    for item, scores in zip(task.items, loglikelihoods, strict=True):
        per_byte = [score / len(choice.encode("utf-8")) for score, choice in zip(scores, item.choices, strict=True)]
        correct += max(range(len(scores)), key=lambda k: (scores[k], -k)) == item.label
        correct_norm += max(range(len(per_byte)), key=lambda k: (per_byte[k], -k)) == item.label
    accuracy, accuracy_norm = correct / n, correct_norm / n
    baseline = task.random_baseline
    return {
        "task": task.name,
        "items": n,
        "accuracy": accuracy,
        "accuracy_stderr": _stderr(accuracy, n),
        "accuracy_norm": accuracy_norm,
        "accuracy_norm_stderr": _stderr(accuracy_norm, n),
        "random_baseline": baseline,
        "centered_accuracy": (accuracy - baseline) / (1 - baseline),
        "centered_accuracy_norm": (accuracy_norm - baseline) / (1 - baseline),
    }


def evaluate_task(
    model: nn.Module,
    tokenizer: Tokenizer,
    task: Task,
    shots: int = 0,
    seed: int = 0,
    batch_size: int = 32,
    autocast: AbstractContextManager | None = None,
) -> dict[str, Any]:
    """Score every choice of every item and summarize (see `summarize`); also reports `shots`,
    `seed` and how many requests were `truncated` to fit the model's context."""
    requests: list[tuple[str, str]] = []
    for index, item in enumerate(task.items):
        context = fewshot_context(task, index, shots, seed)
        requests.extend((context, choice) for choice in item.choices)
    stats: dict[str, int] = {"truncated": 0}
    scores = score_continuations(model, tokenizer, requests, batch_size, autocast, stats, description=task.name)
    per_item, start = [], 0
    for item in task.items:
        per_item.append([score for score, _ in scores[start : start + len(item.choices)]])
        start += len(item.choices)
    return {**summarize(task, per_item), "shots": shots, "seed": seed, "requests": len(requests), "truncated": stats["truncated"]}


def eval_task(checkpoint: Path, task: str, shots: int = 0, seed: int = 0, batch_size: int = 32, device: str = "auto", dtype: str = "float32", as_json: bool = False, out_dir: Path | None = None) -> dict[str, Any]:
    """The `eval --task` command: a task file, or a built-in task by name (built from the default
    corpus into `out_dir`); prints accuracy ± standard error beside chance (or JSON)."""
    import sys

    from scratchlm.checkpoints import load_model
    from scratchlm.eval.shakespeare_task import TASKS, build_next_line_task
    from scratchlm.runtime import autocast, resolve_device, resolve_dtype

    if task in TASKS and not Path(task).exists():
        path = build_next_line_task((out_dir or Path("runs") / "tasks") / f"{task}.jsonl", seed=seed, distractors=TASKS[task])
    elif not Path(task).exists() and not Path(task).suffix:
        import difflib

        close = difflib.get_close_matches(task, list(TASKS), n=1)
        raise UserError(f"No task file or built-in task {task!r}" + (f"; did you mean {close[0]!r}?" if close else f"; the built-in tasks are {', '.join(TASKS)}."))
    else:
        path = Path(task)
    loaded = load_task(path)
    torch_device = resolve_device(device, "--device")
    torch_dtype = resolve_dtype(dtype, torch_device, "--dtype")
    model, tokenizer, _ = load_model(checkpoint, torch_device, torch_dtype)
    result = evaluate_task(model, tokenizer, loaded, shots=shots, seed=seed, batch_size=batch_size, autocast=autocast(torch_device, torch_dtype))
    if as_json:
        sys.stdout.write(json.dumps(result, indent=2) + "\n")
    else:
        sys.stdout.write(
            f"{result['task']}: {result['items']} items, {shots}-shot: accuracy {result['accuracy']:.3f} ± {result['accuracy_stderr']:.3f}, "
            f"normalised {result['accuracy_norm']:.3f} ± {result['accuracy_norm_stderr']:.3f} (chance {result['random_baseline']:.3f}; "
            f"centred {result['centered_accuracy']:.3f})" + (f"; {result['truncated']} contexts cut to fit" if result.get("truncated") else "") + "\n"
        )
    return result
