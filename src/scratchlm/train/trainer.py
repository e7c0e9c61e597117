"""The training engine every job runs on: `Trainer.train_step` and `Trainer.fit`.

A job (pretraining, and fine-tuning later) differs in what `build_run` assembles: the batches,
the loss function, the evaluators. The Trainer owns what they share:

- `train_step(lr)`: accumulate gradients over micro-batches until the step holds its tokens
  (forward, loss_fn, backward), check the loss is finite, clip, update;
- `fit()`: the warmup + cosine schedule, a time budget the schedule is fitted to, evaluation and a
  sample every `eval_every` steps and at the end, checkpoints, `metrics.jsonl`, progress.

Times: `elapsed_s` is wall time (what a time budget counts); `train_s` counts only training
steps, so tokens/s and MFU never include an evaluation, a sample or a checkpoint, and
benchmarks can compare training seconds directly. Both continue across a resume.

Over several processes (`dist_info`), every rank runs the same steps: the logged loss is the mean
over ranks (so a non-finite loss stops every rank at the same step), the time budget's
decisions are rank 0's, broadcast, and only rank 0 writes metrics, samples and the checkpoint's
shared files.

Order within a step: the update, then (when due) evaluation and sample, then (when due) the
checkpoint. A checkpoint of step s therefore follows step s's evaluation, and a run resumed from
it logs nothing twice. Checkpoints carry the optimizer, batch position and RNG states, so a
resumed run continues exactly (bitwise, on CPU in fp32, for step-budgeted runs).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn as nn

from scratchlm.checkpoints import OPTIMIZER_STATE, CheckpointInfo, list_checkpoints
from scratchlm.console import info, progress_bar
from scratchlm.errors import UserError
from scratchlm.generate.engine import generate
from scratchlm.generate.sampling import SamplingConfig
from scratchlm.model.gpt import GPT
from scratchlm.runtime import autocast
from scratchlm.tokenizer.tokenizer import Tokenizer
from scratchlm.train import deepspeed_backend
from scratchlm.train.checkpoint import (
    load_optimizer,
    save_checkpoint,
    save_optimizer,
    set_rng_state,
)
from scratchlm.train.distributed import Distributed, clip_grad_norm
from scratchlm.train.metrics import MetricsLog
from scratchlm.train.optim import OptimConfig, lr_at
from scratchlm.train.settings import TrainConfig, check_batch_tokens

Batch = Any
LossFn = Callable[[nn.Module, Batch], torch.Tensor]


class BatchSource(Protocol):
    """Endless training batches with a resumable position."""

    def next_batch(self) -> Batch: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


Evaluator = Callable[[nn.Module], Mapping[str, float]]


def lm_loss(model: nn.Module, batch: Batch) -> torch.Tensor:
    """Next-token cross-entropy: the batch is (x, y) token ids, y shifted by one."""
    x, y = batch
    return model(x, y)[1]


class Sampler:
    """A short sample at each evaluation, appended to `samples.md` under its step."""

    def __init__(self, tokenizer: Tokenizer, prompt: str, tokens: int, seed: int, path: Path, write: bool = True) -> None:
        """`write` is false on ranks other than 0: with a sharded model every rank must take part
        in generating, but one writes the sample down."""
        if not prompt and tokenizer.eot_id is None:
            raise UserError("train.sample_prompt is empty and this tokenizer has no <|endoftext|> to start from; set train.sample_prompt or train.sample_tokens = 0.")
        self.tokenizer, self.prompt, self.tokens, self.seed, self.path, self.write = tokenizer, prompt, tokens, seed, path, write
        self.prompt_ids = tokenizer.encode_ordinary(prompt) if prompt else [tokenizer.eot_id]

    def __call__(self, model: nn.Module, step: int) -> str:
        stop = [self.tokenizer.eot_id] if self.tokenizer.eot_id is not None else []
        new = generate(model, self.prompt_ids, self.tokens, SamplingConfig(temperature=0.8, top_k=200), seed=self.seed, stop_ids=stop, vocab_size=self.tokenizer.vocab_size)[0]
        text = self.tokenizer.decode(new)
        if not self.write:
            return text
        with self.path.open("a") as f:
            f.write(f"## step {step}\n\n```\n{self.prompt}{text}\n```\n\n")
        return text

    def keep_until(self, step: int) -> None:
        """Drop the samples of steps after `step` (a resumed run draws them again)."""
        if not self.write or not self.path.exists():
            return
        sections = self.path.read_text().split("## step ")
        kept = [s for s in sections[1:] if not s.split("\n", 1)[0].isdigit() or int(s.split("\n", 1)[0]) <= step]
        self.path.write_text("".join("## step " + s for s in kept))


class Trainer:
    """Runs a built model: `train_step` is one optimizer step, `fit` the whole schedule."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        train_batches: BatchSource,
        *,
        settings: TrainConfig,
        optim: OptimConfig,
        tokens_per_micro_batch: int,
        device: torch.device,
        dtype: torch.dtype,
        loss_fn: LossFn = lm_loss,
        evaluators: Mapping[str, Evaluator] | None = None,
        sampler: Sampler | None = None,
        checkpoint_model: GPT | None = None,
        tokenizer: Tokenizer | None = None,
        run_config: dict[str, Any] | None = None,
        flops_per_token: float = 0.0,
        num_params: int = 0,
        peak_flops: float = 0.0,
        dist_info: Distributed | None = None,
        extra_meta: Mapping[str, Any] | None = None,
        count_tokens: Callable[[Batch], int] | None = None,
    ) -> None:
        """`peak_flops` is one device's peak; MFU divides by it times the number of processes.
        `extra_meta` goes into every checkpoint's meta.json (a fine-tune's chat template, LoRA settings).
        `count_tokens(batch)` counts the tokens a micro-batch computes when batches vary in length
        (fine-tuning's dynamic padding); without it a step counts train.batch_tokens."""
        self.model, self.optimizer, self.train_batches = model, optimizer, train_batches
        self.settings, self.optim = settings, optim
        self.grad_accum = check_batch_tokens(settings.batch_tokens, tokens_per_micro_batch)
        self.device, self.dtype, self.autocast = device, dtype, autocast(device, dtype)
        self.loss_fn = loss_fn
        self.evaluators = dict(evaluators or {})
        self.sampler = sampler
        self.checkpoint_model, self.tokenizer, self.run_config = checkpoint_model, tokenizer, run_config or {}
        self.flops_per_token, self.peak_flops = flops_per_token, peak_flops
        self.num_params = num_params
        self.extra_meta = dict(extra_meta or {})
        self.count_tokens = count_tokens
        self.dist = dist_info if dist_info is not None else Distributed(device=device)
        self.deepspeed = model if deepspeed_backend.is_engine(model) else None
        self.out_dir = Path(settings.out_dir)
        # fp16 needs its loss scaled so small gradients do not flush to zero; bf16 and fp32 do not.
        self.scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
        self.step, self.tokens_seen, self.horizon = 0, 0, settings.max_steps
        self.elapsed_before, self.train_before = 0.0, 0.0

    # ---- one step ----------------------------------------------------------------------------

    def train_step(self, lr: float) -> dict[str, float]:
        """One optimizer step at learning rate `lr`: grad_accum micro-batches, clip, update.

        Returns the mean loss over the micro-batches and the gradient norm before clipping. A
        loss that is not finite stops before the update, with a message naming the last good
        checkpoint.
        """
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        if self.deepspeed is not None:
            return self._deepspeed_step()
        no_sync = getattr(self.model, "no_sync", None)
        loss_sum = torch.zeros((), device=self.device)
        tokens = 0
        for micro in range(self.grad_accum):
            batch = self.train_batches.next_batch()
            tokens += self.count_tokens(batch) if self.count_tokens is not None else 0
            # Data-parallel wrappers all-reduce gradients on the last micro-batch only.
            sync = contextlib.nullcontext() if no_sync is None or micro == self.grad_accum - 1 else no_sync()
            with sync:
                with self.autocast:
                    loss = self.loss_fn(self.model, batch)
                self.scaler.scale(loss / self.grad_accum).backward()
            loss_sum += loss.detach()
        loss_value = self._checked_loss(loss_sum)
        self.scaler.unscale_(self.optimizer)
        clip = self.optim.grad_clip if self.optim.grad_clip > 0 else float("inf")
        if self.dist.enabled:
            grad_norm = clip_grad_norm(self.model.parameters(), clip)
        else:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        figures = {"loss": loss_value, "grad_norm": grad_norm}
        return figures | {"tokens": tokens} if self.count_tokens is not None else figures

    def _checked_loss(self, loss_sum: torch.Tensor) -> float:
        """The step's loss, the mean over micro-batches and ranks; a non-finite one stops every
        rank before the update."""
        loss_value = float(self.dist.mean(loss_sum)) / self.grad_accum
        if not math.isfinite(loss_value):
            self.optimizer.zero_grad(set_to_none=True)
            last = list_checkpoints(self.out_dir)
            raise UserError(
                f"The loss became {loss_value} at step {self.step}; lower optim.lr or use train.dtype = \"float32\". "
                + (f"The last good checkpoint is {last[-1]} (continue with --resume)." if last else "No checkpoint was written yet.")
            )
        return loss_value

    def _deepspeed_step(self) -> dict[str, float]:
        """The same step through a DeepSpeed engine: its `backward` scales by the accumulation
        steps, its `step` updates (with clipping) only after the last micro-batch, which waits
        here until the loss is known to be finite."""
        engine = self.deepspeed
        loss_sum = torch.zeros((), device=self.device)
        for micro in range(self.grad_accum):
            batch = self.train_batches.next_batch()
            with self.autocast:
                loss = self.loss_fn(engine, batch)
            engine.backward(loss)
            loss_sum += loss.detach()
            if micro < self.grad_accum - 1:
                engine.step()
        loss_value = self._checked_loss(loss_sum)
        engine.step()
        return {"loss": loss_value, "grad_norm": float(engine.get_global_grad_norm() or 0.0)}

    # ---- evaluation --------------------------------------------------------------------------

    def evaluate(self) -> dict[str, Any]:
        """Every evaluator's figures (prefixed with its name) and a sample."""
        record: dict[str, Any] = {}
        for name, evaluator in self.evaluators.items():
            record |= {f"{name}_{key}": value for key, value in evaluator(self.eval_model).items()}
        if self.sampler is not None:
            with self.autocast:
                record["sample"] = self.sampler(self.eval_model, self.step)
        return record

    @property
    def eval_model(self) -> nn.Module:
        """The model itself, not a data-parallel wrapper (whose forward would wait for gradients)."""
        return self.checkpoint_model if self.checkpoint_model is not None else self.model

    # ---- resume ------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """What every rank shares; the optimizer and each rank's RNG states are saved beside it."""
        return {
            "loader": self.train_batches.state_dict(),
            "scaler": self.scaler.state_dict(),
            "horizon": self.horizon,
            "elapsed_s": self._elapsed(),
            "train_s": self._train_s(),
            "layout": self.dist.layout,
        }

    def resume(self, checkpoint: CheckpointInfo) -> None:
        """Continue from a checkpoint found with its training state (weights already loaded)."""
        state = checkpoint.train_state
        if state is None:
            raise ValueError("resume needs a checkpoint found with need_train_state=True")
        saved_layout = state["layout"]
        if saved_layout.get("backend", "torch") != self.dist.parallel.backend:
            raise UserError(f"{checkpoint.path} was trained with parallel.backend = {saved_layout.get('backend', 'torch')!r}; resume with that backend, or start a new run from its weights with train.init_from.")
        if saved_layout.get("backend") == "deepspeed":
            if self.deepspeed is None or saved_layout["world_size"] != self.dist.world_size:
                raise UserError(
                    f"{checkpoint.path} holds DeepSpeed's ZeRO shards for {saved_layout['world_size']} processes; resume it with --nproc {saved_layout['world_size']}, "
                    "or start a new run from its weights with train.init_from."
                )
            deepspeed_backend.load_engine(self.deepspeed, checkpoint.path / OPTIMIZER_STATE.parent)
        elif "optimizer" in state:
            if self.dist.enabled:
                raise UserError(f"{checkpoint.path} was written by an older scratchlm with its optimizer state in one file; resume it in one process first (its next checkpoint resumes at any number of processes).")
            self.optimizer.load_state_dict(state["optimizer"])
        else:
            load_optimizer(self.eval_model, self.optimizer, state["optimizer_dir"])  # type: ignore[arg-type]
        self.train_batches.load_state_dict(state["loader"])
        if saved_layout["world_size"] == self.dist.world_size:
            set_rng_state(state["rng"][self.dist.rank])
        else:
            # The data and the weights continue exactly; dropout draws cannot (other ranks).
            set_rng_state(state["rng"][0])
            info(f"resuming {self.dist.describe()} from a checkpoint of {saved_layout['world_size']} process(es): the data order and optimizer continue exactly; dropout's random draws differ from the original run's")
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.step, self.tokens_seen = checkpoint.meta["step"], checkpoint.meta["tokens_seen"]
        self.elapsed_before, self.train_before = state["elapsed_s"], state.get("train_s", state["elapsed_s"])
        self.horizon = state["horizon"]
        saved_max = checkpoint.meta.get("run_config", {}).get("train", {}).get("max_steps", self.settings.max_steps)
        if self.settings.max_steps != saved_max:
            # A new limit on --resume applies: the cosine schedule is refitted to end there.
            self.horizon = self.settings.max_steps if not self.settings.time_budget_s else min(self.horizon, self.settings.max_steps)
            info(f"train.max_steps is now {self.settings.max_steps} (was {saved_max}): the schedule ends at step {self.horizon}")
        if self.step >= self.horizon:
            raise UserError(f"The run in {self.out_dir} already finished at step {self.step}; raise train.max_steps (e.g. --set train.max_steps={self.step * 2}) to continue it.")
        if self.sampler is not None:
            self.sampler.keep_until(self.step)
        info(f"resuming from {checkpoint.path} (step {self.step})")

    def save(self, record: dict[str, Any]) -> Path | None:
        if self.checkpoint_model is None or self.tokenizer is None:
            return None
        meta = {"tokens_seen": self.tokens_seen, "metrics": record, "run_config": self.run_config, **self.extra_meta}
        if self.deepspeed is not None:
            engine = self.deepspeed
            weights = deepspeed_backend.full_weights(engine, self.dist)

            def write_state(directory: Path) -> None:
                deepspeed_backend.save_engine(engine, directory)

        else:
            model, optimizer, weights = self.checkpoint_model, self.optimizer, None

            def write_state(directory: Path) -> None:
                save_optimizer(model, optimizer, directory / OPTIMIZER_STATE.name)

        return save_checkpoint(
            self.out_dir, self.step, self.checkpoint_model, self.tokenizer, meta, self.state_dict(), keep=self.settings.keep_checkpoints, write_state=write_state, weights=weights, dist_info=self.dist
        )

    # ---- the schedule ------------------------------------------------------------------------

    def _elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self._started

    def _train_s(self) -> float:
        return self.train_before + self._train_seconds

    def _fit_horizon(self) -> None:
        """Fit the schedule's length to the time budget: with p seconds per step (steps after the
        first, which warms up), e per evaluation and E steps between evaluations, the H - s
        remaining steps cost (H - s)·p + ((H - s)/E + 1)·e, the final evaluation included.
        Refitted after each evaluation, when e is known."""
        measured = self._step_times[1:] if len(self._step_times) > 1 else self._step_times
        per_step = sum(measured[-20:]) / len(measured[-20:])
        remaining = self.settings.time_budget_s - self._elapsed()
        per_eval_step = self._eval_seconds / self.settings.eval_every if self.settings.eval_every else 0.0
        fits = self.step + int((remaining - self._eval_seconds) / (per_step + per_eval_step))
        # Ranks that disagreed on the number of steps would wait for each other forever.
        self.horizon = int(self.dist.agree(max(self.step + 1, min(self.settings.max_steps, fits))))

    def fit(self, metrics: MetricsLog) -> dict[str, Any]:
        """Train to the end of the schedule (or the time budget); returns the final evaluation.

        Ctrl-C stops between or within steps and says which checkpoint a --resume would
        continue from.
        """
        self._started, self._train_seconds = time.perf_counter(), 0.0
        self._step_times: list[float] = []
        self._eval_seconds = 0.0
        self._last_eval: dict[str, Any] | None = None
        self.model.train()
        try:
            self._steps(metrics)
        except KeyboardInterrupt:
            info(f"[yellow]interrupted at step {self.step}[/yellow]: " + self._where_to_resume())
            raise
        except torch.distributed.DistError as error:
            # Another rank died or hung: the collective this one waited in failed.
            raise UserError(f"Training stopped at step {self.step}: another process of the job failed or stopped answering ({str(error).splitlines()[0][:160]}); {self._where_to_resume()}") from None
        final = self._last_eval if self._last_eval is not None and self._last_eval["step"] == self.step else self._evaluate_and_log(metrics)
        self.save(final)
        return final

    def _where_to_resume(self) -> str:
        last = list_checkpoints(self.out_dir)
        return f"the last checkpoint is {last[-1]}; continue with --resume." if last else "no checkpoint was written yet (train.checkpoint_every sets how often)."

    def _evaluate_and_log(self, metrics: MetricsLog) -> dict[str, Any]:
        started = time.perf_counter()
        record = {"step": self.step, "tokens": self.tokens_seen, **self.evaluate()}
        self._eval_seconds = time.perf_counter() - started
        record |= {"eval_s": self._eval_seconds, "elapsed_s": self._elapsed(), "train_s": self._train_s()}
        metrics.log(record)
        self._last_eval = record
        return record

    def _steps(self, metrics: MetricsLog) -> None:
        tc = self.settings
        window_train_s, window_tokens = self._train_s(), 0
        with progress_bar("training", total=self.horizon) as bar:
            bar(self.step)
            while self.step < self.horizon:
                if tc.time_budget_s and self.dist.agree(self._elapsed() > tc.time_budget_s - self._eval_seconds):
                    info(f"time budget of {tc.time_budget_s:.0f} s reached at step {self.step}")
                    break
                lr = lr_at(self.step, self.horizon, self.optim)
                step_started = time.perf_counter()
                figures = self.train_step(lr)
                step_seconds = time.perf_counter() - step_started
                self._train_seconds += step_seconds
                self._step_times.append(step_seconds)
                self.step += 1
                step_tokens = int(figures.get("tokens", tc.batch_tokens))
                self.tokens_seen += step_tokens
                window_tokens += step_tokens
                bar(1)

                if tc.time_budget_s and len(self._step_times) == 6:
                    self._fit_horizon()
                    bar.update(total=self.horizon)
                    info(f"time budget {tc.time_budget_s:.0f} s: about {self.horizon} steps ({sum(self._step_times[1:]) / 5:.2f} s/step)")

                if self.step % tc.log_every == 0 or self.step == self.horizon:
                    tokens_per_s = window_tokens / max(self._train_s() - window_train_s, 1e-9)
                    window_train_s, window_tokens = self._train_s(), 0
                    mfu = tokens_per_s * self.flops_per_token / (self.peak_flops * self.dist.world_size) if self.peak_flops else 0.0
                    record = {"step": self.step, "tokens": self.tokens_seen, "loss": figures["loss"], "lr": lr, "grad_norm": figures["grad_norm"], "tokens_per_s": tokens_per_s, "mfu": mfu, "elapsed_s": self._elapsed(), "train_s": self._train_s()}
                    metrics.log(record)
                    bar.update(description=f"step {self.step}/{self.horizon} loss {figures['loss']:.3f} lr {lr:.1e} {tokens_per_s:,.0f} tok/s MFU {mfu:.0%}")

                if tc.eval_every and self.step % tc.eval_every == 0 and self.step < self.horizon:
                    self._evaluate_and_log(metrics)
                    if tc.time_budget_s:
                        self._fit_horizon()
                        bar.update(total=self.horizon)
                if tc.checkpoint_every and self.step % tc.checkpoint_every == 0 and self.step < self.horizon:
                    self.save(self._last_eval if self._last_eval and self._last_eval["step"] == self.step else {})
