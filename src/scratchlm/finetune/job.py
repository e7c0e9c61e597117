"""What every fine-tuning job shares: start from a checkpoint (or resume the job's own), add the
format's special tokens, put LoRA on, and run the one Trainer with the job's batches and loss.

    start_finetune(train, optim, lora, ...)   →  FinetuneRun: model, tokenizer, device, dtype
    FinetuneRun.fit(batches, loss_fn, evaluators, ...)  →  Trainer.fit's final record

A new job loads `train.init_from` (a LoRA checkpoint there has its adapters folded in: it is
the new base), grows the vocabulary for new special tokens, then wraps the chosen layers with
adapters. A resumed job rebuilds the same structure from its own newest checkpoint, whose
weights, adapters, optimizer, batch position and RNG states continue exactly. Checkpoints carry
meta.json's `task`, the chat template and the LoRA settings, so `generate`, `chat`, `serve` and
`convert to-hf` load them like any other.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from scratchlm.checkpoints import CheckpointInfo, find_checkpoint, load_weights
from scratchlm.console import info
from scratchlm.errors import UserError
from scratchlm.finetune.vocab import add_special_tokens, fit_vocabulary
from scratchlm.model.gpt import GPT
from scratchlm.model.lora import LoraConfig, apply_lora, save_adapter, weights_hash
from scratchlm.paths import make_directory
from scratchlm.report import write_report
from scratchlm.runtime import resolve_device, resolve_dtype
from scratchlm.tokenizer.tokenizer import Tokenizer
from scratchlm.train.distributed import Distributed, parallelize
from scratchlm.train.metrics import MetricsLog, peak_flops
from scratchlm.train.optim import OptimConfig, make_optimizer
from scratchlm.train.run import check_run_dir, clear_run_dir, existing_run
from scratchlm.train.settings import TrainConfig
from scratchlm.train.trainer import BatchSource, Evaluator, LossFn, Trainer


@dataclass
class FinetuneRun:
    """A model ready to fine-tune, and what running it needs."""

    model: GPT
    tokenizer: Tokenizer
    device: torch.device
    dtype: torch.dtype
    train: TrainConfig
    optim: OptimConfig
    lora: LoraConfig
    meta: dict[str, Any]
    """What every checkpoint's meta.json adds: task, chat template, LoRA settings, the base."""
    run_config: dict[str, Any]
    resume_from: CheckpointInfo | None = None
    base: CheckpointInfo | None = None
    """The checkpoint the job started from (train.init_from), whose weights' hash a LoRA adapter records."""

    @property
    def out_dir(self) -> Path:
        return Path(self.train.out_dir)

    @property
    def chat_template(self) -> str | None:
        return self.meta.get("chat_template")

    def trainable_parameters(self) -> int:
        return sum(p.numel() for p in {id(p): p for p in self.model.parameters() if p.requires_grad}.values())

    def fit(
        self,
        batches: BatchSource,
        loss_fn: LossFn,
        evaluators: Mapping[str, Evaluator],
        *,
        tokens_per_micro_batch: int,
        batch_tokens: int,
        count_tokens: Callable[[Any], int],
    ) -> dict[str, Any]:
        """Train with the Trainer (resuming when the run was started with `resume`); the final record.

        A step is batch_tokens / tokens_per_micro_batch micro-batches; `count_tokens(batch)` is
        what a micro-batch really computes (batches are padded to their longest sequence only),
        which the tokens/s and MFU figures count."""
        settings = dataclasses.replace(self.train, batch_tokens=batch_tokens)
        dist = Distributed(device=self.device)
        train_model = parallelize(self.model, settings, dist, self.dtype)
        optimizer = make_optimizer(train_model, self.optim, self.device.type)
        trainer = Trainer(
            train_model,
            optimizer,
            batches,
            settings=settings,
            optim=self.optim,
            tokens_per_micro_batch=tokens_per_micro_batch,
            device=self.device,
            dtype=self.dtype,
            loss_fn=loss_fn,
            evaluators=evaluators,
            checkpoint_model=self.model,
            tokenizer=self.tokenizer,
            run_config=self.run_config,
            flops_per_token=self.model.flops_per_token(self.model.config.block_size),
            num_params=self.model.num_params(),
            peak_flops=settings.peak_flops or peak_flops(self.device, self.dtype),
            dist_info=dist,
            extra_meta=self.meta,
            count_tokens=count_tokens,
        )
        if self.resume_from is not None:
            trainer.resume(self.resume_from)
        make_directory(self.out_dir, "train.out_dir")
        metrics = MetricsLog(self.out_dir / "metrics.jsonl", resume_step=trainer.step if self.resume_from is not None else None)
        trainable = self.trainable_parameters()
        share = f"{trainable / 1e6:.3f} M of {self.model.num_params() / 1e6:.3f} M parameters train ({100 * trainable / self.model.num_params():.2f} %)"
        info(f"fine-tuning: {share}; {trainer.grad_accum} × {settings.micro_batch_size} sequences per step; {self.dtype} on {self.device}")
        final = trainer.fit(metrics)
        info(f"report: {write_report(self.out_dir)}")
        if self.lora.rank and self.base is not None:
            save_adapter(self.out_dir / "adapter.safetensors", self.model, self.lora, weights_hash(self.base.path / "model.safetensors"))
            info(f"the adapters alone: {self.out_dir / 'adapter.safetensors'} (for the base {self.base.path})")
        return final


def start_finetune(
    train: TrainConfig,
    optim: OptimConfig,
    lora: LoraConfig,
    *,
    special_tokens: tuple[str, ...] = (),
    chat_template: str | None = None,
    wrap: Callable[[GPT], GPT] | None = None,
    task: str,
    resume: bool = False,
    overwrite: bool = False,
    run_config: dict[str, Any] | None = None,
) -> FinetuneRun:
    """The model and tokenizer a fine-tuning job trains, checked and built (nothing trained yet).

    `wrap` turns the loaded GPT into the job's model (a classifier adds its head); LoRA goes on
    after it, and the job chooses what else trains before `fit`."""
    wrap = wrap or (lambda gpt: gpt)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UserError("Fine-tuning runs in one process; launch it without torchrun (one GPU, or the CPU).")
    if not train.init_from:
        raise UserError("Fine-tuning starts from a checkpoint: set train.init_from to a checkpoint or run directory (e.g. --set train.init_from=runs/speedrun/train).")
    out_dir = Path(train.out_dir)
    check_run_dir(out_dir, resume, overwrite)
    device = resolve_device(train.device)
    dtype = resolve_dtype(train.dtype, device)
    base = find_checkpoint(train.init_from)
    torch.manual_seed(train.seed)
    if resume:
        checkpoint = find_checkpoint(out_dir, need_train_state=True)
        if checkpoint.meta.get("task") != task:
            raise UserError(f"{checkpoint.path} is a {checkpoint.meta.get('task', 'pretraining')!r} checkpoint, not {task!r}; resume it with its own command.")
        if checkpoint.meta.get("lora") != (asdict(lora) if lora.rank else None):
            raise UserError(f"{checkpoint.path} was trained with lora = {checkpoint.meta.get('lora')}; resume with the run's own [lora] settings.")
        model, tokenizer = wrap(GPT(checkpoint.config)), checkpoint.tokenizer
        if lora.rank:
            apply_lora(model, lora)
        load_weights(model, checkpoint)
    else:
        checkpoint = None
        if overwrite and existing_run(out_dir):
            info(f"--overwrite: replacing the run in {out_dir}")
            clear_run_dir(out_dir)
        model = GPT(base.config)
        load_weights(model, base)
        info(f"starting from {base.path} (step {base.meta['step']})")
        tokenizer, added = add_special_tokens(base.tokenizer, special_tokens)
        if added:
            fit_vocabulary(model, base.tokenizer.vocab_size, tokenizer.vocab_size)
            info(f"added {', '.join(added)} to the tokenizer (ids {tokenizer.special_tokens[added[0]]}..{tokenizer.special_tokens[added[-1]]}), their embedding rows the mean of the others")
        model = wrap(model)
        if lora.rank:
            adapted = apply_lora(model, lora)
            info(f"LoRA rank {lora.rank} on {len(adapted)} layers ({', '.join(adapted[:3])}{', ...' if len(adapted) > 3 else ''})")
    model = model.to(device)
    meta: dict[str, Any] = {"task": task, "base": str(base.path)}
    if chat_template:
        meta["chat_template"] = chat_template
    if lora.rank:
        meta["lora"] = asdict(lora)
    return FinetuneRun(model, tokenizer, device, dtype, train, optim, lora, meta, run_config or {}, checkpoint, base)
