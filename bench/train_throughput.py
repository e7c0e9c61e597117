"""Training throughput (tokens/s) and MFU on the CPU: scratchlm's training step against the
step nanoGPT's train.py runs on a CPU.

Two shapes, both the GPT-2 architecture (learned positions, LayerNorm, GELU, tied embeddings):

    a  4 layers, 4 heads, 128 wide, context 64, batch 12   (nanoGPT's shakespeare-char CPU recipe)
    b  6 layers, 6 heads, 384 wide, context 256, batch 8   (the shakespeare-cpu preset's size)

with GPT-2's padded vocabulary of 50304 rows, as nanoGPT's bench.py uses (`--vocab` changes it).
At that vocabulary the output head is most of shape a's FLOPs; the table says how much.

Contenders, on the same architecture and shape, alternated round by round; each round is
`--steps` training steps after `--warmup` untimed ones, and each contender's best round counts
(the least disturbed by other load on a shared machine). Figures are ratios against the reference
measured in the same run, because these machines are noisy.

- reference: what nanoGPT's train.py/bench.py do on a CPU: fp32 (no autocast on CPU), eager,
  AdamW without `fused` (nanoGPT fuses only on CUDA), forward + backward + step +
  zero_grad(set_to_none) per iteration, on random token batches (torch.randint).
- scratchlm: the step `scratchlm.train.loop.pretrain` runs, replicated line by line (pretrain()
  itself builds a model, measures a peak, evaluates and writes a checkpoint each call, which a
  round-by-round race cannot repeat cheaply): autocast in the dtype the loop picks (`--dtype`,
  default auto: bf16 autocast on CPUs whose bf16 matmuls measure faster than fp32, i.e. with
  AVX-512 BF16 or AMX; fp32 on AVX2-only CPUs, where bf16 falls back to a path 10-100× slower),
  through the loop's own `resolve_dtype` and `_autocast`; batches from a real TokenLoader over
  shards written by `write_shards` (data loading is timed); AdamW from `make_optimizer`; the
  learning rate set per step; the loss read back with float() and checked; gradient clipping;
  zero_grad(set_to_none=True).
- pretrain(): the real loop, called once per round on the same shards and shape (eval only at the
  end, no samples, no checkpoints in between); its time is the difference of the `elapsed_s` its
  metrics.jsonl logs at the end of the warmup steps and at the end of the timed steps, so its
  setup, final evaluation and checkpoint are not counted but everything it does per step is
  (progress bar, metrics lines, time-budget checks). It checks that the replica above is the
  loop's real speed. `--no-loop` leaves it out.

Model FLOPs per token are `GPT.flops_per_token(T)` (6 per matmul parameter + attention scores).
The bf16 and fp32 matmul peaks are measured in the same run, before and after each shape's race
(`measure_matmul_peak`, 2048×2048, what the training loop's MFU uses on CPU; on a CPU without
native bf16 the bf16 peak is measured at 512×512, because one 2048² bf16 matmul takes ~15 s
there, and is only shown for context). MFU = achieved FLOP/s over the machine's best matmul peak
(bf16 where it is native, else fp32), so the figures of both contenders share one denominator;
the JSON also has each against the bf16 and the fp32 peak. `--breakdown` adds where the time of one
step goes (data, forward, backward, loss read-back, clipping, optimizer), phase by phase.

    python bench/train_throughput.py [--shapes a b] [--rounds 3] [--steps 10] [--warmup 3]
                                     [--threads N] [--vocab 50304] [--dtype auto]
                                     [--no-loop] [--breakdown] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import string
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from scratchlm.console import set_quiet
from scratchlm.data.documents import Document
from scratchlm.data.loader import TokenLoader
from scratchlm.data.shards import ShardConfig, write_shards
from scratchlm.model.gpt import GPT, GPTConfig
from scratchlm.tokenizer.tokenizer import EOT
from scratchlm.tokenizer.train import TokenizerTrainConfig, train_from_texts
from scratchlm.train.loop import (
    DataConfig,
    RunConfig,
    TrainConfig,
    _autocast,
    cpu_bf16_is_faster,
    pretrain,
    resolve_dtype,
)
from scratchlm.train.metrics import measure_matmul_peak, read_metrics
from scratchlm.train.optim import OptimConfig, lr_at, make_optimizer

SHAPES = {
    "a": {"n_layer": 4, "n_head": 4, "n_embd": 128, "block_size": 64, "batch_size": 12},
    "b": {"n_layer": 6, "n_head": 6, "n_embd": 384, "block_size": 256, "batch_size": 8},
}
SEED = 1337


def race(contenders: dict[str, Callable[[], float]], rounds: int) -> dict[str, float]:
    """Best time of each contender, run alternately so all see the same machine state.

    Each callable runs one round and returns the seconds its timed steps took (so that a
    contender can leave its own warmup or setup out). The best of several rounds is the run least
    disturbed by other load on a shared machine.
    """
    best = {name: float("inf") for name in contenders}
    for _ in range(rounds):
        for name, function in contenders.items():
            best[name] = min(best[name], function())
    return best


# ---- data ------------------------------------------------------------------------------------


def make_shards(directory: Path, tokens: int = 1_000_000) -> Path:
    """A small shards directory (and its tokenizer beside it) from synthetic text.

    The text is random words over a 512-token tokenizer trained on it; the ids are far below the
    model's vocabulary, which changes nothing about the compute: the output head is the whole
    vocabulary whatever the targets are. Returns the shards directory.
    """
    rng = random.Random(SEED)
    words = ["".join(rng.choices(string.ascii_lowercase, k=rng.randint(1, 9))) for _ in range(3000)]
    # About 2 tokens per word at this vocabulary; 40 documents leave a val split for pretrain().
    texts = [" ".join(rng.choices(words, k=tokens // 2 // 40)) for _ in range(40)]
    tokenizer = train_from_texts(texts[:4], TokenizerTrainConfig(vocab_size=512, special_tokens=[EOT], workers=1))
    tokenizer.save(directory / "tokenizer")
    documents = [Document(f"doc{i}", text) for i, text in enumerate(texts)]
    write_shards(documents, tokenizer, directory / "shards", ShardConfig(val_fraction=0.05, workers=1, decontaminate_val=False))
    return directory / "shards"


# ---- contenders --------------------------------------------------------------------------------


def model_config(shape: dict, vocab: int) -> GPTConfig:
    """The GPT-2 architecture (scratchlm's defaults) at this shape, dropout 0."""
    return GPTConfig(vocab_size=vocab, block_size=shape["block_size"], n_layer=shape["n_layer"], n_head=shape["n_head"], n_embd=shape["n_embd"])


class Reference:
    """nanoGPT's CPU training iteration: fp32, eager, non-fused AdamW, random batches."""

    def __init__(self, config: GPTConfig, batch_size: int) -> None:
        torch.manual_seed(SEED)
        self.config, self.batch_size = config, batch_size
        self.model = GPT(config)
        self.model.train()
        # nanoGPT's configure_optimizers: decay ≥ 2-D tensors, not biases and norms; fused only on CUDA.
        params = [p for p in self.model.parameters() if p.requires_grad]
        groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.1}, {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
        self.optimizer = torch.optim.AdamW(groups, lr=6e-4, betas=(0.9, 0.95))

    def batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (self.batch_size, self.config.block_size)
        return torch.randint(self.config.vocab_size, shape), torch.randint(self.config.vocab_size, shape)

    def steps(self, n: int) -> float:
        started = time.perf_counter()
        for _ in range(n):
            x, y = self.batch()
            _, loss = self.model(x, y)
            loss.backward()
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - started

    def breakdown(self, n: int) -> dict[str, float]:
        """Seconds per phase over n steps (CPU ops are synchronous, so the clock is exact)."""
        times = dict.fromkeys(("data", "forward", "backward", "optimizer", "zero_grad"), 0.0)
        for _ in range(n):
            t0 = time.perf_counter()
            x, y = self.batch()
            t1 = time.perf_counter()
            _, loss = self.model(x, y)
            t2 = time.perf_counter()
            loss.backward()
            t3 = time.perf_counter()
            self.optimizer.step()
            t4 = time.perf_counter()
            self.optimizer.zero_grad(set_to_none=True)
            t5 = time.perf_counter()
            for key, dt in zip(times, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)):
                times[key] += dt
        return times


class Ours:
    """scratchlm's training step, as `pretrain` runs it (see the loop body in train/loop.py)."""

    def __init__(self, config: GPTConfig, batch_size: int, shards: Path, dtype: str) -> None:
        torch.manual_seed(SEED)
        self.device = torch.device("cpu")
        self.dtype = resolve_dtype(dtype, self.device)  # the loop's choice for train.dtype
        self.optim = OptimConfig()
        self.model = GPT(config).to(self.device)
        self.model.train()
        self.optimizer = make_optimizer(self.model, self.optim, self.device.type)
        self.loader = TokenLoader(shards, "train", batch_size, config.block_size, mode="random", seed=SEED, device=self.device)
        self.autocast = _autocast(self.device, self.dtype)
        self.grad_accum = 1  # batch_tokens = micro_batch_size × block_size
        self.step, self.horizon = 0, 10**6

    def steps(self, n: int) -> float:
        started = time.perf_counter()
        for _ in range(n):
            self.one_step()
        return time.perf_counter() - started

    def one_step(self, times: dict[str, float] | None = None) -> None:
        # This mirrors the body of pretrain()'s `while step < horizon` loop, minus logging.
        clock = time.perf_counter
        t0 = clock()
        lr = lr_at(self.step, self.horizon, self.optim)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        loss_sum = torch.zeros((), device=self.device)
        data = forward = backward = 0.0
        for _ in range(self.grad_accum):
            a = clock()
            x, y = self.loader.next_batch()
            b = clock()
            with self.autocast:
                _, loss = self.model(x, y)
            c = clock()
            (loss / self.grad_accum).backward()
            loss_sum += loss.detach()
            d = clock()
            data, forward, backward = data + b - a, forward + c - b, backward + d - c
        e = clock()
        loss_value = float(loss_sum) / self.grad_accum
        if not math.isfinite(loss_value):
            raise RuntimeError(f"loss became {loss_value}")
        f = clock()
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.optim.grad_clip if self.optim.grad_clip > 0 else float("inf")))
        g = clock()
        self.optimizer.step()
        h = clock()
        self.optimizer.zero_grad(set_to_none=True)
        i = clock()
        del grad_norm
        self.step += 1
        if times is not None:
            phases = {"lr+misc": (a - t0) + (e - d), "data": data, "forward": forward, "backward": backward, "loss read-back": f - e, "clip": g - f, "optimizer": h - g, "zero_grad": i - h}
            for key, dt in phases.items():
                times[key] = times.get(key, 0.0) + dt

    def breakdown(self, n: int) -> dict[str, float]:
        times: dict[str, float] = {}
        for _ in range(n):
            self.one_step(times)
        return times


class Loop:
    """The real `pretrain()` on the same shards and shape, one short run per round."""

    def __init__(self, config: GPTConfig, batch_size: int, shards: Path, dtype: str, work: Path, warmup: int, steps: int, peak: float) -> None:
        self.config, self.batch_size, self.shards, self.dtype, self.work = config, batch_size, shards, dtype, work
        self.warmup, self.steps_timed, self.peak = warmup, steps, peak
        self.runs = 0

    def run(self) -> float:
        out_dir = self.work / f"loop-run-{self.runs}"
        self.runs += 1
        tokens = self.batch_size * self.config.block_size
        # Metrics lines exactly at the end of the warmup and of the timed steps.
        log_every = math.gcd(self.warmup, self.steps_timed) if self.warmup else self.steps_timed
        run = RunConfig(
            model=self.config,
            data=DataConfig(shards=str(self.shards)),
            optim=OptimConfig(),
            train=TrainConfig(
                out_dir=str(out_dir), batch_tokens=tokens, micro_batch_size=self.batch_size, max_steps=self.warmup + self.steps_timed,
                eval_every=0, eval_tokens=tokens, sample_tokens=0, log_every=log_every, dtype=self.dtype, device="cpu", peak_flops=self.peak, seed=SEED,
            ),
        )
        try:
            pretrain(run)
            elapsed = {r["step"]: r["elapsed_s"] for r in read_metrics(out_dir / "metrics.jsonl") if "elapsed_s" in r}
        finally:
            shutil.rmtree(out_dir, ignore_errors=True)
        return elapsed[self.warmup + self.steps_timed] - elapsed.get(self.warmup, 0.0)


# ---- the benchmark ---------------------------------------------------------------------------


def matmul_peaks() -> dict[str, float]:
    """bf16 and fp32 matmul FLOP/s (2048², as the loop measures; bf16 at 512² where it is not native)."""
    native = cpu_bf16_is_faster()
    return {"bf16": measure_matmul_peak(torch.bfloat16, 2048 if native else 512), "fp32": measure_matmul_peak(torch.float32, 2048), "bf16_native": native}


def bench_shape(name: str, args: argparse.Namespace, shards: Path, work: Path) -> dict:
    shape = SHAPES[name]
    B, T = shape["batch_size"], shape["block_size"]
    config = model_config(shape, args.vocab)
    peaks = matmul_peaks()

    reference, ours = Reference(config, B), Ours(config, B, shards, args.dtype)
    model = ours.model
    flops_per_token = model.flops_per_token(T)
    head_share = 6 * config.vocab_size * config.n_embd / flops_per_token
    reference.steps(args.warmup)
    ours.steps(args.warmup)
    contenders: dict[str, Callable[[], float]] = {"reference": lambda: reference.steps(args.steps), "scratchlm": lambda: ours.steps(args.steps)}
    if args.loop:
        # The measured peak goes in as train.peak_flops, so pretrain() does not measure it each round.
        loop = Loop(config, B, shards, args.dtype, work, args.warmup, args.steps, max(peaks["bf16"], peaks["fp32"]))
        contenders["pretrain()"] = loop.run
    best = race(contenders, args.rounds)
    # Peaks again after the race: the best of before and after, as with the training times.
    after = matmul_peaks()
    peak_bf16, peak_fp32 = max(peaks["bf16"], after["bf16"]), max(peaks["fp32"], after["fp32"])
    peak = max(peak_bf16, peak_fp32)
    dtypes = {"reference": "float32", "scratchlm": str(ours.dtype).removeprefix("torch."), "pretrain()": str(ours.dtype).removeprefix("torch.")}

    tokens_per_step = B * T
    print(f"\nshape {name}: {shape['n_layer']} layers, {shape['n_head']} heads, {shape['n_embd']} wide, context {T}, batch {B}, vocab {config.vocab_size}")
    print(f"  {model.num_params() / 1e6:.2f} M parameters; {flops_per_token / 1e6:.1f} MFLOP/token, output head {head_share:.0%} of it")
    native = "native" if peaks["bf16_native"] else "NOT native here: a fallback path, measured at 512²"
    print(f"  matmul peaks measured now: bf16 {peak_bf16 / 1e9:.1f} GFLOP/s ({native}), fp32 {peak_fp32 / 1e9:.1f} GFLOP/s (2048²); {torch.get_num_threads()} threads")
    print(f"  {'contender':<11} {'dtype':>9} {'ms/iter':>9} {'tokens/s':>10} {'ref/this':>9} {'GFLOP/s':>9} {'MFU':>7}")
    rows = []
    for contender, seconds in best.items():
        per_step = seconds / args.steps
        tokens_per_s = tokens_per_step / per_step
        achieved = tokens_per_s * flops_per_token
        ratio = best["reference"] / seconds
        rows.append({
            "contender": contender, "dtype": dtypes[contender], "ms_per_iter": per_step * 1e3, "tokens_per_s": tokens_per_s, "ratio_reference_over_this": ratio,
            "flops_per_s": achieved, "mfu": achieved / peak, "mfu_vs_bf16_peak": achieved / peak_bf16, "mfu_vs_fp32_peak": achieved / peak_fp32,
        })
        print(f"  {contender:<11} {dtypes[contender]:>9} {per_step * 1e3:>9.1f} {tokens_per_s:>10,.0f} {ratio:>8.2f}x {achieved / 1e9:>9.1f} {achieved / peak:>7.1%}")

    result = {
        "shape": name, **shape, "vocab_size": config.vocab_size, "num_params": model.num_params(), "flops_per_token": flops_per_token, "head_flops_share": head_share,
        "peak_bf16_flops": peak_bf16, "peak_fp32_flops": peak_fp32, "bf16_native": peaks["bf16_native"], "threads": torch.get_num_threads(), "rounds": args.rounds, "steps": args.steps, "warmup": args.warmup, "rows": rows,
    }
    if args.breakdown:
        result["breakdown_ms_per_step"] = {}
        for contender, runner in (("reference", reference), ("scratchlm", ours)):
            times = runner.breakdown(args.steps)
            total = sum(times.values())
            per_step = {k: 1e3 * v / args.steps for k, v in times.items()}
            result["breakdown_ms_per_step"][contender] = per_step
            print(f"  {contender} per step: " + ", ".join(f"{k} {v:.1f} ms ({times[k] / total:.0%})" for k, v in per_step.items()))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", choices=sorted(SHAPES), default=sorted(SHAPES))
    parser.add_argument("--rounds", type=int, default=3, help="Rounds per contender; the best counts.")
    parser.add_argument("--steps", type=int, default=10, help="Timed training steps per round.")
    parser.add_argument("--warmup", type=int, default=3, help="Untimed steps before the timed ones.")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: every core this process may use).")
    parser.add_argument("--vocab", type=int, default=50304, help="Embedding rows (GPT-2's 50257 padded to 50304, as nanoGPT).")
    parser.add_argument("--dtype", choices=["auto", "bfloat16", "float32"], default="auto", help="scratchlm's train.dtype (auto: the loop's choice for this CPU).")
    parser.add_argument("--no-loop", dest="loop", action="store_false", help="Leave out the pretrain() contender.")
    parser.add_argument("--breakdown", action="store_true", help="Also time each phase of a step.")
    parser.add_argument("--json", help="Also write the figures to this file.")
    args = parser.parse_args()
    if min(args.rounds, args.steps) < 1 or args.warmup < 0:
        parser.error("--rounds and --steps must be at least 1 and --warmup at least 0.")
    set_quiet(True)
    torch.set_num_threads(args.threads or len(os.sched_getaffinity(0)))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; best of {args.rounds} rounds of {args.steps} steps after {args.warmup} warmup steps")

    results = []
    with tempfile.TemporaryDirectory(prefix="scratchlm-bench-") as directory:
        work = Path(directory)
        shards = make_shards(work)
        for name in args.shapes:
            results.append(bench_shape(name, args, shards, work))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"torch": torch.__version__, "shapes": results}, f, indent=2)


if __name__ == "__main__":
    main()
