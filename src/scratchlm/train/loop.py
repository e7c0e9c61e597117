"""One training loop for pretraining (and, later, fine-tuning).

Per step: set the learning rate, accumulate gradients over micro-batches until the step holds
`batch_tokens` tokens, clip, update. Every `eval_every` steps: validation loss, perplexity and
bits per byte, and a sample. Checkpoints carry the optimizer, loader position and RNG states, so
`resume` continues exactly where a killed run stopped (bitwise, on CPU in fp32).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from scratchlm.config import to_dict
from scratchlm.console import info, progress_bar
from scratchlm.errors import UserError
from scratchlm.eval.perplexity import evaluate, token_byte_lengths
from scratchlm.generate.engine import generate
from scratchlm.generate.sampling import SamplingConfig
from scratchlm.model.gpt import GPT, GPTConfig
from scratchlm.train.checkpoint import (
    latest_checkpoint,
    load_train_state,
    load_weights,
    read_meta,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from scratchlm.train.metrics import MetricsLog, peak_flops
from scratchlm.train.optim import OptimConfig, lr_at, make_optimizer


@dataclass
class DataConfig:
    """Where the training tokens come from."""

    shards: str = ""
    """Directory of token shards (train_*.bin, val_*.bin and manifest.json)."""
    tokenizer: str = ""
    """Tokenizer directory the shards were made with; empty = `tokenizer/` beside the shards directory."""


@dataclass
class TrainConfig:
    """How long and how to train, evaluate, log and checkpoint."""

    out_dir: str = "runs/train"
    """Run directory: metrics.jsonl, checkpoints/, samples."""
    batch_tokens: int = 524_288
    """Tokens per optimizer step (all micro-batches and processes); must be a multiple of micro_batch_size × block_size."""
    micro_batch_size: int = 8
    """Sequences per forward/backward pass; gradients accumulate until batch_tokens."""
    max_steps: int = 1000
    """Optimizer steps (the cosine schedule ends here unless time_budget_s ends it sooner)."""
    time_budget_s: float = 0.0
    """Stop after this many seconds of training; the schedule is fitted to the steps that fit (0 = no limit)."""
    eval_every: int = 100
    """Evaluate (and sample) every this many steps, and at the end (0 = only at the end)."""
    eval_tokens: int = 262_144
    """Validation tokens per evaluation, a fixed prefix of the validation split (0 = all of it)."""
    sample_tokens: int = 64
    """Tokens to generate at each evaluation (0 = no samples)."""
    sample_prompt: str = ""
    """Prompt for the samples; empty starts from <|endoftext|>."""
    checkpoint_every: int = 0
    """Save a checkpoint every this many steps (0 = only at the end)."""
    keep_checkpoints: int = 2
    """How many of the newest checkpoints to keep."""
    log_every: int = 10
    """Write a metrics line every this many steps."""
    dtype: str = "auto"
    """Compute precision: auto (bf16 autocast on CUDA with bf16 support, and on CPUs where bf16 matmuls measure faster than fp32; else fp32), bfloat16, float16 (CUDA only) or float32."""
    compile: bool = False
    """torch.compile the model (worth it on GPUs; on CPU it costs ~30 s and helps little)."""
    activation_checkpointing: bool = False
    """Recompute each block in the backward pass instead of storing its activations (less memory, ~30% more compute)."""
    seed: int = 1337
    """Seed for initialization, data order and dropout."""
    device: str = "auto"
    """cuda, cpu or auto (cuda when available)."""
    peak_flops: float = 0.0
    """Peak FLOP/s for MFU; 0 = the data-sheet bf16 peak on known GPUs, a measured matmul peak on CPU."""


@dataclass
class RunConfig:
    """A pretraining run: model, data, optimizer and loop settings."""

    model: GPTConfig = field(default_factory=GPTConfig)
    """The architecture."""
    data: DataConfig = field(default_factory=DataConfig)
    """Shards and tokenizer."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """Optimizer and schedule."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Loop settings."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("train.device is cuda but no CUDA GPU is visible; use device = \"cpu\" or \"auto\".")
    return torch.device(name)


@functools.cache
def cpu_bf16_is_faster() -> bool:
    """Whether bf16 matmuls beat fp32 on this CPU, timed rather than guessed.

    With native bf16 (AVX-512 BF16, AMX) bf16 autocast trains ~1.8× faster than fp32; on an
    AVX2-only CPU the same matmul falls back to a path ~100× slower. 10-50 ms to find out.
    """
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(128, 256, generator=generator)
    w = torch.randn(256, 256, generator=generator)

    def seconds(dtype: torch.dtype) -> float:
        a, b = x.to(dtype), w.to(dtype)
        F.linear(a, b)
        started = time.perf_counter()
        for _ in range(3):
            F.linear(a, b)
        return time.perf_counter() - started

    return seconds(torch.bfloat16) < seconds(torch.float32)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
        return torch.bfloat16 if cpu_bf16_is_faster() else torch.float32
    table = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
    if name not in table:
        raise UserError(f"Unknown train.dtype {name!r}; choose auto, bfloat16, float16 or float32.")
    if table[name] == torch.float16 and device.type != "cuda":
        raise UserError("float16 needs a CUDA GPU (it needs a loss scaler there); use bfloat16 or float32 on CPU.")
    return table[name]


def _autocast(device: torch.device, dtype: torch.dtype):
    if dtype == torch.float32:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def pretrain(config: RunConfig, resume: bool = False) -> dict[str, Any]:
    """Train a GPT on token shards; returns the final evaluation and run figures."""
    from scratchlm.data.loader import TokenLoader
    from scratchlm.data.shards import check_tokenizer, read_manifest
    from scratchlm.tokenizer.tokenizer import Tokenizer

    tc = config.train
    out_dir = Path(tc.out_dir)
    if not config.data.shards:
        raise UserError("No training data: set data.shards to a shards directory (made by `scratchlm data prepare` or the speedrun).")
    shards = Path(config.data.shards)
    manifest = read_manifest(shards)
    tokenizer = Tokenizer.load(Path(config.data.tokenizer) if config.data.tokenizer else shards.parent / "tokenizer")
    check_tokenizer(manifest, tokenizer)

    model_config = config.model
    if model_config.vocab_size == 0:
        model_config = dataclasses.replace(model_config, vocab_size=64 * math.ceil(tokenizer.vocab_size / 64))
    if model_config.vocab_size < tokenizer.vocab_size:
        raise UserError(f"model.vocab_size {model_config.vocab_size} is smaller than the tokenizer's {tokenizer.vocab_size}; raise it or set it to 0.")
    config = dataclasses.replace(config, model=model_config)

    tokens_per_micro = tc.micro_batch_size * model_config.block_size
    if tc.batch_tokens % tokens_per_micro:
        raise UserError(f"train.batch_tokens {tc.batch_tokens} is not a multiple of micro_batch_size × block_size = {tokens_per_micro}; use {max(1, tc.batch_tokens // tokens_per_micro) * tokens_per_micro}.")
    grad_accum = tc.batch_tokens // tokens_per_micro

    device = resolve_device(tc.device)
    dtype = resolve_dtype(tc.dtype, device)
    torch.manual_seed(tc.seed)
    model = GPT(model_config).to(device)
    model.activation_checkpointing = tc.activation_checkpointing
    optimizer = make_optimizer(model, config.optim, device.type)
    train_loader = TokenLoader(shards, "train", tc.micro_batch_size, model_config.block_size, mode="random", seed=tc.seed, device=device)

    step, tokens_seen, horizon, elapsed_before = 0, 0, tc.max_steps, 0.0
    metrics_path = out_dir / "metrics.jsonl"
    if resume:
        checkpoint = latest_checkpoint(out_dir)
        if checkpoint is None:
            raise UserError(f"Nothing to resume in {out_dir} (no checkpoints/); drop --resume to start a new run.")
        meta = read_meta(checkpoint)
        load_weights(model, checkpoint)
        state = load_train_state(checkpoint)
        optimizer.load_state_dict(state["optimizer"])
        train_loader.load_state_dict(state["loader"])
        set_rng_state(state["rng"])
        step, tokens_seen, horizon, elapsed_before = meta["step"], meta["tokens_seen"], state["horizon"], state["elapsed_s"]
        info(f"resuming from {checkpoint} (step {step})")
    metrics = MetricsLog(metrics_path, resume_step=step if resume else None)

    run_model = torch.compile(model) if tc.compile else model
    autocast = _autocast(device, dtype)
    flops_per_token = model.flops_per_token(model_config.block_size)
    peak = tc.peak_flops or peak_flops(device, dtype)
    byte_lengths = token_byte_lengths(tokenizer, model_config.vocab_size, device)
    prompt_ids = tokenizer.encode_ordinary(tc.sample_prompt) if tc.sample_prompt else [tokenizer.eot_id]
    info(f"model: {model.num_params() / 1e6:.2f} M parameters, {flops_per_token / 1e6:.1f} MFLOP/token; {grad_accum} × {tc.micro_batch_size} × {model_config.block_size} tokens per step; {dtype} on {device}")

    def run_eval() -> dict[str, float]:
        loader = TokenLoader(shards, "val", tc.micro_batch_size, model_config.block_size, mode="sequential", device=device)
        budget = loader.batches_per_epoch if tc.eval_tokens == 0 else max(1, min(loader.batches_per_epoch, tc.eval_tokens // tokens_per_micro))
        return evaluate(run_model, (loader.next_batch() for _ in range(budget)), byte_lengths, autocast)

    def sample(at_step: int) -> str | None:
        if tc.sample_tokens <= 0:
            return None
        with autocast:
            new = generate(model, prompt_ids, tc.sample_tokens, SamplingConfig(temperature=0.8, top_k=200), seed=tc.seed, stop_ids=[tokenizer.eot_id], vocab_size=tokenizer.vocab_size)[0]
        text = tokenizer.decode(new)
        with (out_dir / "samples.md").open("a") as f:
            f.write(f"## step {at_step}\n\n```\n{tokenizer.decode(prompt_ids) if tc.sample_prompt else ''}{text}\n```\n\n")
        return text

    def checkpoint_now(at_step: int, record: dict[str, Any]) -> None:
        state = {"optimizer": optimizer.state_dict(), "loader": train_loader.state_dict(), "rng": rng_state(), "horizon": horizon, "elapsed_s": elapsed_before + (time.perf_counter() - started)}
        save_checkpoint(out_dir, at_step, model, tokenizer, {"tokens_seen": tokens_seen, "metrics": record, "run_config": to_dict(config)}, state, keep=tc.keep_checkpoints)

    def fit_horizon() -> None:
        """Fit the schedule's length to the time budget: with p seconds per step (steps after the
        first, which warms up), e per evaluation and E steps between evaluations, the H - s
        remaining steps cost (H - s)·p + ((H - s)/E + 1)·e, the final evaluation included.
        Refitted after each evaluation, when e is known."""
        nonlocal horizon
        measured = step_times[1:] if len(step_times) > 1 else step_times
        per_step = sum(measured[-20:]) / len(measured[-20:])
        remaining = tc.time_budget_s - (elapsed_before + time.perf_counter() - started)
        per_eval_step = eval_seconds / tc.eval_every if tc.eval_every else 0.0
        fits = step + int((remaining - eval_seconds) / (per_step + per_eval_step))
        horizon = max(step + 1, min(tc.max_steps, fits))
        bar.update(total=horizon)

    last_eval: dict[str, float] = {}
    eval_seconds = 0.0
    started = time.perf_counter()
    window_started, window_tokens = time.perf_counter(), 0
    step_times: list[float] = []
    record: dict[str, Any] = {}
    model.train()
    with progress_bar("training", total=horizon) as bar:
        bar(step)
        while step < horizon:
            if tc.time_budget_s and elapsed_before + time.perf_counter() - started > tc.time_budget_s - eval_seconds:
                info(f"time budget of {tc.time_budget_s:.0f} s reached at step {step}")
                break
            if tc.eval_every and step % tc.eval_every == 0 and step > 0:
                eval_started = time.perf_counter()
                last_eval = run_eval()
                metrics.log({"step": step, "tokens": tokens_seen, **{f"val_{k}": v for k, v in last_eval.items()}, "sample": sample(step), "elapsed_s": elapsed_before + time.perf_counter() - started})
                eval_seconds = time.perf_counter() - eval_started
                if tc.time_budget_s:
                    fit_horizon()

            step_started = time.perf_counter()
            lr = lr_at(step, horizon, config.optim)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss_sum = torch.zeros((), device=device)
            for _ in range(grad_accum):
                x, y = train_loader.next_batch()
                with autocast:
                    _, loss = run_model(x, y)
                (loss / grad_accum).backward()
                loss_sum += loss.detach()
            loss_value = float(loss_sum) / grad_accum
            if not math.isfinite(loss_value):
                last = latest_checkpoint(out_dir)
                raise UserError(f"The loss became {loss_value} at step {step}; lower optim.lr or use train.dtype = \"float32\". " + (f"The last good checkpoint is {last} (continue with --resume)." if last else "No checkpoint was written yet."))
            grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), config.optim.grad_clip if config.optim.grad_clip > 0 else float("inf")))
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            tokens_seen += tc.batch_tokens
            window_tokens += tc.batch_tokens
            step_times.append(time.perf_counter() - step_started)

            if tc.time_budget_s and len(step_times) == 6:
                fit_horizon()
                info(f"time budget {tc.time_budget_s:.0f} s: about {horizon} steps ({sum(step_times[1:]) / 5:.2f} s/step)")

            if step % tc.log_every == 0 or step == horizon:
                now = time.perf_counter()
                tokens_per_s = window_tokens / (now - window_started)
                window_started, window_tokens = now, 0
                mfu = tokens_per_s * flops_per_token / peak if peak else 0.0
                record = {"step": step, "tokens": tokens_seen, "loss": loss_value, "lr": lr, "grad_norm": grad_norm, "tokens_per_s": tokens_per_s, "mfu": mfu, "elapsed_s": elapsed_before + now - started}
                metrics.log(record)
                bar.update(description=f"step {step} loss {loss_value:.3f} lr {lr:.1e} {tokens_per_s:,.0f} tok/s MFU {mfu:.0%}")
            bar(1)
            if tc.checkpoint_every and step % tc.checkpoint_every == 0 and step < horizon:
                checkpoint_now(step, record)

    last_eval = run_eval()
    final = {"step": step, "tokens": tokens_seen, **{f"val_{k}": v for k, v in last_eval.items()}, "sample": sample(step), "elapsed_s": elapsed_before + time.perf_counter() - started}
    metrics.log(final)
    checkpoint_now(step, final)
    info(f"step {step}: val loss {last_eval['loss']:.4f}, perplexity {last_eval['perplexity']:.2f}, {last_eval['bpb']:.4f} bits per byte")
    return {**final, "num_params": model.num_params(), "flops_per_token": flops_per_token, "peak_flops": peak, "wall_s": elapsed_before + time.perf_counter() - started}
