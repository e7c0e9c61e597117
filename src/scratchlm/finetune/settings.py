"""Fine-tuning settings: every job starts from a checkpoint (`train.init_from`) and runs on the
one Trainer with pretraining's loop settings (`train`), optimizer (`optim`) and LoRA (`lora`);
what differs is its `data` section."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from scratchlm.errors import UserError
from scratchlm.model.lora import LoraConfig
from scratchlm.train.optim import OptimConfig
from scratchlm.train.settings import TrainConfig

PROMPT_FORMATS = ("alpaca", "chatml")


def finetune_train_defaults(**changes: object) -> TrainConfig:
    """Pretraining's loop settings with fine-tuning's scale: a few hundred steps, no samples."""
    return dataclasses.replace(TrainConfig(out_dir="runs/finetune", max_steps=200, eval_every=50, sample_tokens=0, micro_batch_size=4), **changes)  # type: ignore[arg-type]


def finetune_optim_defaults() -> OptimConfig:
    """A small learning rate and a short warmup: the weights are already trained."""
    return OptimConfig(lr=5e-5, warmup_steps=10, weight_decay=0.1)


@dataclass
class InstructDataConfig:
    """Instruction data and how it becomes training sequences."""

    train: str = ""
    """Training records: a .json list or .jsonl, each Alpaca-style {instruction, input, output} or {"messages": [{role, content}, ...]}."""
    val: str = ""
    """Held-out records in the same forms; empty = hold out `holdout` of the training records (seeded)."""
    holdout: float = 0.1
    """Share of the training records held out for evaluation when `val` is empty."""
    format: str = "alpaca"
    """Prompt format: alpaca (the book's "### Instruction / ### Response" prompt, <|endoftext|> ends a response) or chatml (<|im_start|>role ... <|im_end|>; the two role tokens are added to the tokenizer)."""
    max_length: int = 0
    """Tokens per sequence at most (prompt + response); 0 = the model's context. Longer records are cut as the data module states, and counted."""
    batch_size: int = 8
    """Sequences per optimizer step (gradient accumulation over train.micro_batch_size)."""
    eval_responses: int = 20
    """Held-out records to generate answers for after training (greedy), written to responses.jsonl with exact match and ROUGE-L; 0 = none."""
    max_new_tokens: int = 256
    """Tokens per generated answer at most."""

    def __post_init__(self) -> None:
        if self.format not in PROMPT_FORMATS:
            raise UserError(f"data.format is {self.format!r}; choose one of: {', '.join(PROMPT_FORMATS)}.")
        if not 0 <= self.holdout < 1:
            raise UserError(f"data.holdout is {self.holdout}; it must be within [0, 1).")
        for name in ("max_length", "eval_responses"):
            if getattr(self, name) < 0:
                raise UserError(f"data.{name} is {getattr(self, name)}; it must be 0 or more.")
        for name in ("batch_size", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise UserError(f"data.{name} is {getattr(self, name)}; it must be at least 1.")


@dataclass
class InstructConfig:
    """Instruction tuning: a checkpoint taught to answer, with the loss on response tokens only."""

    data: InstructDataConfig = field(default_factory=InstructDataConfig)
    """The instruction records and their prompt format."""
    train: TrainConfig = field(default_factory=finetune_train_defaults)
    """Loop settings; train.init_from (the checkpoint to start from) is required."""
    optim: OptimConfig = field(default_factory=finetune_optim_defaults)
    """Optimizer and schedule."""
    lora: LoraConfig = field(default_factory=LoraConfig)
    """Low-rank adapters (lora.rank > 0) instead of training every weight."""
