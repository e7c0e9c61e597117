"""`scratchlm finetune classify`: a checkpoint becomes a text classifier.

    rows (CSV/TSV/JSONL/Parquet) → train / validation / test (given, or a seeded stratified
    split) → label ids and token ids (truncated to max_length, counted) → batches (epoch order
    or class-balanced) →  GPTClassifier (the checkpoint's trunk + a new head; the last k blocks,
    LoRA adapters or everything train)  →  Trainer.fit (cross-entropy over classes)  →
    accuracy, macro precision/recall/F1 and the confusion matrix per split, beside the
    majority-class baseline (report.json)
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from scratchlm.config import to_dict
from scratchlm.console import console, info
from scratchlm.errors import UserError
from scratchlm.finetune.classify_data import (
    ClassifyBatch,
    ClassifyBatches,
    Example,
    LabelSet,
    Row,
    Tally,
    default_pad_id,
    encode_rows,
    read_table,
    stratified_split,
)
from scratchlm.finetune.job import start_finetune
from scratchlm.finetune.metrics import (
    classification_report,
    majority_baseline,
    render_confusion,
)
from scratchlm.finetune.settings import ClassifyConfig
from scratchlm.model.classifier import GPTClassifier
from scratchlm.runtime import autocast


def classify_loss(model: nn.Module, batch: ClassifyBatch) -> torch.Tensor:
    return F.cross_entropy(model.classify(batch.ids, batch.lengths).float(), batch.labels)


def predict(model: GPTClassifier, batches: Any, device: torch.device, dtype: torch.dtype) -> tuple[list[int], list[int], float]:
    """(true labels, predicted labels, mean loss) over every example of an evaluation pass."""
    true, predicted, loss_sum = [], [], 0.0
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), autocast(device, dtype):
            for batch in batches:
                logits = model.classify(batch.ids, batch.lengths).float()  # (B, classes)
                loss_sum += float(F.cross_entropy(logits, batch.labels, reduction="sum"))
                true += batch.labels.tolist()
                predicted += logits.argmax(dim=-1).tolist()
    finally:
        model.train(was_training)
    return true, predicted, loss_sum / max(len(true), 1)


def _read_splits(config: ClassifyConfig) -> tuple[dict[str, list[Row]], Tally]:
    data = config.data
    if not data.train:
        raise UserError("No training data: set data.train to a .csv, .tsv, .jsonl or .parquet file with text and label columns.")
    rows, skipped = read_table(data.train, data.text_column, data.label_column)
    splits: dict[str, list[Row]] = {}
    if data.val:
        splits["train"] = rows
        for name in ("val", "test"):
            path = getattr(data, name)
            if path:
                splits[name], more = read_table(path, data.text_column, data.label_column)
                skipped.update_from(more)
    else:
        if len(data.split) not in (2, 3):
            raise UserError(f"data.split has {len(data.split)} numbers; give two (train, validation) or three (train, validation, test).")
        parts = stratified_split(rows, data.split, config.train.seed)
        splits = dict(zip(("train", "val", "test"), parts))
    return splits, skipped


def finetune_classify(config: ClassifyConfig, resume: bool = False, overwrite: bool = False) -> dict[str, Any]:
    """Run a classification job; returns the figures per split beside the majority baseline."""
    data = config.data
    splits, skipped = _read_splits(config)
    labels = LabelSet.from_names(data.labels) if data.labels else LabelSet.from_rows(splits["train"])
    info(f"{len(labels)} classes: {', '.join(labels.names)}; rows: " + ", ".join(f"{name} {len(rows):,}" for name, rows in splits.items()) + (f"; skipped: {skipped.describe()}" if skipped else ""))

    run = start_finetune(
        config.train, config.optim, config.lora, wrap=lambda gpt: GPTClassifier.from_gpt(gpt, len(labels), data.pooling),  # type: ignore[arg-type]
        task="classify", resume=resume, overwrite=overwrite, run_config=to_dict(config),
    )
    if resume and run.resume_from is not None and run.resume_from.meta.get("labels") != list(labels.names):
        raise UserError(f"{run.resume_from.path} was trained on the labels {run.resume_from.meta.get('labels')}; resume with the same data and data.labels.")
    run.meta |= {"labels": list(labels.names), "pooling": data.pooling}
    model: GPTClassifier = run.model  # type: ignore[assignment]
    _choose_trainable(model, data.train_blocks, bool(config.lora.rank))

    max_length = min(data.max_length or model.config.block_size, model.config.block_size)
    pad = default_pad_id(run.tokenizer)
    examples: dict[str, list[Example]] = {}
    for name, rows in splits.items():
        examples[name], tally = encode_rows(rows, run.tokenizer, labels, max_length)
        if tally:
            info(f"{name}: {tally.describe()}")
    micro = config.train.micro_batch_size
    if data.batch_size % micro:
        raise UserError(f"data.batch_size {data.batch_size} is not a multiple of train.micro_batch_size {micro}; use {max(1, data.batch_size // micro) * micro}.")
    batches = ClassifyBatches(examples["train"], micro, pad_id=pad, balanced=data.balanced, seed=config.train.seed, device=run.device)
    held = {name: ClassifyBatches(ex, micro, pad_id=pad, device=run.device) for name, ex in examples.items() if ex}

    def evaluate(m: nn.Module) -> Mapping[str, float]:
        true, predicted, loss = predict(m, held["val"].iter_eval(), run.device, run.dtype)  # type: ignore[arg-type]
        report = classification_report(true, predicted, len(labels))
        return {"loss": loss, "accuracy": report["accuracy"], "macro_f1": report["macro_f1"]}

    evaluators = {"val": evaluate} if "val" in held else {}
    final = run.fit(batches, classify_loss, evaluators, tokens_per_micro_batch=micro * max_length, batch_tokens=data.batch_size * max_length, count_tokens=lambda batch: batch.ids.numel())

    train_labels = [e.label for e in examples["train"]]
    results: dict[str, Any] = {"labels": list(labels.names)}
    for name, source in held.items():
        true, predicted, loss = predict(model, source.iter_eval(), run.device, run.dtype)
        report = classification_report(true, predicted, len(labels))
        results[name] = {"loss": loss, **report, "majority_baseline": majority_baseline(train_labels, true)}
    (run.out_dir / "report.json").write_text(json.dumps(results, indent=2) + "\n")
    _print_report(results, labels.names)
    return {**final, **results}


def _choose_trainable(model: GPTClassifier, train_blocks: int, lora: bool) -> None:
    """With LoRA the adapters (already trainable) and the head; else the last k blocks, the final
    norm and the head, or everything."""
    if train_blocks == -1 and not lora:
        for parameter in model.parameters():
            parameter.requires_grad_(True)
        return
    if not lora:
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        blocks = list(model.transformer.h)[len(model.transformer.h) - train_blocks :] if train_blocks else []
        for module in [*blocks, model.transformer.ln_f]:
            for parameter in module.parameters():
                parameter.requires_grad_(True)
    for parameter in model.classifier.parameters():
        parameter.requires_grad_(True)


def _print_report(results: dict[str, Any], names: Sequence[str]) -> None:
    for split in ("val", "test", "train"):
        if split not in results:
            continue
        r = results[split]
        console.print(
            f"{split}: accuracy {r['accuracy']:.3f} (majority baseline {r['majority_baseline']:.3f}), macro F1 {r['macro_f1']:.3f}, "
            f"precision {r['macro_precision']:.3f}, recall {r['macro_recall']:.3f}, loss {r['loss']:.4f} over {r['count']:,} texts",
            highlight=False,
        )
    last = "test" if "test" in results else "val" if "val" in results else None
    if last:
        console.print(f"confusion matrix ({last}; rows = true label):\n{render_confusion(results[last]['confusion'], names)}", highlight=False)


def label_texts(model: GPTClassifier, tokenizer: Any, labels: Sequence[str], texts: Sequence[str]) -> list[dict[str, Any]]:
    """Each text's most likely label and every label's probability (a text longer than the
    context keeps its first tokens, as in training)."""
    device = model.classifier.weight.device
    out = []
    with torch.no_grad():
        for text in texts:
            ids = tokenizer.encode_ordinary(text)[: model.config.block_size] or [tokenizer.eot_id or 0]
            logits = model.classify(torch.tensor([ids], device=device), torch.tensor([len(ids)], device=device))[0]  # (classes,)
            probabilities = logits.float().softmax(dim=-1).tolist()
            best = max(range(len(labels)), key=probabilities.__getitem__)
            out.append({"text": text, "label": labels[best], "probabilities": dict(zip(labels, probabilities))})
    return out
