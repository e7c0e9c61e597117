"""`scratchlm speedrun`: the whole chain on the default corpus, with a report.

corpus → cleaned documents → tokenizer (trained on the training plays only) → shards (whole
plays held out, both spellings) → pretraining within a time budget → evaluation on the whole
validation split → samples → report.md with loss curves.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from scratchlm import __version__
from scratchlm.config import load_config, resolve_config_file, to_dict
from scratchlm.console import info
from scratchlm.errors import UserError


@dataclass
class SpeedrunConfig:
    """The speedrun's own settings (the model and loop come from the preset)."""

    out_dir: str = "runs/speedrun"
    """Run directory: documents, tokenizer/, shards/, train/ (metrics, checkpoints), report.md."""
    preset: str = "cpu"
    """cpu: the shakespeare-cpu model, sized for a few CPU cores; gpu: shakespeare-gpu, a larger model with bf16 and torch.compile."""
    vocab_size: int = 8192
    """Tokenizer vocabulary size."""
    val_works: list[str] = field(default_factory=lambda: ["hamlet_gut", "tempest_gut", "julius_caesar_gut", "twelfth_night_gut"])
    """Plays held out for validation, by the id of their modern-spelling text; their First Folio texts are held out with them."""
    train_minutes: float = 11.0
    """Training time budget; the learning-rate schedule is fitted to the steps that fit."""
    task_items: int = 200
    """Items of the held-out word-order task the model is scored on at the end (0 = skip it)."""
    sample_tokens: int = 200
    """Tokens per sample in the report."""
    prompts: list[str] = field(default_factory=lambda: ["ROMEO.\n", "HAMLET.\nTo be, or not to be", "Enter the KING"])
    """Prompts for the report's samples."""
    overwrite: bool = False
    """Replace an earlier speedrun in out_dir (its model, metrics, shards and report); without it, an out_dir that holds a run is refused."""


PRESETS = {"cpu": "shakespeare-cpu", "gpu": "shakespeare-gpu"}


class Stopwatch:
    """Wall time per stage, in order."""

    def __init__(self) -> None:
        self.stages: dict[str, float] = {}

    def run(self, name: str, function, *args, **kwargs):
        info(f"[bold]== {name}")
        started = time.perf_counter()
        result = function(*args, **kwargs)
        self.stages[name] = time.perf_counter() - started
        return result


def speedrun(config: SpeedrunConfig, overrides: list[str] | None = None) -> Path:
    """Run every stage and return the path of report.md."""
    from scratchlm.checkpoints import load_model
    from scratchlm.data.clean import CleanStep
    from scratchlm.data.corpus import corpus_documents, fetch
    from scratchlm.data.decontaminate import (
        Decontaminate,
        DecontaminateConfig,
        NGramIndex,
    )
    from scratchlm.data.dedup import ExactDedup, MinHashDedup
    from scratchlm.data.documents import Document
    from scratchlm.data.langid import LangIdConfig, LanguageFilter
    from scratchlm.data.shards import ShardConfig, write_shards
    from scratchlm.eval.perplexity import ShardEvaluator, token_byte_lengths
    from scratchlm.generate.engine import generate
    from scratchlm.generate.sampling import SamplingConfig
    from scratchlm.paths import check_output_location, make_directory
    from scratchlm.runtime import autocast, resolve_device, resolve_dtype
    from scratchlm.tokenizer.train import TokenizerTrainConfig, train_from_texts
    from scratchlm.train.metrics import read_metrics
    from scratchlm.train.run import existing_run, pretrain
    from scratchlm.train.settings import RunConfig

    if config.task_items < 0:
        raise UserError(f"task_items is {config.task_items}; it must be 0 (no benchmark) or more.")
    if config.preset not in PRESETS:
        raise UserError(f"Unknown speedrun preset {config.preset!r}; choose one of: {', '.join(PRESETS)}.")
    out = Path(config.out_dir)
    # Everything that can be refused is refused before the first minute of work.
    run_config = load_config(RunConfig, resolve_config_file(PRESETS[config.preset]), overrides or [], base={
        "train": {"time_budget_s": config.train_minutes * 60},
    })
    # The speedrun owns where things go; a preset's own paths would point elsewhere.
    run_config.data.shards, run_config.data.tokenizer, run_config.train.out_dir = str(out / "shards"), str(out / "tokenizer"), str(out / "train")
    check_output_location(out, "--out-dir")
    held = existing_run(out / "train")
    if held and not config.overwrite:
        raise UserError(f"{out} already holds a speedrun ({held}); pass --overwrite to replace it, or choose another --out-dir.")
    make_directory(out, "--out-dir")
    clock = Stopwatch()
    started = time.perf_counter()

    clock.run("fetch corpus", fetch, "shakespeare")
    pipeline = [CleanStep(), LanguageFilter(LangIdConfig(languages=["en"])), ExactDedup(), MinHashDedup()]

    def load_documents() -> list[Document]:
        stream: Iterable[Document] = corpus_documents("shakespeare")
        for step in pipeline:
            stream = step.run(stream)
        documents = list(stream)
        works = {d.meta["work"] for d in documents}
        unknown = sorted(set(config.val_works) - works)
        if unknown:
            raise UserError(f"Unknown val_works {unknown}; use ids of modern-spelling texts such as {sorted(works)[:3]}.")
        return documents

    documents = clock.run("documents", load_documents)
    train_documents = [d for d in documents if d.meta["work"] not in config.val_works]
    # The validation plays must share nothing with training: GPT-3's rule, every 13-gram they
    # share with a training play is cut out with 200 characters either side. Whole plays are
    # never dropped for it (no limit on pieces), only the shared passages.
    decontaminate = Decontaminate(DecontaminateConfig(mode="cut", max_pieces=1_000_000), index=NGramIndex.from_texts((d.id, d.text) for d in train_documents))
    val_documents = clock.run("decontaminate", lambda: list(decontaminate.run(d for d in documents if d.meta["work"] in config.val_works)))
    tokenizer = clock.run("tokenizer", train_from_texts, [d.text for d in train_documents], TokenizerTrainConfig(vocab_size=config.vocab_size), "shakespeare")
    tokenizer.save(out / "tokenizer")
    manifest = clock.run("shards", write_shards, train_documents + val_documents, tokenizer, out / "shards", ShardConfig(val_key="work", val_keys=list(config.val_works), decontaminate_val=False))  # done above, with its report

    result = clock.run("pretrain", pretrain, run_config, overwrite=config.overwrite)

    device = resolve_device(run_config.train.device)
    model, tokenizer, meta = load_model(result["checkpoint"], device)
    mixed = autocast(device, resolve_dtype(run_config.train.dtype, device))

    def full_eval() -> dict[str, float]:
        byte_lengths = token_byte_lengths(tokenizer, model.config.vocab_size, device)
        return ShardEvaluator(out / "shards", "val", run_config.train.micro_batch_size, model.config.block_size, byte_lengths, max_tokens=0, autocast=mixed)(model)

    final = clock.run("evaluate", full_eval)

    def benchmark() -> dict[str, Any]:
        # Which of four orderings of a held-out play's next line is the real one; chance is 0.25.
        from scratchlm.eval.contamination import contamination_in
        from scratchlm.eval.shakespeare_task import build_next_line_task
        from scratchlm.eval.tasks import evaluate_task, load_task

        path = build_next_line_task(out / "tasks" / "shakespeare-word-order.jsonl", n_items=config.task_items, documents=documents, works=config.val_works, distractors="shuffled")
        with mixed:
            score = evaluate_task(model, tokenizer, load_task(path))
        # Measured, not assumed: do the task's lines occur in the training plays?
        overlap = contamination_in(((d.id, d.text) for d in train_documents), [path], ("context", "choices"))
        return {**score, "contamination": {k: overlap[k] for k in ("benchmark_items", "contaminated_items", "contaminated_share", "skipped_short_items")} | {"examples": overlap["items"][:5]}}

    task_result = clock.run("benchmark", benchmark) if config.task_items else None

    def make_samples() -> list[tuple[str, str]]:
        samples = []
        for i, prompt in enumerate(config.prompts):
            with mixed:
                ids = generate(model, tokenizer.encode_ordinary(prompt), config.sample_tokens, SamplingConfig(temperature=0.8, top_k=200), seed=i, stop_ids=[tokenizer.eot_id], vocab_size=tokenizer.vocab_size)[0]
            samples.append((prompt, tokenizer.decode(ids)))
        return samples

    samples = clock.run("samples", make_samples)
    metrics = read_metrics(out / "train" / "metrics.jsonl")
    clock.stages["total"] = time.perf_counter() - started
    summary = {
        "version": __version__,
        "stages_s": clock.stages,
        "documents": {"total": len(documents), "train": len(train_documents), "val": decontaminate.stats.read, "val_pieces": len(val_documents), "val_works": list(config.val_works)},
        "pipeline": [{"name": step.name, **step.stats.as_dict(), "details": step.details()} for step in [*pipeline, decontaminate]],
        "decontamination": {
            "matches": decontaminate.matches_total,
            "examples": decontaminate.matches[:10],
            "val_characters_before": sum(len(d.text) for d in documents if d.meta["work"] in config.val_works),
            "val_characters_after": sum(len(d.text) for d in val_documents),
            # Checked again after the cut, against the same index of training 13-grams.
            "shared_after_cut": sum(len(decontaminate.index.matches(d.text)) for d in val_documents),
        },
        "tokenizer": {"vocab_size": tokenizer.vocab_size, "hash": tokenizer.hash},
        "shards": {split: {k: manifest["splits"][split][k] for k in ("tokens", "documents", "bytes")} for split in ("train", "val")},
        "model": {"parameters": result["num_params"], "flops_per_token": result["flops_per_token"], "config": to_dict(model.config)},
        "training": {k: result[k] for k in ("step", "tokens", "wall_s", "peak_flops")},
        "eval": final,
        "benchmark": task_result,
        "samples": samples,
    }
    train_lines = [r for r in metrics if "tokens_per_s" in r]
    summary["training"]["tokens_per_s"] = sum(r["tokens_per_s"] for r in train_lines[1:]) / max(1, len(train_lines) - 1) if train_lines else 0.0
    summary["training"]["mfu"] = sum(r["mfu"] for r in train_lines[1:]) / max(1, len(train_lines) - 1) if train_lines else 0.0
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return write_speedrun_report(out, summary, metrics)


def _reasons(step: dict[str, Any]) -> str:
    reasons = step["removed_by_reason"]
    return "(" + ", ".join(f"{k} {v}" for k, v in reasons.items()) + ")" if reasons else ""


def _plural(count: int, singular: str, plural: str | None = None) -> str:
    return f"{count:,} {singular if count == 1 else plural or singular + 's'}"


def _found(step: dict[str, Any]) -> str:
    """A step's findings in a few words, for the pipeline table: only what the run counted."""
    details = step.get("details") or {}
    if step["name"] == "exact_dedup":
        return _plural(details.get("duplicates", 0), "exact duplicate")
    if step["name"] == "minhash_dedup":
        found = _plural(details.get("clusters", 0), "near-duplicate cluster")
        return found + (f" ({details['documents_in_clusters']} documents, the largest {details['largest_cluster']})" if details.get("clusters") else "")
    if step["name"] == "clean":
        return f"{_plural(details.get('control_characters', 0), 'control character')}, {_plural(details.get('gutenberg_headers', 0), 'Gutenberg header')}"
    if step["name"] == "decontaminate":
        return f"{_plural(step['read'], 'validation document')} checked against every training document"
    return ""


def _decontamination_text(found: dict[str, Any]) -> str:
    cut = found["val_characters_before"] - found["val_characters_after"]
    left = found["shared_after_cut"]
    text = (
        f"Validation against training: {_plural(found['matches'], 'shared 13-gram')} (GPT-3's contamination test); cutting them with "
        f"200 characters either side removed {cut:,} of {found['val_characters_before']:,} validation characters. "
        + (
            "Checked again after the cut, the validation split shares no 13-gram with the training split."
            if left == 0
            else f"Checked again after the cut, the validation split still shares {_plural(left, '13-gram')} with the training split."
        )
    )
    examples = [f"- `{m['document_id']}` ~ `{m['benchmark_item']}`: {m['ngram_example']!r}" for m in found["examples"]]
    return "\n".join([text, "", *examples]) if examples else text


def write_speedrun_report(out: Path, summary: dict[str, Any], metrics: list[dict[str, Any]]) -> Path:
    from scratchlm.report import markdown_table, plot_losses
    from scratchlm.runtime import cpu_model

    plot_losses(metrics, out / "loss.png")
    s = summary
    train, val = s["shards"]["train"], s["shards"]["val"]
    lines = [
        "# scratchlm speedrun",
        "",
        f"scratchlm {s['version']}, torch {torch.__version__}, {cpu_model()}, {os.cpu_count()} CPU cores"
        + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""),
        "",
        "## Result",
        "",
        markdown_table([
            ("validation loss", f"{s['eval']['loss']:.4f} nats per token"),
            ("validation perplexity", f"{s['eval']['perplexity']:.2f}"),
            ("validation bits per byte", f"{s['eval']['bpb']:.4f}"),
            ("validation tokens", f"{s['eval']['tokens']:,}"),
            *([(
                "held-out word order (4 choices)",
                f"accuracy {s['benchmark']['accuracy']:.3f} ± {s['benchmark']['accuracy_stderr']:.3f} over {s['benchmark']['items']} items (chance {s['benchmark']['random_baseline']:.2f}); "
                f"{s['benchmark']['contamination']['contaminated_items']} of {s['benchmark']['contamination']['benchmark_items']} items share a 13-gram with the training plays",
            )] if s.get("benchmark") else []),
            ("model", f"{s['model']['parameters'] / 1e6:.2f} M parameters, {s['model']['flops_per_token'] / 1e6:.1f} MFLOP per token"),
            ("training", f"{s['training']['step']} steps, {s['training']['tokens']:,} tokens in {s['training']['wall_s']:.0f} s"),
            ("throughput", f"{s['training']['tokens_per_s']:,.0f} tokens/s, MFU {s['training']['mfu']:.1%} of {s['training']['peak_flops'] / 1e9:.0f} GFLOP/s"),
        ], ("", "")),
        "",
        "![loss curves](loss.png)",
        "",
        "## Data",
        "",
        f"{s['documents']['total']} documents (plays and poems, modern and First Folio spelling); "
        f"held out for validation: {', '.join(s['documents']['val_works'])} with their Folio texts ({s['documents']['val']} documents). "
        f"The tokenizer was trained on the training documents only.",
        "",
        markdown_table([
            ("train", f"{train['documents']} documents, {train['bytes']:,} bytes, {train['tokens']:,} tokens ({train['bytes'] / train['tokens']:.2f} bytes per token)"),
            ("validation", f"{val['documents']} documents, {val['bytes']:,} bytes, {val['tokens']:,} tokens ({val['bytes'] / val['tokens']:.2f} bytes per token)"),
            ("tokenizer", f"{s['tokenizer']['vocab_size']:,} tokens, hash {s['tokenizer']['hash'][:12]}"),
        ], ("split", "")),
        "",
        "## Data pipeline",
        "",
        "Every document read is either kept or counted as removed, with its reason.",
        "",
        "| step | read | kept | removed | found |",
        "| --- | --- | --- | --- | --- |",
        *[f"| {p['name']} | {p['read']} | {p['kept']} | {p['removed']} {_reasons(p)} | {_found(p)} |" for p in s["pipeline"]],
        "",
        _decontamination_text(s["decontamination"]),
        "",
        "## Wall time per stage",
        "",
        markdown_table([(name, f"{seconds:.1f} s") for name, seconds in s["stages_s"].items()], ("stage", "time")),
        "",
        "## Samples",
        "",
    ]
    for prompt, text in s["samples"]:
        lines += [f"**Prompt** `{prompt!r}`", "", "```", prompt + text, "```", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    info(f"report: {path}")
    return path
