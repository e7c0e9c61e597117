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
    """Tokens per optimizer step (all micro-batches and processes); must be a multiple of micro_batch_size × block_size × data-parallel processes (dp × fsdp)."""
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
    fp8: bool = False
    """Float8 matmuls (torchao's tensorwise-scaled Float8Linear) in the transformer blocks' linear layers, on GPUs with FP8 tensor cores (compute capability 8.9+: H100, H200, L40S, RTX 4090); refused elsewhere. Use it with train.compile, which fuses the scaling."""
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


def check_batch_tokens(batch_tokens: int, tokens_per_micro_batch: int) -> int:
    """Micro-batches per step (gradient accumulation), or one sentence when they do not fit."""
    if batch_tokens % tokens_per_micro_batch:
        raise UserError(
            f"train.batch_tokens {batch_tokens} is not a multiple of micro_batch_size × block_size × data-parallel processes = {tokens_per_micro_batch}; "
            f"use {max(1, batch_tokens // tokens_per_micro_batch) * tokens_per_micro_batch}."
        )
    return batch_tokens // tokens_per_micro_batch


BACKENDS = ("torch", "deepspeed")


@dataclass
class ParallelConfig:
    """How the model and the batch are spread over processes (`torchrun` or `scratchlm train
    --nproc N` starts them). dp × fsdp × tp must equal the number of processes."""

    dp: int = 0
    """Data-parallel replicas: each holds the whole model (DDP: gradients all-reduced), or, with fsdp > 1, one copy of the sharded model (HSDP); 0 = the processes left over by fsdp × tp."""
    fsdp: int = 1
    """Processes that shard parameters, gradients and optimizer states among themselves (FSDP2, ZeRO-3 style); 1 = no sharding."""
    tp: int = 1
    """Tensor-parallel processes (Megatron-style: attention heads and MLP channels split column-wise, output projections row-wise); keep it within one machine."""
    backend: str = "torch"
    """torch (DDP / FSDP2 / tensor parallel, PyTorch's own) or deepspeed (ZeRO stage `zero_stage` over all processes; needs the `deepspeed` extra)."""
    zero_stage: int = 2
    """DeepSpeed ZeRO stage: 1 shards optimizer states, 2 also gradients, 3 also parameters (backend = "deepspeed" only)."""
    reshard_after_forward: bool = True
    """FSDP2: free the gathered parameters after each block's forward and gather them again for its backward (ZeRO-3; less memory, more communication); false keeps them until the backward (ZeRO-2-like)."""
    mixed_precision: bool = True
    """FSDP2 with a bf16/fp16 train.dtype: gather parameters in that dtype (half the traffic) and reduce gradients in fp32."""
    cpu_offload: bool = False
    """FSDP2: keep parameter shards, gradients and optimizer states in host memory and run the optimizer step there (fits larger models on fewer GPUs, slower)."""
    deepspeed_config: str = ""
    """A DeepSpeed JSON config file merged over the one scratchlm derives from these settings (for DeepSpeed options it does not set: offloading, bucket sizes, ZeRO-3 persistence thresholds)."""
    timeout_s: float = 600.0
    """How long a collective may wait for the other processes before the job stops with an error (a dead or stuck rank)."""

    def __post_init__(self) -> None:
        if self.dp < 0:
            raise UserError(f"parallel.dp is {self.dp}; it must be 0 (automatic) or more.")
        for name in ("fsdp", "tp"):
            if getattr(self, name) < 1:
                raise UserError(f"parallel.{name} is {getattr(self, name)}; it must be at least 1.")
        if self.backend not in BACKENDS:
            raise UserError(f"parallel.backend is {self.backend!r}; choose one of: {', '.join(BACKENDS)}.")
        if self.zero_stage not in (1, 2, 3):
            raise UserError(f"parallel.zero_stage is {self.zero_stage}; it must be 1, 2 or 3.")
        if not self.timeout_s > 0:
            raise UserError(f"parallel.timeout_s is {self.timeout_s}; it must be positive.")

    def layout(self, world_size: int) -> tuple[int, int, int]:
        """(dp, fsdp, tp) for `world_size` processes, dp resolved; one sentence when they do not fit."""
        if self.backend == "deepspeed":
            if self.fsdp != 1 or self.tp != 1 or self.dp not in (0, world_size):
                raise UserError(f"parallel.backend = \"deepspeed\" shards with ZeRO over all {world_size} process(es); leave parallel.dp, fsdp and tp at their defaults (set parallel.zero_stage instead).")
            return world_size, 1, 1
        inner = self.fsdp * self.tp
        if self.dp == 0:
            if world_size % inner:
                raise UserError(f"parallel.fsdp × parallel.tp = {inner} does not divide the {world_size} process(es); launch a multiple of {inner} processes or change the sizes.")
            dp = world_size // inner
        elif self.dp * inner != world_size:
            raise UserError(
                f"parallel.dp × fsdp × tp = {self.dp} × {self.fsdp} × {self.tp} = {self.dp * inner}, but {world_size} process(es) were launched; "
                f"launch {self.dp * inner}, or set parallel.dp = 0 to use what is left over."
            )
        else:
            dp = self.dp
        if self.tp > 1 and dp > 1 and self.fsdp == 1:
            raise UserError("With parallel.tp > 1 the data-parallel copies are sharded with FSDP: set parallel.fsdp (and leave parallel.dp at 0 or 1) instead of parallel.dp.")
        return dp, self.fsdp, self.tp


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
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    """Processes: data, fully sharded and tensor parallelism, or DeepSpeed."""
