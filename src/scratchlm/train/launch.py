"""`scratchlm train --nproc N`: start the job's processes with torchrun's launcher, in this
process, after checking what can be checked once (settings, layout, run directory), so a
mistake is reported in one sentence instead of once per process.

A process that fails ends the whole job (torchrun stops the others). A process that exits with
an error of its own (status 2) has already said why; for anything else (a crash, a kill, an
out-of-memory) this says which process, how, and where the run can be resumed from.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

from scratchlm.checkpoints import list_checkpoints
from scratchlm.console import info, is_quiet
from scratchlm.data.shards import read_manifest
from scratchlm.errors import UserError
from scratchlm.runtime import resolve_device
from scratchlm.train.deepspeed_backend import require_deepspeed
from scratchlm.train.distributed import check_offload, check_tensor_parallel
from scratchlm.train.run import check_run_dir
from scratchlm.train.settings import RunConfig, check_batch_tokens


def _how(exitcode: int) -> str:
    if exitcode < 0:
        try:
            return f"was killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"was killed by signal {-exitcode}"
    return f"exited with status {exitcode}"


def launch(config: RunConfig, child_args: list[str], *, nproc: int, nnodes: int, rdzv_endpoint: str, rdzv_id: str, resume: bool, overwrite: bool) -> None:
    """Run `scratchlm CHILD_ARGS` in `nproc` processes on this machine (× `nnodes` machines)."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    world_size = nproc * nnodes
    dp, fsdp, tp = config.parallel.layout(world_size)
    if not config.train.init_from:  # otherwise the model is the checkpoint's
        check_batch_tokens(config.train.batch_tokens, config.train.micro_batch_size * config.model.block_size * dp * fsdp)
        if tp > 1 and config.parallel.backend == "torch":
            check_tensor_parallel(config.model, tp)
    if nnodes > 1 and not rdzv_endpoint:
        raise UserError("--nnodes > 1 needs --rdzv-endpoint HOST:PORT (the first machine's address and a free port), the same on every machine.")
    out_dir = Path(config.train.out_dir)
    if nnodes == 1:
        check_run_dir(out_dir, resume, overwrite)
    if config.data.shards:
        read_manifest(config.data.shards)
    check_offload(config.parallel, resolve_device(config.train.device))
    if config.parallel.backend == "deepspeed":
        require_deepspeed()
    if "OMP_NUM_THREADS" not in os.environ:
        # torchrun would set 1; on a CPU the cores are better shared out between the processes.
        os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // nproc))
    where = ["--standalone"] if nnodes == 1 else ["--rdzv-backend", "c10d", "--rdzv-endpoint", rdzv_endpoint, "--rdzv-id", rdzv_id]
    module_args = (["-q"] if is_quiet() else []) + child_args
    args = parse_args(["--nproc-per-node", str(nproc), "--nnodes", str(nnodes), *where, "--max-restarts", "0", "-m", "scratchlm", *module_args])
    try:
        run(args)
    except SignalException as error:
        # Ctrl-C (or a scheduler's SIGTERM): the launcher has passed it on to every process.
        if error.sigval == signal.SIGINT:
            info(f"[yellow]interrupted[/yellow]: {_resume_hint(out_dir)}")
            raise KeyboardInterrupt from None
        raise UserError(f"The job was stopped by {error.sigval.name}; {_resume_hint(out_dir)}") from None
    except ChildFailedError as error:
        failures = sorted(error.failures.items(), key=lambda item: item[1].timestamp)
        if any(failure.exitcode == 2 for _, failure in failures):
            # That process printed its own one-sentence error; the others were stopped after it.
            raise SystemExit(2) from None
        first_rank, first = failures[0]
        raise UserError(f"Training stopped: process {first_rank} of {world_size} {_how(first.exitcode)}, and the job was ended; {_resume_hint(out_dir)}") from None


def _resume_hint(out_dir: Path) -> str:
    last = list_checkpoints(out_dir)
    return f"the last checkpoint is {last[-1]}; continue with --resume." if last else "no checkpoint was written (train.checkpoint_every sets how often)."
