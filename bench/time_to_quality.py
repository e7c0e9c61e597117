"""Time to quality on tinyshakespeare: training seconds for scratchlm's real training run to reach a
validation bits-per-byte target, against nanoGPT's published CPU recipe trained in the same run,
on the same machine, by a nanoGPT-style loop. Evaluations are never counted as training time.

Both contenders see the same data, split as nanoGPT's data/shakespeare_char/prepare.py splits it:
the first 90% of the characters train, the last 10% are validation (the file is ASCII, so
characters are bytes). Both are scored by the same measure on the same text: bits per byte over
the WHOLE val split, its non-overlapping windows each scored once (summed nats / ln 2 / bytes of
the predicted tokens; `scratchlm.eval.perplexity.evaluate`), so a character-level model and a BPE
model compare fairly.

The reference: nanoGPT's shakespeare-char CPU recipe
-----------------------------------------------------
nanoGPT's README ("I only have a macbook"):

    python train.py config/train_shakespeare_char.py --device=cpu --compile=False --eval_iters=20
        --log_interval=1 --block_size=64 --batch_size=12 --n_layer=4 --n_head=4 --n_embd=128
        --max_iters=2000 --lr_decay_iters=2000 --dropout=0.0

"... gets us a loss of only 1.88" (val, nats per character, ≈ 2.71 bits per byte). The values, with
their source (config/train_shakespeare_char.py = C, train.py defaults = T, README overrides = R):

    vocabulary      65 characters: sorted(set(text)) of the whole file  (data/shakespeare_char/prepare.py)
    model           GPT-2: learned positions, LayerNorm, GELU, tied embeddings, bias=False (T),
                    n_layer 4, n_head 4, n_embd 128 (R), block_size 64 (R), dropout 0.0 (R),
                    init N(0, 0.02), residual projections N(0, 0.02/√(2·n_layer)) (model.py)
    batch           12 windows per iteration (R), gradient_accumulation_steps 1 (C), drawn as
                    get_batch does: torch.randint(len(train) - block_size, (12,)) offsets
    precision       fp32, eager: no autocast on CPU, compile=False (R)
    loss            the full (B, T, 65) logits, then F.cross_entropy
    optimizer       AdamW lr 1e-3 (C), betas (0.9, 0.99) (T beta1, C beta2), eps 1e-8 (torch
                    default), weight_decay 0.1 (T) on ≥ 2-D parameters only, not fused (fused only
                    on CUDA, model.configure_optimizers)
    schedule        warmup_iters 100 (C): lr·(it+1)/(warmup+1), then cosine to min_lr 1e-4 (C)
                    at lr_decay_iters 2000 (R); max_iters 2000 (R) updates (nanoGPT's final
                    evaluation, at iter 2000, sees the model after 2000 updates)
    grad_clip       1.0 (T)
    seed            torch.manual_seed(1337) (T)

Measured here on the whole val split, this loop ends at 1.892 nats per character = 2.730 bits per
byte (the same in every run: it is seeded and deterministic on CPU), just above 2.70: the ratio at
2.70 is then a lower bound, the reference's whole 2000 iterations against scratchlm's crossing.

The model is scratchlm's GPT class in that configuration (its GPT-2 defaults: learned positions,
LayerNorm, GELU, tied embeddings). Two differences from nanoGPT's model.py, both immaterial to
quality: q, k and v are three linears rather than one fused c_attn, and GELU is the tanh
approximation rather than the exact erf. The loss is nanoGPT's: `model(x)` returns the logits and
F.cross_entropy scores them (not scratchlm's chunked loss). The training clock of an iteration
covers get_batch, forward, backward, clipping, the update, zero_grad and `loss.item()` (nanoGPT
logs every iteration, `--log_interval=1`). Every `--ref-eval-every` iterations (default 100) and
at the end, bits per byte on the whole val split are measured outside the training clock; nanoGPT's
own estimate (20 random val batches, `--eval_iters=20`) is replaced by this exact one.

scratchlm: the pipeline, as a user runs it
------------------------------------------
1. Split tinyshakespeare as above.
2. Train a byte-level BPE tokenizer on the training 90% only (`train_from_texts`, `--vocab`); its
   time is recorded separately: part of the pipeline, not of the training time.
3. Write shards with two documents, "train" and "val", and `val_keys=["val"]`, so the val split is
   exactly the last 10% (plus its end-of-text token, which bits per byte leave out).
4. Run `scratchlm.train.run.pretrain(RunConfig)` built from a preset (default shakespeare-cpu) with
   `train.time_budget_s = --minutes · 60`, evaluation on the FULL val split (`train.eval_tokens = 0`)
   every `--eval-every` steps and at the end, `train.log_every = 1`, and `--set` overrides on top.
   The defaults are the best recipe measured: `--vocab 2048 --eval-every 20 --minutes 2` and, on
   the default preset only, the overrides (applied before the command line's; `--plain-preset`
   leaves them out)
       --set model.block_size=128 --set train.batch_tokens=2048 --set optim.lr=5e-3
       --set optim.warmup_steps=10
   The schedule is fitted to the time budget, so the budget decides when the learning rate
   anneals, and the fitted length (from measured step and evaluation times) differs a little
   from run to run. On 2 quiet cores (bf16, ~0.27-0.29 s/step) two 2-minute runs crossed 2.70
   bits per byte at step 180 (47.6 s of training) and step 200 (58.2 s); a 3-minute run,
   evaluating every 40 steps, at step 200 (57.8 s). A longer budget goes further (2.43 at 3
   minutes against 2.59-2.61 at 2) but anneals later; 2 minutes also makes the whole run ~5
   minutes instead of ~6.5, and evaluating every 20 steps times the crossing twice as finely.
5. Read the run's metrics.jsonl: for each target, the first evaluation at or below it, and the
   training seconds at its step (`train_s` of the evaluation line: training steps only, no
   evaluation, sample or checkpoint).

Report: for each target (default 2.70 and 2.30 bits per byte), each contender's training seconds
to reach it and the ratio reference / scratchlm. A reference that never reaches a target in its
2000 iterations is given its total training seconds, and the ratio is a lower bound (≥). Times are
those of the first evaluation at or below the target, so each is late by up to one evaluation
interval (the table gives each contender's interval in training seconds). The two contenders run
one after the other in one process with the same torch threads; the share of the CPUs other
processes took while each ran is printed, since a busy machine slows whichever runs then: with
torch's 2 threads on 2 cores, another job holding a core makes every parallel op wait for the
thread that lost its core, and steps run 10-25x slower. Above 10% the report warns that the ratio
is unreliable. "At median pace" repeats the ratio with every step timed at its contender's median
step time, which bursts of load barely move.

    python bench/time_to_quality.py [--minutes 2] [--preset shakespeare-cpu] [--set KEY=VALUE ...]
                                    [--vocab 2048] [--eval-every 20] [--plain-preset]
                                    [--ref-eval-every 100] [--out runs/time-to-quality]
                                    [--data PATH] [--targets 2.70 2.30] [--threads N] [--json out.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from itertools import pairwise
from pathlib import Path
from typing import Any, Self

import torch
import torch.nn.functional as F

from scratchlm.config import load_config, resolve_config_file, to_dict
from scratchlm.data.documents import Document
from scratchlm.data.shards import ShardConfig, write_shards
from scratchlm.errors import UserError
from scratchlm.eval.perplexity import evaluate
from scratchlm.model.gpt import GPT, GPTConfig
from scratchlm.runtime import cpu_model, resolve_device, resolve_dtype
from scratchlm.tokenizer.train import TokenizerTrainConfig, train_from_texts
from scratchlm.train.metrics import read_metrics
from scratchlm.train.run import pretrain
from scratchlm.train.settings import DataConfig, RunConfig

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "tinyshakespeare.txt"
DEFAULT_PRESET = "shakespeare-cpu"
# scratchlm's recipe on the default preset (applied before the command line's --set overrides).
DEFAULT_VOCAB, DEFAULT_EVAL_EVERY, DEFAULT_MINUTES = 2048, 20, 2.0
DEFAULT_OVERRIDES = ["model.block_size=128", "train.batch_tokens=2048", "optim.lr=5e-3", "optim.warmup_steps=10"]
NANOGPT_PUBLISHED_VAL_LOSS = 1.88  # nanoGPT README, this recipe after 2000 iterations (nats/char)


# ---- the reference: nanoGPT's shakespeare-char CPU recipe --------------------------------------


@dataclasses.dataclass(frozen=True)
class NanoGPTRecipe:
    """config/train_shakespeare_char.py with the README's CPU overrides, train.py defaults below them."""

    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    block_size: int = 64
    dropout: float = 0.0
    bias: bool = False
    batch_size: int = 12
    learning_rate: float = 1e-3
    min_lr: float = 1e-4
    warmup_iters: int = 100
    lr_decay_iters: int = 2000
    max_iters: int = 2000
    beta1: float = 0.9
    beta2: float = 0.99
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    seed: int = 1337

    def lr(self, it: int) -> float:
        """nanoGPT's get_lr: linear warmup, cosine decay to min_lr at lr_decay_iters, then min_lr."""
        if it < self.warmup_iters:
            return self.learning_rate * (it + 1) / (self.warmup_iters + 1)
        if it > self.lr_decay_iters:
            return self.min_lr
        ratio = (it - self.warmup_iters) / (self.lr_decay_iters - self.warmup_iters)
        return self.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (self.learning_rate - self.min_lr)


class MachineShare:
    """How much of the machine other processes took while a contender ran: CPU seconds used on
    all cores (/proc/stat, steal included) less this process's own (os.times), over the cores'
    capacity. On a shared machine a contender that runs while another job holds a core trains
    slower (with 2 torch threads on 2 cores, far slower: each parallel op waits for the thread
    that lost its core), so this is printed beside each contender's time. Linux only (else nan)."""

    def __enter__(self) -> Self:
        self.figures: dict[str, float] = {}
        self._start = self._snapshot()
        return self

    def __exit__(self, *exc: object) -> None:
        end = self._snapshot()
        if self._start is None or end is None:
            self.figures = {"others_cpu_share": float("nan"), "own_cpu_s": float("nan"), "wall_s": float("nan")}
            return
        (busy0, total0, own0, wall0), (busy1, total1, own1, wall1) = self._start, end
        capacity = max(total1 - total0, 1e-9)
        self.figures = {"others_cpu_share": max(0.0, (busy1 - busy0) - (own1 - own0)) / capacity, "own_cpu_s": own1 - own0, "wall_s": wall1 - wall0}

    @staticmethod
    def _snapshot() -> tuple[float, float, float, float] | None:
        try:
            with open("/proc/stat") as f:
                values = [int(v) for v in f.readline().split()[1:9]]  # user nice system idle iowait irq softirq steal
        except (OSError, ValueError):
            return None
        tick = os.sysconf("SC_CLK_TCK")
        times = os.times()
        return (sum(values) - values[3] - values[4]) / tick, sum(values) / tick, times.user + times.system, time.perf_counter()


def val_windows(val: torch.Tensor, block_size: int, batch_size: int = 64) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The val split's non-overlapping windows (stride block_size), each once, as scratchlm's
    sequential loader cuts them: (len - 1) // block_size windows."""
    count = (len(val) - 1) // block_size
    xs = torch.stack([val[i * block_size : (i + 1) * block_size] for i in range(count)])
    ys = torch.stack([val[i * block_size + 1 : (i + 1) * block_size + 1] for i in range(count)])
    return [(xs[i : i + batch_size], ys[i : i + batch_size]) for i in range(0, count, batch_size)]


def train_reference(text: str, recipe: NanoGPTRecipe, eval_every: int) -> dict[str, Any]:
    """nanoGPT's training loop on tinyshakespeare (fp32, eager), with exact val bits per byte every
    `eval_every` iterations and at the end, outside the training clock."""
    # data/shakespeare_char/prepare.py: the vocabulary of the whole text, then the 90/10 split.
    chars = sorted(set(text))
    stoi = {c: i for i, c in enumerate(chars)}
    data = torch.tensor([stoi[c] for c in text], dtype=torch.long)
    cut = int(len(data) * 0.9)
    train_data, val_data = data[:cut], data[cut:]

    torch.manual_seed(recipe.seed)
    config = GPTConfig(vocab_size=len(chars), block_size=recipe.block_size, n_layer=recipe.n_layer, n_head=recipe.n_head, n_embd=recipe.n_embd, dropout=recipe.dropout, bias=recipe.bias)
    model = GPT(config)
    model.train()
    # model.configure_optimizers: decay ≥ 2-D tensors, not biases and norms; fused only on CUDA.
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": recipe.weight_decay}, {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=recipe.learning_rate, betas=(recipe.beta1, recipe.beta2))

    def get_batch() -> tuple[torch.Tensor, torch.Tensor]:
        ix = torch.randint(len(train_data) - recipe.block_size, (recipe.batch_size,))
        x = torch.stack([train_data[i : i + recipe.block_size] for i in ix])
        y = torch.stack([train_data[i + 1 : i + 1 + recipe.block_size] for i in ix])
        return x, y

    batches = val_windows(val_data, recipe.block_size)
    ones = torch.ones(len(chars), dtype=torch.long)  # every character is one byte
    evals: list[dict[str, Any]] = []
    iter_s: list[float] = []
    train_s = 0.0
    loss_value = float("nan")
    for it in range(recipe.max_iters):
        started = time.perf_counter()
        lr = recipe.lr(it)
        for group in optimizer.param_groups:
            group["lr"] = lr
        x, y = get_batch()
        logits, _ = model(x)  # (B, T, 65)
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1), ignore_index=-1)
        loss.backward()
        if recipe.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss_value = loss.item()
        iter_s.append(time.perf_counter() - started)
        train_s += iter_s[-1]
        done = it + 1
        if done % eval_every == 0 or done == recipe.max_iters:
            started = time.perf_counter()
            figures = evaluate(model, batches, ones)
            eval_s = time.perf_counter() - started
            evals.append({"iter": done, "train_s": train_s, "val_loss": figures["loss"], "val_bpb": figures["bpb"], "val_tokens": figures["tokens"], "eval_s": eval_s, "train_loss": loss_value, "lr": lr})
            print(f"  reference iter {done:>5}: val {figures['loss']:.4f} nats/char = {figures['bpb']:.4f} bits per byte, {train_s:6.1f} s of training", file=sys.stderr, flush=True)
    return {
        "recipe": dataclasses.asdict(recipe), "vocab_size": len(chars), "train_chars": len(train_data), "val_chars": len(val_data),
        "num_params": model.num_params(), "dtype": "float32", "iters": recipe.max_iters, "train_s": train_s, "median_iter_s": median(iter_s[1:]),
        "eval_s_total": sum(e["eval_s"] for e in evals), "final": evals[-1], "evaluations": evals,
    }


# ---- scratchlm: tokenizer, shards, pretrain() --------------------------------------------------


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


def scratchlm_evaluations(metrics: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each evaluation line: step, tokens, figures, and `train_s` (training seconds at its step)."""
    keys = ("step", "tokens", "val_bpb", "val_loss", "val_tokens", "eval_s", "elapsed_s", "train_s")
    return [{k: r.get(k) for k in keys} for r in metrics if "val_bpb" in r]


def first_at_or_below(rows: list[dict[str, Any]], target: float) -> dict[str, Any] | None:
    return next((r for r in rows if r["val_bpb"] <= target), None)


def median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2] if ordered else float("nan")


def median_step_s(metrics: list[dict[str, Any]]) -> float:
    """scratchlm's median training seconds per step, from consecutive training lines (log_every = 1)."""
    lines = [r for r in metrics if "loss" in r]
    return median([b["train_s"] - a["train_s"] for a, b in pairwise(lines) if b["step"] == a["step"] + 1])


def interval_s(rows: list[dict[str, Any]]) -> float:
    """Median training seconds between consecutive evaluations (the timing resolution)."""
    gaps = sorted(b["train_s"] - a["train_s"] for a, b in pairwise(rows))
    return gaps[len(gaps) // 2] if gaps else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=DEFAULT_MINUTES, help="scratchlm's time budget (train.time_budget_s = 60 × this; evaluations count against it).")
    parser.add_argument("--preset", default=DEFAULT_PRESET, help="Preset name or TOML file for scratchlm's run.")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="Override a run setting (repeatable), e.g. --set optim.lr=6e-3; applied after the default recipe.")
    parser.add_argument("--plain-preset", action="store_true", help=f"Do not apply the default recipe ({' '.join(DEFAULT_OVERRIDES)}) on the {DEFAULT_PRESET} preset.")
    parser.add_argument("--vocab", type=int, default=DEFAULT_VOCAB, help="scratchlm's tokenizer vocabulary size.")
    parser.add_argument("--eval-every", type=int, default=DEFAULT_EVAL_EVERY, help="scratchlm: evaluate on the full val split every this many steps (and at the end).")
    parser.add_argument("--ref-eval-every", type=int, default=100, help="Reference: evaluate on the full val split every this many iterations (and at the end).")
    parser.add_argument("--ref-iters", type=int, default=2000, help="Reference: max_iters = lr_decay_iters (nanoGPT's CPU recipe: 2000; change it only for a smoke test).")
    parser.add_argument("--no-reference", action="store_true", help="Train scratchlm only (no ratios).")
    parser.add_argument("--out", default="runs/time-to-quality", help="Directory for scratchlm's tokenizer/, shards/ and run/ (a run there is replaced).")
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="tinyshakespeare.txt (nanoGPT's input.txt).")
    parser.add_argument("--targets", type=float, nargs="+", default=[2.70, 2.30], help="Val bits-per-byte targets to time.")
    parser.add_argument("--threads", type=int, default=0, help="torch threads for both contenders (default: torch's own choice).")
    parser.add_argument("--json", help="Also write all figures to this file.")
    args = parser.parse_args()

    data = Path(args.data)
    if not data.is_file():
        sys.exit(f"error: tinyshakespeare not found at {data}; put nanoGPT's input.txt (https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt) there, or pass --data PATH.")
    if args.minutes <= 0 or args.eval_every < 1 or args.ref_eval_every < 1 or args.vocab < 258 or args.ref_iters < 101:
        parser.error("--minutes must be positive, --eval-every and --ref-eval-every at least 1, --vocab at least 258 and --ref-iters more than the 100 warmup iterations.")
    if args.threads:
        torch.set_num_threads(args.threads)
    text = data.read_text(encoding="utf-8")
    if not text.isascii():
        sys.exit(f"error: {data} is not ASCII; this benchmark equates characters with bytes (tinyshakespeare is ASCII).")
    recipe_overrides = DEFAULT_OVERRIDES if args.preset == DEFAULT_PRESET and not args.plain_preset else []
    out = Path(args.out)

    # The reference first: ~1 minute, and it fails fast if something is wrong.
    reference = None
    if not args.no_reference:
        recipe = NanoGPTRecipe(max_iters=args.ref_iters, lr_decay_iters=args.ref_iters)
        print(f"reference: nanoGPT's shakespeare-char CPU recipe, {recipe.max_iters} iterations", file=sys.stderr, flush=True)
        with MachineShare() as share:
            reference = train_reference(text, recipe, args.ref_eval_every)
        reference["machine"] = share.figures

    try:
        config = load_config(
            RunConfig,
            resolve_config_file(args.preset),
            [*recipe_overrides, f"train.time_budget_s={args.minutes * 60.0}", "train.eval_tokens=0", f"train.eval_every={args.eval_every}", "train.log_every=1", *args.overrides],
        )
        prepared = prepare(text, out, args.vocab)
        config = dataclasses.replace(
            config,
            data=DataConfig(shards=str(out / "shards"), tokenizer=str(out / "tokenizer")),
            train=dataclasses.replace(config.train, out_dir=str(out / "run")),
        )
        print(f"scratchlm: pretrain() for {args.minutes:g} minutes", file=sys.stderr, flush=True)
        with MachineShare() as share:
            result = pretrain(config, overwrite=True)
        ours_machine = share.figures
    except UserError as error:
        sys.exit(f"error: {error}")

    metrics = read_metrics(out / "run" / "metrics.jsonl")
    rows = scratchlm_evaluations(metrics)
    train_lines = [r for r in metrics if "loss" in r]
    last_lr = train_lines[-1]["lr"] if train_lines else float("nan")
    min_lr = config.optim.lr * config.optim.min_lr_ratio
    tc, m = config.train, config.model
    dtype = str(resolve_dtype(tc.dtype, resolve_device(tc.device))).removeprefix("torch.")
    eval_s_total = sum(r["eval_s"] for r in rows)
    finished = last_lr <= min_lr * 1.05

    print(f"\nmachine: {cpu_model()}; {torch.get_num_threads()} torch threads; torch {torch.__version__}")
    print(f"data: {data} ({len(text):,} characters = bytes); train = first 90% ({prepared['train_bytes']:,} bytes), val = last 10% ({prepared['val_bytes']:,} bytes)")
    if reference is not None:
        r = reference["recipe"]
        final = reference["final"]
        print(f"\nreference (nanoGPT's CPU recipe, nanoGPT-style loop): {r['n_layer']} layers, {r['n_head']} heads, {r['n_embd']} wide, context {r['block_size']}, batch {r['batch_size']}; "
              f"{reference['vocab_size']} characters; {reference['num_params'] / 1e6:.2f} M parameters; float32, eager, AdamW not fused")
        print(f"     lr {r['learning_rate']:g} → {r['min_lr']:g} (warmup {r['warmup_iters']}, cosine to {r['lr_decay_iters']}); {reference['iters']} iterations in {reference['train_s']:.1f} s of training "
              f"({1000 * reference['train_s'] / reference['iters']:.1f} ms/iter); other processes took {reference['machine']['others_cpu_share']:.0%} of the CPUs meanwhile")
        print(f"     {len(reference['evaluations'])} evaluations on the whole val split ({final['val_tokens']:,} characters each) took {reference['eval_s_total']:.1f} s, not counted")
        print(f"     final val loss {final['val_loss']:.4f} nats/char = {final['val_bpb']:.4f} bits per byte (nanoGPT's README: ~{NANOGPT_PUBLISHED_VAL_LOSS} nats/char "
              f"= {NANOGPT_PUBLISHED_VAL_LOSS / math.log(2):.2f} bits per byte, measured there on 20 random val batches)")
        print("     curve: " + ", ".join(f"{e['iter']}: {e['val_bpb']:.2f}" for e in reference["evaluations"] if e["iter"] % 500 == 0 or e is final))
    print(f"\nscratchlm: preset {args.preset}" + (f" + {' '.join('--set ' + o for o in recipe_overrides)}" if recipe_overrides else "") + (f" + {' '.join('--set ' + o for o in args.overrides)}" if args.overrides else ""))
    print(f"     tokenizer: {prepared['vocab_size']} tokens, {prepared['train_bytes_per_token']:.2f} bytes/token on train, trained in {prepared['tokenizer_train_s']:.1f} s; shards written in {prepared['shards_s']:.1f} s (neither is training time)")
    print(f"     {m.n_layer} layers, {m.n_head} heads, {m.n_embd} wide, context {m.block_size}, {m.position}/{m.norm}/{m.mlp}{'/qk-norm' if m.qk_norm else ''}; {tc.batch_tokens:,} tokens/step; lr {config.optim.lr:g}; "
          f"{dtype} ({tc.dtype}); {result['num_params'] / 1e6:.2f} M parameters")
    print(f"     budget {tc.time_budget_s:.0f} s: {result['step']} steps, {result['tokens']:,} tokens, {result['train_s']:.1f} s of training ({1000 * result['train_s'] / max(1, result['step']):.1f} ms/step), "
          f"wall {result['wall_s']:.1f} s; other processes took {ours_machine['others_cpu_share']:.0%} of the CPUs meanwhile")
    print(f"     {len(rows)} evaluations on the whole val split took {eval_s_total:.1f} s ({eval_s_total / max(1, len(rows)):.1f} s each, their samples included), not counted")
    print(f"     learning-rate schedule {'completed' if finished else 'NOT completed'} (last lr {last_lr:.2e}, floor {min_lr:.2e})" + ("" if finished else ": the time budget stopped the run before the fitted horizon"))
    print(f"     final val {rows[-1]['val_bpb']:.4f} bits per byte (val loss {rows[-1]['val_loss']:.4f} nats/token)")

    print("\nTraining seconds to reach each target (first evaluation at or below it; evaluations excluded):")
    ref_gap = interval_s(reference["evaluations"]) if reference else float("nan")
    ours_step_s = median_step_s(metrics)
    ref_iter_s = reference["median_iter_s"] if reference else float("nan")
    print(f"{'target bpb':>10} | {'reference: iter':>15} {'train s':>8} {'bpb':>6} | {'scratchlm: step':>15} {'tokens':>10} {'train s':>8} {'bpb':>6} | {'ratio ref/scratchlm':>19} | {'at median pace':>14}")
    crossings = []
    for target in args.targets:
        ours = first_at_or_below(rows, target)
        ref = first_at_or_below(reference["evaluations"], target) if reference else None
        if reference is not None:
            ref_s = ref["train_s"] if ref else reference["train_s"]
            ref_text = f"{ref['iter']:>15} {ref['train_s']:>8.1f} {ref['val_bpb']:>6.3f}" if ref else f"{'not reached':>15} {'>' + format(reference['train_s'], '.1f'):>8} {reference['final']['val_bpb']:>6.3f}"
        else:
            ref_s, ref_text = float("nan"), f"{'':>15} {'':>8} {'':>6}"
        ours_text = f"{ours['step']:>15} {ours['tokens']:>10,} {ours['train_s']:>8.1f} {ours['val_bpb']:>6.3f}" if ours else f"{'not reached':>15} {'':>10} {'':>8} {'':>6}"
        ratio = ref_s / ours["train_s"] if ours and reference is not None else float("nan")
        bound = reference is not None and ref is None
        ratio_text = ("≥ " if bound else "") + f"{ratio:.2f}×" if math.isfinite(ratio) else "n/a"
        # The same crossings timed at each contender's median step time: robust to bursts of load.
        ref_steps = ref["iter"] if ref else (reference["iters"] if reference else 0)
        paced = ref_steps * ref_iter_s / (ours["step"] * ours_step_s) if ours and reference is not None else float("nan")
        paced_text = ("≥ " if bound else "") + f"{paced:.2f}×" if math.isfinite(paced) else "n/a"
        print(f"{target:>10.2f} | {ref_text} | {ours_text} | {ratio_text:>19} | {paced_text:>14}")
        crossings.append({
            "target_bpb": target, "reference": ref, "reference_reached": ref is not None, "reference_train_s": ref_s,
            "scratchlm": ours, "scratchlm_reached": ours is not None, "scratchlm_train_s": ours["train_s"] if ours else None,
            "ratio": ratio if math.isfinite(ratio) else None, "ratio_is_lower_bound": bound,
            "ratio_at_median_pace": paced if math.isfinite(paced) else None,
        })
    print(f"{'final':>10} | {'':>15} {'':>8} {reference['final']['val_bpb'] if reference else float('nan'):>6.3f} | {rows[-1]['step']:>15} {rows[-1]['tokens']:>10,} {rows[-1]['train_s']:>8.1f} {rows[-1]['val_bpb']:>6.3f} |")
    print(f"(timing resolution: the reference evaluates every {ref_gap:.1f} s of training, scratchlm every {interval_s(rows):.1f} s; a crossing is timed at the first evaluation after it.")
    print(f" At median pace: the same crossings, each step timed at its contender's median, {1000 * ref_iter_s:.1f} ms/iter for the reference and {1000 * ours_step_s:.1f} ms/step for scratchlm,")
    print(" a check against bursts of load from other processes; the measured ratio is the benchmark's figure.)")
    busy = [share for share in ((reference or {}).get("machine", {}).get("others_cpu_share", 0.0), ours_machine["others_cpu_share"]) if math.isfinite(share)]
    if busy and max(busy) > 0.10:
        print(f"warning: other processes took up to {max(busy):.0%} of the CPUs while a contender trained; its training seconds are inflated and the measured ratio is unreliable. Rerun on a quiet machine.")

    if args.json:
        with open(args.json, "w") as f:
            json.dump({
                "data": str(data), "cpu_model": cpu_model(), "threads": torch.get_num_threads(), "torch": torch.__version__, "targets": args.targets,
                "crossings": crossings, "reference": reference,
                "scratchlm": {
                    "preset": args.preset, "recipe_overrides": recipe_overrides, "overrides": args.overrides, "minutes": args.minutes, "eval_every": args.eval_every,
                    "dtype": dtype, **prepared, "num_params": result["num_params"], "steps": result["step"], "tokens": result["tokens"], "train_s": result["train_s"],
                    "wall_s": result["wall_s"], "eval_s_total": eval_s_total, "schedule_completed": finished, "last_lr": last_lr, "machine": ours_machine, "median_step_s": ours_step_s,
                    "final": rows[-1], "evaluations": rows, "run_config": to_dict(config),
                },
            }, f, indent=2)


if __name__ == "__main__":
    main()
