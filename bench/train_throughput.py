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
- scratchlm: `Trainer.train_step`, the very step `pretrain` runs, on a Trainer from `build_run`
  (the real run assembly: `parallelize`, `make_optimizer`, a TokenLoader over shards written by
  `write_shards`, data loading timed), in the dtype the run picks (`--dtype`, default auto: bf16
  autocast on CPUs whose bf16 matmuls measure faster than fp32, i.e. with AVX-512 BF16 or AMX;
  fp32 on AVX2-only CPUs, where bf16 falls back to a path 10-100× slower). The loss is the model's
  chunked head + cross-entropy (model/loss.py), which never holds all B·T·V logits.
- pretrain(): the whole loop, called once per round on the same shards and shape (eval only at
  the end, no samples, no checkpoints in between); its time is the difference of the `train_s`
  its metrics.jsonl logs at the end of the warmup steps and at the end of the timed steps, so
  its setup, evaluation and checkpoint are not counted but everything it does per step is
  (progress bar, metrics lines, time-budget checks). `--no-loop` leaves it out.

Peak memory: each contender also runs `--warmup` + `--steps` steps alone in a fresh process, and
the process's peak resident set size (VmHWM) is reported, less the peak it had when the model and
data were built (so the figure is what the training steps add).

Model FLOPs per token are `GPT.flops_per_token(T)` (6 per matmul parameter + attention scores).
The bf16 and fp32 matmul peaks are measured in the same run, before and after each shape's race
(`measure_matmul_peak`, 2048×2048, what the training loop's MFU uses on CPU; on a CPU without
native bf16 the bf16 peak is measured at 512×512, because one 2048² bf16 matmul takes ~15 s
there, and is only shown for context). MFU = achieved FLOP/s over the machine's best matmul peak
(bf16 where it is native, else fp32), so the figures of both contenders share one denominator;
the JSON also has each against the bf16 and the fp32 peak.

    python bench/train_throughput.py [--shapes a b] [--rounds 3] [--steps 10] [--warmup 3]
                                     [--threads N] [--vocab 50304] [--dtype auto]
                                     [--no-loop] [--no-memory] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import string
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from scratchlm.console import set_quiet
from scratchlm.data.documents import Document
from scratchlm.data.shards import ShardConfig, write_shards
from scratchlm.model.gpt import GPT, GPTConfig
from scratchlm.runtime import cpu_bf16_is_faster, cpu_model
from scratchlm.tokenizer.tokenizer import EOT
from scratchlm.tokenizer.train import TokenizerTrainConfig, train_from_texts
from scratchlm.train.metrics import measure_matmul_peak, read_metrics
from scratchlm.train.optim import OptimConfig, lr_at
from scratchlm.train.run import build_run, pretrain
from scratchlm.train.settings import DataConfig, RunConfig, TrainConfig

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
            # nanoGPT's GPT.forward with targets: the whole logits, then F.cross_entropy.
            logits, _ = self.model(x)  # (B, T, V)
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1), ignore_index=-1)
            loss.backward()
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - started


class Ours:
    """scratchlm's training step: `Trainer.train_step` on a Trainer from `build_run`."""

    def __init__(self, config: GPTConfig, batch_size: int, shards: Path, dtype: str, work: Path, peak: float) -> None:
        tokens = batch_size * config.block_size
        run = RunConfig(
            model=config,
            data=DataConfig(shards=str(shards)),
            optim=OptimConfig(),
            train=TrainConfig(out_dir=str(work / "ours"), batch_tokens=tokens, micro_batch_size=batch_size, max_steps=10**6, sample_tokens=0, dtype=dtype, device="cpu", peak_flops=peak, seed=SEED),
        )
        self.trainer, _ = build_run(run)
        self.dtype = self.trainer.dtype
        self.model = self.trainer.checkpoint_model
        self.trainer.model.train()
        self.step = 0

    def steps(self, n: int) -> float:
        started = time.perf_counter()
        for _ in range(n):
            self.trainer.train_step(lr_at(self.step, self.trainer.settings.max_steps, self.trainer.optim))
            self.step += 1
        return time.perf_counter() - started


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
            train_s = {r["step"]: r["train_s"] for r in read_metrics(out_dir / "metrics.jsonl") if "loss" in r}
        finally:
            shutil.rmtree(out_dir, ignore_errors=True)
        return train_s[self.warmup + self.steps_timed] - train_s.get(self.warmup, 0.0)


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

    # The measured peak goes in as train.peak_flops, so the run does not measure it again.
    reference, ours = Reference(config, B), Ours(config, B, shards, args.dtype, work, max(peaks["bf16"], peaks["fp32"]))
    model = ours.model
    flops_per_token = model.flops_per_token(T)
    head_share = 6 * config.vocab_size * config.n_embd / flops_per_token
    reference.steps(args.warmup)
    ours.steps(args.warmup)
    contenders: dict[str, Callable[[], float]] = {"reference": lambda: reference.steps(args.steps), "scratchlm": lambda: ours.steps(args.steps)}
    if args.loop:
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
    if args.memory:
        result["peak_memory_mb"] = {}
        for contender in ("reference", "scratchlm"):
            added = step_memory_mb(contender, name, args, shards)
            result["peak_memory_mb"][contender] = added
        mb = result["peak_memory_mb"]
        print(f"  peak memory the steps add (fresh process each, peak RSS): reference {mb['reference']:,.0f} MB, scratchlm {mb['scratchlm']:,.0f} MB ({mb['scratchlm'] / mb['reference']:.2f}×)")
    return result


def step_memory_mb(contender: str, shape: str, args: argparse.Namespace, shards: Path) -> float:
    """Peak RSS the training steps add, measured in a fresh process (see `memory_probe`)."""
    command = [sys.executable, __file__, "--memory-probe", contender, "--shapes", shape, "--shards-dir", str(shards), "--vocab", str(args.vocab), "--dtype", args.dtype, "--steps", str(args.steps), "--warmup", str(args.warmup), "--threads", str(torch.get_num_threads())]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    figures = json.loads(out.strip().splitlines()[-1])
    return (figures["after_kb"] - figures["before_kb"]) / 1024


def peak_rss_kb() -> int:
    """The process's peak resident set size (VmHWM) since the last `reset_peak_rss`."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))


def reset_peak_rss() -> None:
    # A forked child starts with its parent's high-water mark (kept across exec); writing 5 to
    # clear_refs resets it to the current RSS (Linux).
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def memory_probe(args: argparse.Namespace) -> None:
    """In a fresh process: build one contender, note the peak RSS, run its steps, note it again."""
    reset_peak_rss()
    shape = SHAPES[args.shapes[0]]
    config = model_config(shape, args.vocab)
    with tempfile.TemporaryDirectory(prefix="scratchlm-bench-") as directory:
        runner = Reference(config, shape["batch_size"]) if args.memory_probe == "reference" else Ours(config, shape["batch_size"], Path(args.shards_dir), args.dtype, Path(directory), 1.0)
        before = peak_rss_kb()
        runner.steps(args.warmup + args.steps)
        after = peak_rss_kb()
    print(json.dumps({"before_kb": before, "after_kb": after}))


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
    parser.add_argument("--no-memory", dest="memory", action="store_false", help="Leave out the peak-memory measurement.")
    parser.add_argument("--json", help="Also write the figures to this file.")
    parser.add_argument("--memory-probe", choices=["reference", "scratchlm"], help=argparse.SUPPRESS)
    parser.add_argument("--shards-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if min(args.rounds, args.steps) < 1 or args.warmup < 0:
        parser.error("--rounds and --steps must be at least 1 and --warmup at least 0.")
    set_quiet(True)
    torch.set_num_threads(args.threads or len(os.sched_getaffinity(0)))
    if args.memory_probe:
        memory_probe(args)
        return
    print(f"{cpu_model()}; torch {torch.__version__}, {torch.get_num_threads()} threads; best of {args.rounds} rounds of {args.steps} steps after {args.warmup} warmup steps")

    results = []
    with tempfile.TemporaryDirectory(prefix="scratchlm-bench-") as directory:
        work = Path(directory)
        shards = make_shards(work)
        for name in args.shapes:
            results.append(bench_shape(name, args, shards, work))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"cpu": cpu_model(), "torch": torch.__version__, "shapes": results}, f, indent=2)


if __name__ == "__main__":
    main()
