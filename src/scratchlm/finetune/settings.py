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


POOLINGS = ("last", "mean")


@dataclass
class ClassifyDataConfig:
    """Labelled texts and how the classifier reads them."""

    train: str = ""
    """Training rows: .csv, .tsv, .jsonl/.json or .parquet (optionally .gz/.zst), with a text and a label column."""
    val: str = ""
    """Validation rows in the same form; empty = cut from `train` by `split` (seeded, stratified by label)."""
    test: str = ""
    """Test rows in the same form; empty = cut from `train` by `split` when it has three parts."""
    split: list[float] = field(default_factory=lambda: [0.8, 0.1, 0.1])
    """Shares of `train` for train, validation (and test) when `val` is empty; two or three numbers adding up to 1."""
    text_column: str = "text"
    """The column (or JSON field) holding the text."""
    label_column: str = "label"
    """The column (or JSON field) holding the label."""
    labels: list[str] = field(default_factory=list)
    """The label names in class order; empty = the training split's labels, sorted."""
    max_length: int = 0
    """Tokens per text at most (the first ones are kept, and counted); 0 = the model's context."""
    balanced: bool = False
    """Draw the classes equally often in training, whatever their share of the rows."""
    batch_size: int = 16
    """Texts per optimizer step (gradient accumulation over train.micro_batch_size)."""
    pooling: str = "last"
    """What the head reads: the last real token's hidden state (it has attended to all the others), or the mean over the text."""
    train_blocks: int = 2
    """Without LoRA: the last k transformer blocks, the final norm and the head train (-1 = every weight); with LoRA: the adapters and the head."""

    def __post_init__(self) -> None:
        if self.pooling not in POOLINGS:
            raise UserError(f"data.pooling is {self.pooling!r}; choose one of: {', '.join(POOLINGS)}.")
        if self.max_length < 0:
            raise UserError(f"data.max_length is {self.max_length}; it must be 0 or more.")
        if self.batch_size < 1:
            raise UserError(f"data.batch_size is {self.batch_size}; it must be at least 1.")
        if self.train_blocks < -1:
            raise UserError(f"data.train_blocks is {self.train_blocks}; it must be -1 (everything), 0 (the head only) or more.")


@dataclass
class ClassifyConfig:
    """Classification: a checkpoint with a new head over its hidden states, trained on labelled texts."""

    data: ClassifyDataConfig = field(default_factory=ClassifyDataConfig)
    """The labelled texts, the head and what trains."""
    train: TrainConfig = field(default_factory=lambda: finetune_train_defaults(max_steps=300))
    """Loop settings; train.init_from (the checkpoint to start from) is required."""
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=5e-4, warmup_steps=10, weight_decay=0.1))
    """Optimizer and schedule."""
    lora: LoraConfig = field(default_factory=LoraConfig)
    """Low-rank adapters (lora.rank > 0): the adapters and the head train."""


@dataclass
class PreferenceDataConfig:
    """Preference pairs: a prompt, a preferred (chosen) answer and a worse (rejected) one."""

    train: str = ""
    """Training pairs: .jsonl (or a .json list) of {"prompt": text or [messages], "chosen": text, "rejected": text}."""
    val: str = ""
    """Held-out pairs in the same form; empty = hold out `holdout` of the training pairs (seeded)."""
    holdout: float = 0.1
    """Share of the training pairs held out when `val` is empty."""
    max_length: int = 0
    """Tokens per sequence (prompt + answer) at most; 0 = the model's context. Longer pairs are cut (counted): the prompt's start first, then the answer's end."""
    batch_size: int = 8
    """Pairs per optimizer step (gradient accumulation over train.micro_batch_size)."""
    beta: float = 0.1
    """DPO's β: how far the policy may move from the reference (larger = closer to it)."""

    def __post_init__(self) -> None:
        if not 0 <= self.holdout < 1:
            raise UserError(f"data.holdout is {self.holdout}; it must be within [0, 1).")
        if self.max_length < 0:
            raise UserError(f"data.max_length is {self.max_length}; it must be 0 or more.")
        if self.batch_size < 1:
            raise UserError(f"data.batch_size is {self.batch_size}; it must be at least 1.")
        if not self.beta > 0:
            raise UserError(f"data.beta is {self.beta}; it must be positive.")


@dataclass
class DPOConfig:
    """Preference tuning with DPO (Rafailov et al. 2023) against the starting checkpoint as reference."""

    data: PreferenceDataConfig = field(default_factory=PreferenceDataConfig)
    """The preference pairs and β."""
    train: TrainConfig = field(default_factory=lambda: finetune_train_defaults(max_steps=100, eval_every=25))
    """Loop settings; train.init_from (the policy's start and the reference) is required."""
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=5e-6, warmup_steps=10, weight_decay=0.0))
    """Optimizer and schedule (DPO wants a small learning rate)."""
    lora: LoraConfig = field(default_factory=LoraConfig)
    """Low-rank adapters (lora.rank > 0) instead of training every weight."""
