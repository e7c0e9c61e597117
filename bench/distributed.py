"""Distributed training on a CPU: 2 processes × 1 thread against 1 process × 2 threads
(tokens/s), and the share of each mode's step spent on anything but its rank's own compute
(communication, waiting, and work replicated on both ranks), per mode.

Targets, at a compute-bound batch: DDP at 2×1 ≥ 0.9× the tokens/s of 1×2; FSDP2 ≥ 0.8×.

The run, as a user runs it
--------------------------
Every figure comes from a real `scratchlm train` run, started as a subprocess
(`python -m scratchlm train RUN.toml --set ... [--nproc 2]`, torchrun in-process, gloo on CPU):

    1p×2t        the reference: one process, OMP_NUM_THREADS=2
    1p×1t        one process, OMP_NUM_THREADS=1, the same global batch: what the second thread
                 buys in the reference (1p×2t / 1p×1t; 2.0 would be perfect)
    1p×1t half   one process, one thread, HALF the global batch: one rank's share of the work
                 under data parallelism (the ideal step of a DDP/FSDP/ZeRO rank)
    pair         two independent `1p×1t half` processes started together (no process group, no
                 communication): the ideal step of a rank when the other core is busy too, so
                 what sharing the chip costs (memory bandwidth, shared cache, clocks) is told
                 apart from what communicating costs (`--no-pair` leaves it out)
    ddp fsdp tp  two processes, OMP_NUM_THREADS=1 each (`--nproc 2`, parallel.dp=2 / parallel.fsdp=2
                 / parallel.tp=2)
    zero1-3      with `--deepspeed`: parallel.backend=deepspeed, parallel.zero_stage=1|2|3 (its
                 C++ op is compiled on the first start on a machine, 30-100 s, outside train_s).
                 In bf16 these run DeepSpeed's own mixed precision (bf16 weights in the forward
                 and backward, fp32 master weights; the run's parallel.mixed_precision default),
                 not autocast over fp32 weights as the torch modes and the ideals do, so their
                 compute differs a little as well as their communication

The model is the GPT-2 architecture (learned positions, LayerNorm, GELU, biases, tied
embeddings), 6 layers, 6 heads, 384 wide, context 256; the global batch is 16 sequences (4,096
tokens) for every contender: micro-batches of 8 sequences, two per step in one process (gradient
accumulation) or one per rank in two; tensor parallelism runs both micro-batches on both ranks.
At 4,096 tokens per step the model does ~90 MFLOP per token × 4,096 = 0.37 TFLOP of compute per
step against 56 MB of fp32 gradients (13.9 M parameters) to all-reduce: compute-bound on a CPU.

The vocabulary is 8192 rows, the size `scratchlm speedrun` trains its tokenizer at for CPU runs
(what a user who trains on a CPU runs); the shards are written with a small tokenizer trained on
synthetic text, which changes nothing about the compute (the head is the whole vocabulary
whatever the ids are); the head is 21% of the FLOPs. GPT-2's 50304 (`--vocab 50304`) makes it
62% and each step ~2× longer, and the gradient to all-reduce grows in the same proportion as the
compute (both ∝ parameters, as the tied head does 6 FLOPs per parameter per token like every
other matrix), so it would change the step time far more than the communication share.

dtype: `--dtype` (default auto) is resolved once here, as the run resolves it (bf16 autocast on
CPUs whose bf16 matmuls measure faster than fp32, fp32 elsewhere), and passed to every run as
train.dtype, so that no contender measures its way to another precision on a loaded machine.

Timing
------
Each run trains `--warmup` + `--steps` steps with train.log_every=1; its tokens/s is the tokens of
the timed steps over the difference of the `train_s` its metrics.jsonl logs (cumulative seconds
in training steps only, on rank 0) at the end of the warmup and at the end of the run. Process
start-up, model building, the final evaluation and checkpoint are therefore not counted.
The contenders run alternately, round by round (`--rounds`), and each keeps its best round (the
one least disturbed by other load on a shared machine); `spread` is its best round over its
worst, minus 1. Ratios are against 1p×2t measured in the same run.

Other load
----------
The CPU may be shared. Before each run the benchmark waits (at most `--settle` seconds, default
15) until other processes keep under 0.15 cores busy; during each run it measures how many cores
they kept busy (`others`: the machine's busy time from /proc/stat, less what our runs used, from
the children's rusage, over the wall time). A figure is marked `!` (disturbed) when, in its best
round, other processes took 0.25 cores or more beyond the cores that contender left idle, and a
verdict resting on a disturbed figure is marked `?`. 1p×2t is by far the most fragile: an OpenMP
team waits for its slowest thread at every operation, so one busy core can slow it 3-5×, where
two single-thread processes slow down only by the share they lose. The load average at start is
printed, and called high above 0.5 per core.

Overhead share
--------------
There is no gloo time counter, so communication is measured as overhead against ideal compute.
The ideal step of one rank is the step of ONE process with ONE thread doing that rank's share of
the work:
- DDP, FSDP, ZeRO: the same model on half the global batch (`1p×1t half`). DDP replicates the
  optimizer step as this ideal does; FSDP and ZeRO shard it, so their ideal is slightly high
  (the AdamW step over 13.9 M parameters is ~1% of a step) and their share slightly low;
- TP: the full batch at one thread, divided by 2 (a perfect split), so TP's share also counts
  the work it replicates on both ranks: the embeddings, the LayerNorms, the head and its loss
  (the head alone is 21% of the FLOPs: done whole on each rank, it puts TP's best step at
  0.79/2 + 0.21 = 0.605 of the one-thread step, a share of 17% before any communication).
FSDP2 gathers bf16 parameters in a bf16 run (parallel.mixed_precision), so its ranks skip
autocast's per-micro-batch weight casts that the ideal does; measured against
mixed_precision=false the difference was within the noise (~3%).

    overhead share = 1 − ideal / actual step

which is communication, waiting for the other rank, replicated work and what running two busy
cores costs against one. With the pair measured, that last part is split out:

    chip sharing = (pair step − ideal) / actual,   communication & waiting = 1 − pair / actual

(for TP, the ideal is scaled by the same pair / half factor).

    python bench/distributed.py [--rounds 3] [--steps 3] [--warmup 1] [--modes ddp fsdp tp]
                                [--deepspeed] [--no-pair] [--settle 15] [--vocab 8192]
                                [--dtype auto] [--json out.json]

About 6 minutes on 2 quiet cores by default, up to 10 on a loaded machine (3 rounds of 7 runs:
1.5-3 s steps, 5-10 s of start-up per run); `--deepspeed` adds ~3 minutes, and the first start of
DeepSpeed on a machine compiles its op.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

# bench/train_throughput.py: python puts the script's folder on sys.path
from train_throughput import make_shards

from scratchlm.console import set_quiet
from scratchlm.model.gpt import GPT, GPTConfig
from scratchlm.runtime import cpu_model, resolve_dtype
from scratchlm.train.metrics import read_metrics

SHAPE = {"n_layer": 6, "n_head": 6, "n_embd": 384, "block_size": 256}
MICRO_BATCH = 8  # sequences per forward/backward, per process
GLOBAL_BATCH = 16  # sequences per optimizer step, all processes together
SEED = 1337
TARGETS = {"ddp": 0.9, "fsdp": 0.8}
DISTURBED = 0.25  # cores other processes kept busy during a round that make its figure suspect
MODES = {
    "ddp": ["parallel.dp=2"],
    "fsdp": ["parallel.fsdp=2"],
    "tp": ["parallel.tp=2"],
    "zero1": ["parallel.backend=deepspeed", "parallel.zero_stage=1"],
    "zero2": ["parallel.backend=deepspeed", "parallel.zero_stage=2"],
    "zero3": ["parallel.backend=deepspeed", "parallel.zero_stage=3"],
}


@dataclass
class Contender:
    """One way of running the same training: processes × threads, the batch one step holds."""

    name: str
    nproc: int
    threads: int
    batch: int  # sequences per optimizer step (all processes)
    sets: list[str] = field(default_factory=list)
    copies: int = 1  # independent processes started together (the pair)
    cores: int = 2  # cores this benchmark may use
    rounds: list[float] = field(default_factory=list)  # tokens/s of each round
    others: list[float] = field(default_factory=list)  # cores other processes used during each round

    @property
    def best(self) -> float:
        return max(self.rounds)

    @property
    def others_in_best(self) -> float:
        return self.others[self.rounds.index(self.best)]

    @property
    def disturbed(self) -> bool:
        """Whether other processes took more than the cores this contender left idle, by DISTURBED."""
        idle = max(0, self.cores - self.copies * self.nproc * self.threads)
        return self.others_in_best >= idle + DISTURBED

    @property
    def others_text(self) -> str:
        return f"{self.others_in_best:.2f}" + ("!" if self.disturbed else " ")

    @property
    def step_s(self) -> float:
        """Seconds per step in the best round."""
        return self.batch * SHAPE["block_size"] / self.best

    @property
    def spread(self) -> float:
        return self.best / min(self.rounds) - 1


def run_config(work: Path, shards: Path, vocab: int, dtype: str) -> Path:
    """The run's settings, shared by every contender (each adds its own with --set)."""
    path = work / "run.toml"
    path.write_text(
        f"""[model]
vocab_size = {vocab}
block_size = {SHAPE['block_size']}
n_layer = {SHAPE['n_layer']}
n_head = {SHAPE['n_head']}
n_embd = {SHAPE['n_embd']}

[train]
micro_batch_size = {MICRO_BATCH}
eval_every = 0
eval_tokens = {MICRO_BATCH * SHAPE['block_size']}
sample_tokens = 0
checkpoint_every = 0
log_every = 1
dtype = "{dtype}"
device = "cpu"
peak_flops = 1e12  # MFU is not used here; a value skips measuring the matmul peak at start-up
seed = {SEED}

[data]
shards = "{shards}"
"""
    )
    return path


class Runner:
    def __init__(self, config: Path, work: Path, warmup: int, steps: int, settle_s: float) -> None:
        self.config, self.work, self.warmup, self.steps, self.settle_s = config, work, warmup, steps, settle_s
        self.runs = 0
        self.waited_s = 0.0

    def command(self, contender: Contender, out_dir: Path, max_steps: int) -> list[str]:
        sets = [f"train.out_dir={out_dir}", f"train.batch_tokens={contender.batch * SHAPE['block_size']}", f"train.max_steps={max_steps}", *contender.sets]
        return [sys.executable, "-m", "scratchlm", "-q", "train", str(self.config), *[a for s in sets for a in ("--set", s)], *(["--nproc", str(contender.nproc)] if contender.nproc > 1 else [])]

    def round(self, contender: Contender) -> tuple[float, float]:
        """One round: fresh run(s); returns tokens/s over the timed steps (the slowest copy's)
        and the CPU other processes used meanwhile (`others_cores`)."""
        self.waited_s += settle(self.settle_s)
        before = others_clock()
        environment = {**os.environ, "OMP_NUM_THREADS": str(contender.threads)}
        # The pair runs a step more than it times, so neither copy finishes its timed steps alone.
        max_steps = self.warmup + self.steps + (1 if contender.copies > 1 else 0)
        figures = []
        with contextlib.ExitStack() as stack:
            started = []
            for _ in range(contender.copies):
                out_dir = self.work / f"run-{self.runs}-{contender.name.replace(' ', '-')}"
                self.runs += 1
                log = stack.enter_context(open(out_dir.with_suffix(".log"), "w"))
                process = stack.enter_context(subprocess.Popen(self.command(contender, out_dir, max_steps), env=environment, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
                stack.callback(stop, process)  # a copy still running when the other failed, with its workers
                started.append((process, out_dir))
            for process, out_dir in started:
                if process.wait():
                    tail = "\n".join(out_dir.with_suffix(".log").read_text().splitlines()[-25:])
                    raise SystemExit(f"{contender.name}: `scratchlm train` exited with status {process.returncode}; its output ends with:\n{tail}")
                figures.append(self.tokens_per_s(out_dir / "metrics.jsonl"))
        return min(figures), others_cores(before, others_clock())

    def tokens_per_s(self, path: Path) -> float:
        steps = {r["step"]: r for r in read_metrics(path) if "loss" in r}
        end, start = steps[self.warmup + self.steps], steps.get(self.warmup, {"tokens": 0, "train_s": 0.0})
        return (end["tokens"] - start["tokens"]) / (end["train_s"] - start["train_s"])


def stop(process: subprocess.Popen) -> None:
    """End a run still going (its own process group: torchrun's workers too)."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)


def settle(limit_s: float, quiet: float = 0.15, window_s: float = 0.5) -> float:
    """Wait until other processes keep under `quiet` cores busy over a `window_s` window, at most
    `limit_s` seconds (none of our runs is going, so all the machine's busy time is theirs);
    returns the seconds waited."""
    started = time.perf_counter()
    while time.perf_counter() - started < limit_s:
        before = others_clock()
        time.sleep(window_s)
        if others_cores(before, others_clock()) < quiet:
            break
    return time.perf_counter() - started


def others_clock() -> tuple[float, float, float]:
    """(wall s, CPU s the whole machine was busy, CPU s this process's finished children used)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:9]]  # user nice system idle iowait irq softirq steal
    busy = (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.perf_counter(), busy, children.ru_utime + children.ru_stime


def others_cores(before: tuple[float, float, float], after: tuple[float, float, float]) -> float:
    """Cores that other processes kept busy on average between two `others_clock` readings (the
    machine's busy CPU time less our runs', over the wall time; hypervisor steal counts as busy)."""
    wall, busy, ours = (a - b for a, b in zip(after, before))
    return max(0.0, (busy - ours) / wall)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="Rounds per contender; the best counts.")
    parser.add_argument("--steps", type=int, default=3, help="Timed training steps per round.")
    parser.add_argument("--warmup", type=int, default=1, help="Untimed steps before the timed ones.")
    parser.add_argument("--modes", nargs="+", choices=list(MODES), default=["ddp", "fsdp", "tp"], help="Two-process modes to measure.")
    parser.add_argument("--deepspeed", action="store_true", help="Also measure DeepSpeed ZeRO-1, 2 and 3.")
    parser.add_argument("--no-pair", dest="pair", action="store_false", help="Leave out the two independent 1p×1t processes (the chip-sharing split).")
    parser.add_argument("--vocab", type=int, default=8192, help="Embedding rows (8192: the speedrun tokenizer's size; 50304: GPT-2's, padded).")
    parser.add_argument("--dtype", choices=["auto", "bfloat16", "float32"], default="auto", help="train.dtype for every run (auto: resolved once, here, as the run would).")
    parser.add_argument("--settle", type=float, default=15.0, help="Before each run, wait up to this many seconds for other processes to leave the CPU (0: do not wait).")
    parser.add_argument("--json", help="Also write the figures to this file.")
    args = parser.parse_args()
    if min(args.rounds, args.steps) < 1 or args.warmup < 0:
        parser.error("--rounds and --steps must be at least 1 and --warmup at least 0.")
    cores = len(os.sched_getaffinity(0))
    if cores < 2:
        parser.error(f"this process may use {cores} core; the comparison needs 2.")
    modes = list(dict.fromkeys(args.modes + (["zero1", "zero2", "zero3"] if args.deepspeed else [])))
    set_quiet(True)
    began = time.perf_counter()
    load_start = os.getloadavg()
    dtype = str(resolve_dtype(args.dtype, torch.device("cpu"))).removeprefix("torch.")
    why = {"auto": "auto: bf16 matmuls measure faster than fp32 here" if dtype == "bfloat16" else "auto: no fast bf16 on this CPU"}.get(args.dtype, "--dtype")

    config = GPTConfig(vocab_size=args.vocab, **SHAPE)
    model = GPT(config)
    flops_per_token = model.flops_per_token(SHAPE["block_size"])
    head_share = 6 * args.vocab * SHAPE["n_embd"] / flops_per_token
    num_params = model.num_params()
    gradient_mb = num_params * 4 / 1e6
    del model

    half = GLOBAL_BATCH // 2
    contenders = [
        Contender("1p×2t", 1, 2, GLOBAL_BATCH, cores=cores),
        Contender("1p×1t", 1, 1, GLOBAL_BATCH, cores=cores),
        Contender("1p×1t half", 1, 1, half, cores=cores),
        *([Contender("pair", 1, 1, half, copies=2, cores=cores)] if args.pair else []),
        *[Contender(mode, 2, 1, GLOBAL_BATCH, MODES[mode], cores=cores) for mode in modes],
    ]
    byname = {c.name: c for c in contenders}

    high = load_start[0] > 0.5 * cores
    print(f"{cpu_model()}; torch {torch.__version__}; {cores} cores available; 2 threads in all per contender (1 process × 2 threads, or 2 × 1)")
    print(f"load average at start {load_start[0]:.2f} {load_start[1]:.2f} {load_start[2]:.2f}" + (f": HIGH for {cores} cores, other processes are using the CPU; figures are the best of {args.rounds} rounds but may still be disturbed" if high else ""))
    print(
        f"model: GPT-2 architecture, {SHAPE['n_layer']} layers, {SHAPE['n_head']} heads, {SHAPE['n_embd']} wide, context {SHAPE['block_size']}, vocab {args.vocab}: "
        f"{num_params / 1e6:.2f} M parameters ({gradient_mb:.0f} MB of fp32 gradients), {flops_per_token / 1e6:.1f} MFLOP/token, head {head_share:.0%} of it"
    )
    print(f"batch: {GLOBAL_BATCH} × {SHAPE['block_size']} = {GLOBAL_BATCH * SHAPE['block_size']:,} tokens per step for all (micro-batch {MICRO_BATCH} per process); dtype {dtype} ({why})")
    print(f"best of {args.rounds} rounds of {args.steps} timed steps after {args.warmup} warmup step(s), contenders alternating; each round a fresh `scratchlm train`")

    with tempfile.TemporaryDirectory(prefix="scratchlm-bench-dist-") as directory:
        work = Path(directory)
        shards = make_shards(work / "data", tokens=200_000)
        runner = Runner(run_config(work, shards, args.vocab, dtype), work, args.warmup, args.steps, args.settle)
        for index in range(args.rounds):
            for contender in contenders:
                tokens_per_s, others = runner.round(contender)
                contender.rounds.append(tokens_per_s)
                contender.others.append(others)
            print(f"  round {index + 1}/{args.rounds} done at {time.perf_counter() - began:.0f} s: " + ", ".join(f"{c.name} {c.rounds[-1]:,.0f}" for c in contenders), flush=True)
    load_end = os.getloadavg()

    reference, single, share = byname["1p×2t"], byname["1p×1t"], byname["1p×1t half"]
    pair = byname.get("pair")
    # How much longer a rank's compute takes with both cores busy; beyond 1.25 the pair was
    # disturbed by other load in every round rather than by its own neighbour.
    sharing = pair.step_s / share.step_s if pair else None
    split = pair is not None and sharing <= 1.25 and not pair.disturbed
    print("\nreference and ideals (s/step: per optimizer step of that contender's batch; others: cores other processes kept busy during its best round)")
    print(f"  {'contender':<12} {'procs×thr':>9} {'batch':>6} {'tokens/s':>9} {'s/step':>7} {'spread':>7} {'others':>7}")
    for c in [reference, single, share, *([pair] if pair else [])]:
        layout = f"{c.copies}×{c.threads} apart" if c.copies > 1 else f"{c.nproc}×{c.threads}"
        print(f"  {c.name:<12} {layout:>9} {c.batch:>6} {c.best:>9,.0f} {c.step_s:>7.2f} {c.spread:>7.0%} {c.others_text:>7}")
    print(f"  the second thread buys {reference.best / single.best:.2f}× in the 1p×2t reference (2.00× would be perfect)" + (" (disturbed: see others)" if reference.disturbed or single.disturbed else ""))
    if pair:
        print(f"  with both cores busy a rank's half-batch step takes {sharing:.2f}× as long as alone (pair vs 1p×1t half)"
              + (": what sharing the chip costs" if split else f"; the pair was disturbed by other load (others {pair.others_in_best:.2f} cores in its best round), so the chip/communication split is not shown"))

    print("\nmodes: 2 processes × 1 thread, against 1p×2t")
    head = f"  {'mode':<6} {'tokens/s':>9} {'s/step':>7} {'spread':>7} {'others':>7} {'vs 1p×2t':>9} {'target':>10} {'ideal s/step':>12} {'overhead':>9}"
    if split:
        head += f" {'chip':>6} {'comm+wait':>10}"
    print(head)
    rows = []
    for mode in modes:
        c = byname[mode]
        ideal = single.step_s / 2 if mode == "tp" else share.step_s
        ratio = c.best / reference.best
        target = TARGETS.get(mode)
        suspect = c.disturbed or reference.disturbed
        verdict = f"≥{target:.1f} {'pass' if ratio >= target else 'FAIL'}{'?' if suspect else ''}" if target else "—"
        overhead = 1 - ideal / c.step_s
        row = {"mode": mode, "tokens_per_s": c.best, "step_s": c.step_s, "spread": c.spread, "rounds_tokens_per_s": c.rounds, "others_cores_per_round": c.others, "ratio_vs_1p2t": ratio,
               "target": target, "passes": (ratio >= target) if target else None, "disturbed": suspect, "ideal_step_s": ideal, "overhead_share": overhead}
        line = f"  {mode:<6} {c.best:>9,.0f} {c.step_s:>7.2f} {c.spread:>7.0%} {c.others_text:>7} {ratio:>8.2f}× {verdict:>10} {ideal:>12.2f} {overhead:>9.1%}"
        if split:
            shared_ideal = ideal * sharing
            row |= {"chip_sharing_share": (shared_ideal - ideal) / c.step_s, "communication_waiting_share": 1 - shared_ideal / c.step_s}
            line += f" {row['chip_sharing_share']:>6.1%} {row['communication_waiting_share']:>10.1%}"
        rows.append(row)
        print(line)
    print("  overhead = 1 − ideal/actual step: communication, waiting for the other rank, replicated work (TP: embeddings, norms, head)")
    print("  and what two busy cores cost against one; ideal = one process, one thread, that rank's share (DDP/FSDP/ZeRO: half the batch; TP: the full batch / 2)"
          + ("; chip = the part the pair explains, comm+wait = the rest" if split else ""))
    noise = max(c.spread for c in contenders)
    print(f"  round-to-round noise here reaches {noise:.0%} (spread): shares within a few % of zero are not resolved, and a negative one is noise")
    if any(c.disturbed for c in contenders):
        print(f"  ! other processes took ≥ {DISTURBED} cores more than that contender left idle during its best round: its figure is disturbed, and a verdict")
        print("    that depends on it is marked ?; 1p×2t suffers most (an OpenMP team waits for its slowest thread at every operation). Rerun on a quiet machine.")
    elapsed = time.perf_counter() - began
    print(f"\n{elapsed:.0f} s in all ({runner.waited_s:.0f} s of it waiting for other load to pass); load average at the end {load_end[0]:.2f} (this benchmark's own processes included)")

    if args.json:
        ideals = {
            c.name: {"tokens_per_s": c.best, "step_s": c.step_s, "spread": c.spread, "rounds_tokens_per_s": c.rounds, "others_cores_per_round": c.others, "processes": c.copies * c.nproc, "threads_per_process": c.threads, "batch_sequences": c.batch}
            for c in contenders
            if c.name not in modes
        }
        with open(args.json, "w") as f:
            json.dump({
                "cpu": cpu_model(), "torch": torch.__version__, "cores": cores, "load_average_start": load_start, "load_average_end": load_end, "load_high_at_start": high,
                "dtype": dtype, "dtype_setting": args.dtype, "model": {"vocab_size": args.vocab, **SHAPE, "num_params": num_params, "flops_per_token": flops_per_token, "head_flops_share": head_share},
                "global_batch_sequences": GLOBAL_BATCH, "micro_batch_per_process": MICRO_BATCH, "rounds": args.rounds, "steps": args.steps, "warmup": args.warmup,
                "second_thread_speedup": reference.best / single.best, "chip_sharing_factor": sharing, "waited_s": runner.waited_s, "reference_and_ideals": ideals, "modes": rows, "elapsed_s": elapsed,
            }, f, indent=2)

if __name__ == "__main__":
    main()
