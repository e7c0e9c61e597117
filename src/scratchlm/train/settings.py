"""The settings of a training run: model, data, optimizer and loop, each a documented field."""

from __future__ import annotations

from dataclasses import dataclass, field

from scratchlm.errors import UserError
from scratchlm.model.gpt import GPTConfig
from scratchlm.train.optim import OptimConfig


@dataclass
class DataConfig:
    """Where the training tokens come from."""

    shards: str = ""
    """Directory of token shards (train_*.bin, val_*.bin and manifest.json)."""
    tokenizer: str = ""
    """Tokenizer the shards were made with: a scratchlm tokenizer directory, a GPT-2 vocabulary directory (encoder.json + vocab.bpe) or a tokenizer.json; empty = `tokenizer/` beside the shards directory."""


@dataclass
class TrainConfig:
    """How long and how to train, evaluate, log and checkpoint."""

    out_dir: str = "runs/train"
    """Run directory: metrics.jsonl, checkpoints/, samples.md. A directory that already holds a run is refused unless the command is given --resume (continue it) or --overwrite (replace it)."""
    init_from: str = ""
    """Start a new run from the weights of this checkpoint (or run directory: its newest checkpoint), with a fresh optimizer and schedule: continued pretraining. Its model settings and tokenizer are used. Not the same as --resume, which continues a run exactly."""
    batch_tokens: int = 524_288
    """Tokens per optimizer step (all micro-batches and processes); must be a multiple of micro_batch_size × block_size."""
    micro_batch_size: int = 8
    """Sequences per forward/backward pass; gradients accumulate until batch_tokens."""
    max_steps: int = 1000
    """Optimizer steps (the cosine schedule ends here unless time_budget_s ends it sooner). On --resume a new value applies: the schedule is stretched or shortened to end there."""
    time_budget_s: float = 0.0
    """Stop after this many seconds (training and evaluations); the schedule is fitted to the steps that fit (0 = no limit)."""
    eval_every: int = 100
    """Evaluate (and sample) every this many steps, and at the end (0 = only at the end)."""
    eval_tokens: int = 262_144
    """Validation tokens per evaluation, a fixed prefix of the validation split, each window scored once (0 = all of it)."""
    sample_tokens: int = 64
    """Tokens to generate at each evaluation (0 = no samples)."""
    sample_prompt: str = ""
    """Prompt for the samples; empty starts from <|endoftext|>."""
    checkpoint_every: int = 0
    """Save a checkpoint every this many steps (0 = only at the end)."""
    keep_checkpoints: int = 2
    """How many of the newest checkpoints to keep (at least 1)."""
    log_every: int = 10
    """Write a metrics line (and, when the output is not a terminal, a progress line) every this many steps."""
    dtype: str = "auto"
    """Compute precision: auto (bf16 autocast on CUDA with bf16 support, and on CPUs where bf16 matmuls measure faster than fp32; else fp32), bfloat16, float16 (CUDA only, with a loss scaler) or float32 (TF32 matmuls on CUDA)."""
    compile: bool = False
    """torch.compile each transformer block (worth it on GPUs; on CPU it costs ~30 s of compilation and helps little)."""
    activation_checkpointing: bool = False
    """Recompute each block in the backward pass instead of storing its activations (less memory, ~30% more compute)."""
    seed: int = 1337
    """Seed for initialization, data order and dropout."""
    device: str = "auto"
    """cuda, cuda:N, cpu or auto (cuda when available)."""
    peak_flops: float = 0.0
    """Peak FLOP/s for MFU; 0 = the data-sheet peak on known GPUs (bf16, or TF32 for fp32), a measured matmul peak on CPU."""

    def __post_init__(self) -> None:
        for name in ("batch_tokens", "micro_batch_size", "max_steps", "log_every", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise UserError(f"train.{name} is {getattr(self, name)}; it must be at least 1.")
        for name in ("eval_every", "eval_tokens", "sample_tokens", "checkpoint_every", "time_budget_s", "peak_flops", "seed"):
            if getattr(self, name) < 0:
                raise UserError(f"train.{name} is {getattr(self, name)}; it must be 0 or more.")


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
