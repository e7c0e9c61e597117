"""Time to quality on tinyshakespeare: how many seconds of scratchlm's real training loop it takes
to reach a validation bits-per-byte target, against nanoGPT's CPU recipe's end point.

The pipeline, as a user runs it:
1. Split tinyshakespeare as nanoGPT does: the first 90% of the characters train, the last 10% are
   validation (the file is ASCII, so characters are bytes).
2. Train a byte-level BPE tokenizer on the training 90% only (`train_from_texts`, `--vocab`); its
   time is recorded separately: part of the pipeline, not of the training time.
3. Write shards with two documents, "train" and "val", and `val_keys=["val"]`, so the val split is
   exactly the last 10% (plus its end-of-text token, which bits per byte leave out).
4. Run `scratchlm.train.loop.pretrain(RunConfig)` built from a preset (default shakespeare-cpu)
   with `train.time_budget_s = --minutes · 60`, evaluation on the FULL val split
   (`train.eval_tokens = 0`) every `--eval-every` steps and at the end, and `--set` overrides on
   top. Two settings are adjusted for measuring: `train.log_every = 1`, so every evaluation has the
   exact elapsed time of its step (a metrics line costs well under a millisecond against steps of
   ~0.1-1 s), and the data paths and run directory come from `--out`.
5. Read the run's metrics.jsonl and report, for each target (default 2.70 and 2.30 bits per byte),
   the first evaluation at or below it: its step, tokens, and elapsed seconds.

The reference: nanoGPT's shakespeare-char CPU recipe ends at val loss 1.874 nats per character
(its README: `--max_iters=2000`, ~3 minutes), i.e. 1.874 / ln 2 = 2.70 bits per character = bits
per byte. Bits per byte come from scratchlm's evaluator (eval/perplexity.py) over the whole val
split, so they compare across tokenizers, including nanoGPT's character-level one.

Times: "elapsed" is the loop's own clock (`elapsed_s` of the training line of the evaluated
step), which counts the periodic evaluations and samples that ran before it, because the time
budget does too. An evaluation line's own `elapsed_s` is taken after the evaluation, so the
time a quality was reached is the training line logged at the same step (the closest one if a
`--set train.log_every` makes that step unlogged; the table says so). "train only" subtracts the
time of the earlier evaluations, measured by a timer wrapped around the loop's `evaluate` and
`generate` (the loop itself is not changed).

    python bench/time_to_quality.py [--minutes 10] [--preset shakespeare-cpu] [--set KEY=VALUE ...]
                                    [--vocab 2048] [--eval-every 10] [--out runs/time-to-quality]
                                    [--data PATH] [--targets 2.70 2.30] [--json out.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch

import scratchlm.train.loop as loop
from scratchlm.config import load_config, resolve_config_file, to_dict
from scratchlm.data.documents import Document
from scratchlm.data.shards import ShardConfig, write_shards
from scratchlm.errors import UserError
from scratchlm.tokenizer.train import TokenizerTrainConfig, train_from_texts
from scratchlm.train.loop import DataConfig, RunConfig, pretrain
from scratchlm.train.metrics import read_metrics

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "tinyshakespeare.txt"
NANOGPT_CPU_END_BPB = 1.874 / math.log(2)  # 2.70


class EvalTimer:
    """Seconds spent in each of the loop's evaluations (and the sample drawn right after it).

    Wraps the names `evaluate` and `generate` inside scratchlm.train.loop, which its run_eval()
    and sample() look up at call time; each evaluation starts a new entry and its sample's
    generation is added to it.
    """

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self._evaluate, self._generate = loop.evaluate, loop.generate

    def __enter__(self) -> EvalTimer:
        def evaluate(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return self._evaluate(*args, **kwargs)
            finally:
                self.seconds.append(time.perf_counter() - started)

        def generate(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return self._generate(*args, **kwargs)
            finally:
                if self.seconds:
                    self.seconds[-1] += time.perf_counter() - started

        loop.evaluate, loop.generate = evaluate, generate
        return self

    def __exit__(self, *exc: object) -> None:
        loop.evaluate, loop.generate = self._evaluate, self._generate


def prepare(text: str, out: Path, vocab: int) -> dict[str, Any]:
    """Tokenizer (train 90% only) and shards (train = first 90%, val = last 10%) under `out`."""
    cut = int(len(text) * 0.9)
    train_text, val_text = text[:cut], text[cut:]
    started = time.perf_counter()
    tokenizer = train_from_texts([train_text], TokenizerTrainConfig(vocab_size=vocab))
    tokenizer_s = time.perf_counter() - started
    tokenizer.save(out / "tokenizer")
    started = time.perf_counter()
    manifest = write_shards([Document("train", train_text), Document("val", val_text)], tokenizer, out / "shards", ShardConfig(val_keys=["val"], decontaminate_val=False))  # nanoGPT's split, as is
    shards_s = time.perf_counter() - started
    splits = manifest["splits"]
    return {
        "tokenizer_train_s": tokenizer_s, "shards_s": shards_s, "vocab_size": tokenizer.vocab_size,
        "train_bytes": splits["train"]["bytes"], "train_tokens": splits["train"]["tokens"],
        "val_bytes": splits["val"]["bytes"], "val_tokens": splits["val"]["tokens"],
        "train_bytes_per_token": splits["train"]["bytes"] / (splits["train"]["tokens"] - 1),
    }


def evaluations(metrics: list[dict[str, Any]], eval_seconds: list[float]) -> list[dict[str, Any]]:
    """Each evaluation line with the loop's elapsed time at its step and the time less earlier evaluations."""
    train_lines = [r for r in metrics if "loss" in r]
    eval_lines = [r for r in metrics if "val_bpb" in r]
    rows = []
    for i, record in enumerate(eval_lines):
        step = record["step"]
        # The closest training line; on a tie the earlier one (the model at `step` existed then).
        line = min(train_lines, key=lambda r: (abs(r["step"] - step), r["step"])) if train_lines else None
        elapsed = line["elapsed_s"] if line else float("nan")
        before = sum(eval_seconds[:i]) if len(eval_seconds) >= i else float("nan")
        rows.append({
            "step": step, "tokens": record["tokens"], "val_bpb": record["val_bpb"], "val_loss": record["val_loss"],
            "elapsed_s": elapsed, "train_only_s": elapsed - before, "timed_at_step": line["step"] if line else None,
            "eval_s": eval_seconds[i] if i < len(eval_seconds) else float("nan"),
        })
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0, help="Training time budget (train.time_budget_s = 60 × this).")
    parser.add_argument("--preset", default="shakespeare-cpu", help="Preset name or TOML file for the run.")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="Override a run setting (repeatable), e.g. --set model.n_layer=4.")
    parser.add_argument("--vocab", type=int, default=2048, help="Tokenizer vocabulary size.")
    parser.add_argument("--eval-every", type=int, default=10, help="Evaluate on the full val split every this many steps (and at the end).")
    parser.add_argument("--out", default="runs/time-to-quality", help="Directory for tokenizer/, shards/ and the run (run/).")
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="tinyshakespeare.txt (nanoGPT's input.txt).")
    parser.add_argument("--targets", type=float, nargs="+", default=[2.70, 2.30], help="Val bits-per-byte targets to time.")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's own choice).")
    parser.add_argument("--json", help="Also write the figures to this file.")
    args = parser.parse_args()

    data = Path(args.data)
    if not data.is_file():
        sys.exit(f"error: tinyshakespeare not found at {data}. Download nanoGPT's data/shakespeare_char input.txt (https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt) there, or pass --data PATH.")
    if args.minutes <= 0 or args.eval_every < 1 or args.vocab < 258:
        parser.error("--minutes must be positive, --eval-every at least 1 and --vocab at least 258.")
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    try:
        config = load_config(
            RunConfig,
            resolve_config_file(args.preset),
            [f"train.time_budget_s={args.minutes * 60.0}", "train.eval_tokens=0", f"train.eval_every={args.eval_every}", "train.log_every=1", *args.overrides],
        )
        text = data.read_text(encoding="utf-8")
        prepared = prepare(text, out, args.vocab)
        config = dataclasses.replace(
            config,
            data=DataConfig(shards=str(out / "shards"), tokenizer=str(out / "tokenizer")),
            train=dataclasses.replace(config.train, out_dir=str(out / "run")),
        )
        with EvalTimer() as timer:
            result = pretrain(config)
    except UserError as error:
        sys.exit(f"error: {error}")

    metrics = read_metrics(out / "run" / "metrics.jsonl")
    rows = evaluations(metrics, timer.seconds)
    train_lines = [r for r in metrics if "loss" in r]
    last_lr = train_lines[-1]["lr"] if train_lines else float("nan")
    min_lr = config.optim.lr * config.optim.min_lr_ratio
    tc = config.train

    print(f"\ndata: {data} ({len(text):,} characters); train {prepared['train_bytes']:,} bytes = {prepared['train_tokens']:,} tokens, val {prepared['val_bytes']:,} bytes = {prepared['val_tokens']:,} tokens")
    print(f"tokenizer: {prepared['vocab_size']} tokens, {prepared['train_bytes_per_token']:.2f} bytes/token on train, trained in {prepared['tokenizer_train_s']:.1f} s; shards written in {prepared['shards_s']:.1f} s (neither is training time)")
    m = config.model
    dtype = str(loop.resolve_dtype(tc.dtype, loop.resolve_device(tc.device))).removeprefix("torch.")
    print(f"run: preset {args.preset}, {m.n_layer} layers, {m.n_head} heads, {m.n_embd} wide, context {m.block_size}; {tc.batch_tokens:,} tokens/step; {dtype} ({tc.dtype}); {torch.get_num_threads()} threads")
    print(f"     {result['num_params'] / 1e6:.2f} M parameters; budget {tc.time_budget_s:.0f} s; {result['step']} steps, {result['tokens']:,} tokens; wall {result['wall_s']:.1f} s including the final evaluation and checkpoint")
    print(f"     {len(rows)} evaluations on the full val split took {sum(timer.seconds):.1f} s in all ({sum(timer.seconds) / max(1, len(timer.seconds)):.1f} s each, samples included)")
    finished = last_lr <= min_lr * 1.05
    print(f"     learning-rate schedule {'completed' if finished else 'NOT completed'} (last lr {last_lr:.2e}, floor {min_lr:.2e})" + ("" if finished else ": the time budget stopped the run before the fitted horizon"))

    print(f"\n{'target bpb':>10} {'reached':>8} {'step':>6} {'tokens':>11} {'elapsed s':>10} {'train only s':>13} {'bpb':>7}")
    crossings = []
    for target in args.targets:
        hit = next((r for r in rows if r["val_bpb"] <= target), None)
        crossings.append({"target_bpb": target, **(hit or {}), "reached": hit is not None})
        if hit is None:
            print(f"{target:>10.2f} {'no':>8}")
        else:
            note = "" if hit["timed_at_step"] == hit["step"] else f"  (time of step {hit['timed_at_step']}, the closest logged)"
            print(f"{target:>10.2f} {'yes':>8} {hit['step']:>6} {hit['tokens']:>11,} {hit['elapsed_s']:>10.1f} {hit['train_only_s']:>13.1f} {hit['val_bpb']:>7.3f}{note}")
    final = rows[-1]
    print(f"{'final':>10} {'':>8} {final['step']:>6} {final['tokens']:>11,} {final['elapsed_s']:>10.1f} {final['train_only_s']:>13.1f} {final['val_bpb']:>7.3f}  (val loss {final['val_loss']:.3f} nats/token)")
    print(f"\nnanoGPT's CPU recipe ends at {NANOGPT_CPU_END_BPB:.3f} bits per byte (1.874 nats/char).")

    if args.json:
        with open(args.json, "w") as f:
            json.dump({
                "data": str(data), "preset": args.preset, "overrides": args.overrides, "minutes": args.minutes, "eval_every": args.eval_every,
                "threads": torch.get_num_threads(), **prepared, "num_params": result["num_params"], "steps": result["step"], "tokens": result["tokens"],
                "wall_s": result["wall_s"], "eval_s_total": sum(timer.seconds), "schedule_completed": finished, "last_lr": last_lr,
                "crossings": crossings, "final": final, "evaluations": rows, "run_config": to_dict(config),
            }, f, indent=2)


if __name__ == "__main__":
    main()
