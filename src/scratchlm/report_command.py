"""The `scratchlm report` command: parses its arguments, then calls `scratchlm.report`.

Kept apart from cli.py; register it there with `app.command("report")(report_command)`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from scratchlm.errors import UserError

DEFAULT_COMPARE_DIR = Path("runs/compare")


def report_command(
    runs: Annotated[list[Path], typer.Argument(help="Run directories (a run's train.out_dir, which holds metrics.jsonl); one for a report, several for a comparison.", show_default=False)],
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Directory to write report.md, report.html and the plots into. \\[default: the run directory for one run, runs/compare for several]", show_default=False)] = None,
) -> None:
    """Write a run's report: report.md with its plots beside it, and report.html, one self-contained file to share.

    One run: its figures (steps, tokens, final train loss, best and final validation loss, perplexity, bits per byte, mean tokens/s and MFU, wall time), the key settings from its newest checkpoint, and plots of loss against tokens and of learning rate, throughput and gradient norm against step. Several runs: their train and validation losses overlaid, one plot each, and their figures side by side.

    Examples:

      scratchlm report runs/speedrun/train    # writes runs/speedrun/train/report.md and report.html

      scratchlm report runs/train --out reports/run1

      scratchlm report runs/small runs/large --out runs/compare-size
    """
    from scratchlm.report import compare_runs, write_report

    if not runs:
        raise UserError("No run directory was given; name at least one run to report on.")
    if len(runs) == 1:
        path = write_report(runs[0], out_dir=out)
    else:
        path = compare_runs(runs, out if out is not None else DEFAULT_COMPARE_DIR)
    # On stdout, one path a line, for scripts: report.md, then report.html.
    typer.echo(str(path))
    typer.echo(str(path.with_name("report.html")))
