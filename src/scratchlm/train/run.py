"""`build_run` assembles a pretraining run; `pretrain` runs it on the Trainer.

    build_run(config)  →  tokenizer, shards, model (+ init_from or resumed weights),
                          parallelize(model), optimizer, train batches, evaluators, sampler
                          →  Trainer
    pretrain(config)   =  join the job's processes, check the run directory, build_run,
                          resume if asked, Trainer.fit

Everything a user can get wrong is checked here, before step 1: settings, paths, the tokenizer,
a validation split too small for one window, an existing run directory.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
from pathlib import Path
from typing import Any

import torch

from scratchlm.checkpoints import (
    CheckpointInfo,
    find_checkpoint,
    list_checkpoints,
    load_weights,
)
from scratchlm.config import to_dict
from scratchlm.console import info
from scratchlm.errors import UserError
from scratchlm.eval.perplexity import ShardEvaluator, token_byte_lengths
from scratchlm.model.gpt import GPT, GPTConfig
from scratchlm.paths import check_output_location, make_directory
from scratchlm.report import write_report
from scratchlm.runtime import DTYPES, autocast, resolve_dtype
from scratchlm.tokenizer.tokenizer import Tokenizer, load_tokenizer
from scratchlm.train.distributed import (
    Distributed,
    parallelize,
    setup_distributed,
    shutdown_distributed,
)
from scratchlm.train.metrics import MetricsLog, peak_flops
from scratchlm.train.optim import make_optimizer
from scratchlm.train.settings import RunConfig, check_batch_tokens
from scratchlm.train.trainer import Sampler, Trainer

RUN_FILES = ("metrics.jsonl", "samples.md", "checkpoints")


def existing_run(out_dir: Path) -> str | None:
    """What of a run `out_dir` already holds, in words, or None when it holds none."""
    if not out_dir.is_dir():
        return None
    found = [name for name in RUN_FILES if (out_dir / name).exists()]
    if not found:
        return None
    checkpoints = list_checkpoints(out_dir)
    if checkpoints:
        return f"a run with {len(checkpoints)} checkpoint(s), the newest {checkpoints[-1].name}"
    return f"an unfinished run ({', '.join(found)})"


def check_run_dir(out_dir: Path, resume: bool, overwrite: bool) -> None:
    """Refuse to mix two runs in one directory: --resume continues it, --overwrite replaces it."""
    if resume and overwrite:
        raise UserError("--resume continues the run in train.out_dir and --overwrite replaces it; pass only one of them.")
    check_output_location(out_dir, "train.out_dir")
    held = existing_run(out_dir)
    if resume and not list_checkpoints(out_dir):
        raise UserError(f"Nothing to resume in {out_dir} (no checkpoints/); drop --resume to start a new run" + (", with --overwrite to replace what is there." if held else "."))
    if held and not resume and not overwrite:
        if not list_checkpoints(out_dir):
            raise UserError(f"train.out_dir {out_dir} already holds {held} but no checkpoint to resume from; pass --overwrite to replace it, or choose another train.out_dir.")
        raise UserError(f"train.out_dir {out_dir} already holds {held}; pass --resume to continue it, --overwrite to replace it, or choose another train.out_dir.")


def clear_run_dir(out_dir: Path) -> None:
    for name in RUN_FILES:
        path = out_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def resolve_tokenizer(config: RunConfig, shards: Path) -> Tokenizer:
    if config.data.tokenizer:
        return load_tokenizer(config.data.tokenizer)
    beside = shards.parent / "tokenizer"
    if not beside.exists():
        raise UserError(f"data.tokenizer is not set and {beside} does not exist; set data.tokenizer to the tokenizer the shards were made with (e.g. --set data.tokenizer=PATH).")
    return load_tokenizer(beside)


def _model_config(config: RunConfig, tokenizer: Tokenizer, init: CheckpointInfo | None) -> GPTConfig:
    if init is not None:
        # The checkpoint's architecture, with this run's dropout (a training setting).
        model_config = dataclasses.replace(init.config, dropout=config.model.dropout)
        differing = [
            f.name
            for f in dataclasses.fields(GPTConfig)
            if f.name != "dropout" and getattr(config.model, f.name) != getattr(model_config, f.name) and not (f.name == "vocab_size" and config.model.vocab_size == 0)
        ]
        if differing:
            info(f"[yellow]note:[/yellow] the model comes from train.init_from; its {', '.join(f'model.{n}={getattr(model_config, n)!r}' for n in differing)} replace this config's")
        return model_config
    model_config = config.model
    if model_config.vocab_size == 0:
        model_config = dataclasses.replace(model_config, vocab_size=64 * math.ceil(tokenizer.vocab_size / 64))
    if model_config.vocab_size < tokenizer.vocab_size:
        raise UserError(f"model.vocab_size {model_config.vocab_size} is smaller than the tokenizer's {tokenizer.vocab_size}; raise it or set it to 0.")
    return model_config


def build_run(config: RunConfig, dist_info: Distributed | None = None, resume_from: CheckpointInfo | None = None) -> tuple[Trainer, RunConfig]:
    """Everything a pretraining run needs, checked, on a Trainer; and the run's config with the
    model settings it resolved (vocabulary size, init_from's architecture).

    `dist_info` places this process in a multi-process job (default: join the job the launcher
    started, if any); `resume_from` is a checkpoint whose weights the model starts from (the
    Trainer's `resume` then restores the rest). Weights are loaded before the model is sharded.
    """
    from scratchlm.data.loader import TokenLoader
    from scratchlm.data.shards import check_tokenizer, read_manifest

    tc = config.train
    if not config.data.shards:
        raise UserError("No training data: set data.shards to a shards directory (made by `scratchlm data prepare --tokenizer` or the speedrun).")
    shards = Path(config.data.shards)
    manifest = read_manifest(shards)
    dist_info = dist_info if dist_info is not None else setup_distributed(config.parallel, tc.device)
    device = dist_info.device
    dtype = resolve_dtype(tc.dtype, device)
    # `auto` measures this CPU; every rank must run the precision rank 0 measured.
    dtype = list(DTYPES.values())[int(dist_info.agree(list(DTYPES.values()).index(dtype)))]

    init = find_checkpoint(tc.init_from) if tc.init_from else None
    if init is not None:
        tokenizer = init.tokenizer
        if config.data.tokenizer and load_tokenizer(config.data.tokenizer).hash != tokenizer.hash:
            raise UserError(f"data.tokenizer differs from the tokenizer of train.init_from ({init.path}); leave data.tokenizer empty to use the checkpoint's.")
    else:
        tokenizer = resolve_tokenizer(config, shards)
    check_tokenizer(manifest, tokenizer)
    model_config = _model_config(config, tokenizer, init)
    config = dataclasses.replace(config, model=model_config)

    tokens_per_micro = tc.micro_batch_size * model_config.block_size * dist_info.data_size
    byte_lengths = token_byte_lengths(tokenizer, model_config.vocab_size, device)
    ranks = {"rank": dist_info.data_rank, "world_size": dist_info.data_size}
    evaluator = ShardEvaluator(shards, "val", tc.micro_batch_size, model_config.block_size, byte_lengths, tc.eval_tokens, autocast(device, dtype), group=dist_info.data_group, **ranks)
    train_batches = TokenLoader(shards, "train", tc.micro_batch_size, model_config.block_size, mode="random", seed=tc.seed, device=device, **ranks)

    # Every rank builds the same initial model from the seed; sharding keeps each rank's part.
    torch.manual_seed(tc.seed)
    model = GPT(model_config)
    if resume_from is not None:
        _check_resumable(resume_from, config)
        load_weights(model, resume_from)
    elif init is not None:
        load_weights(model, init)
        info(f"initialized from {init.path} (step {init.meta['step']})")
    model = model.to(device)
    # Counted before sharding: a ZeRO-3 or FSDP rank holds only its share.
    num_params, flops_per_token = model.num_params(), model.flops_per_token(model_config.block_size)
    if config.parallel.backend == "deepspeed" and dist_info.enabled:
        from scratchlm.train.deepspeed_backend import make_engine

        train_model, optimizer = make_engine(model, config, dist_info, dtype, check_batch_tokens(tc.batch_tokens, tokens_per_micro))
    else:
        train_model = parallelize(model, tc, dist_info, dtype)
        optimizer = make_optimizer(train_model, config.optim, device.type)
    sampler = Sampler(tokenizer, tc.sample_prompt, tc.sample_tokens, tc.seed, Path(tc.out_dir) / "samples.md", write=dist_info.is_main) if tc.sample_tokens > 0 else None
    trainer = Trainer(
        train_model,
        optimizer,
        train_batches,
        settings=tc,
        optim=config.optim,
        tokens_per_micro_batch=tokens_per_micro,
        device=device,
        dtype=dtype,
        evaluators={"val": evaluator},
        sampler=sampler,
        checkpoint_model=model,
        tokenizer=tokenizer,
        run_config=to_dict(config),
        flops_per_token=flops_per_token,
        num_params=num_params,
        peak_flops=tc.peak_flops or peak_flops(device, dtype),
        dist_info=dist_info,
    )
    return trainer, config


def _check_resumable(checkpoint: CheckpointInfo, config: RunConfig) -> None:
    """The checkpoint's model must be this config's: name the first setting that differs."""
    saved = checkpoint.meta.get("run_config", {}).get("model", {})
    for key, value in to_dict(config.model).items():
        if key in saved and saved[key] != value:
            raise UserError(f"model.{key} is {value!r} here but {saved[key]!r} in {checkpoint.path}; resume with the run's own model settings, or start a new run from its weights with train.init_from.")


def pretrain(config: RunConfig, resume: bool = False, overwrite: bool = False) -> dict[str, Any]:
    """Train a GPT on token shards; returns the final evaluation and run figures.

    `resume` continues the run in train.out_dir from its newest readable checkpoint, exactly;
    `overwrite` replaces a run already there. Without either, a directory holding a run is
    refused.
    """
    out_dir = Path(config.train.out_dir)
    dist_info = setup_distributed(config.parallel, config.train.device)
    try:
        check_run_dir(out_dir, resume, overwrite)
        checkpoint = find_checkpoint(out_dir, need_train_state=True) if resume else None
        trainer, config = build_run(config, dist_info, resume_from=checkpoint)
        if checkpoint is not None:
            trainer.resume(checkpoint)
        elif overwrite and existing_run(out_dir) and dist_info.is_main:
            info(f"--overwrite: replacing the run in {out_dir}")
            clear_run_dir(out_dir)
        if dist_info.is_main:
            make_directory(out_dir, "train.out_dir")
        dist_info.barrier()
        metrics = MetricsLog(out_dir / "metrics.jsonl" if dist_info.is_main else None, resume_step=trainer.step if checkpoint is not None else None)
        info(
            f"model: {trainer.num_params / 1e6:.2f} M parameters, {trainer.flops_per_token / 1e6:.1f} MFLOP/token; "
            f"{trainer.grad_accum} × {config.train.micro_batch_size} × {config.model.block_size} × {dist_info.data_size} tokens per step; "
            f"{trainer.dtype} on {trainer.device}, {dist_info.describe()}"
        )
        final = trainer.fit(metrics)
        if dist_info.is_main:
            info(f"report: {write_report(out_dir)}")
        shutdown_distributed()
    except BaseException:
        # Leave the group without waiting for the others: they may be the ones that failed.
        if dist_info.enabled and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        raise
    val = {k.removeprefix("val_"): v for k, v in final.items() if k.startswith("val_")}
    if val:
        info(f"step {trainer.step}: val loss {val['loss']:.4f}, perplexity {val['perplexity']:.2f}, {val['bpb']:.4f} bits per byte")
    return {
        **final,
        "num_params": trainer.num_params,
        "flops_per_token": trainer.flops_per_token,
        "peak_flops": trainer.peak_flops,
        "wall_s": final["elapsed_s"],
        "train_s": final["train_s"],
        "checkpoint": str(list_checkpoints(out_dir)[-1]),
    }
