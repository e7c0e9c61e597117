"""Run reports: plots of a run's metrics.jsonl, report.md and a self-contained report.html,
and comparisons of several runs. `plot_losses` and `markdown_table` serve the speedrun's report."""

from __future__ import annotations

import base64
import html
import json
import os
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display needed: the plot goes to a file
import matplotlib.pyplot as plt  # noqa: E402

from scratchlm.errors import UserError  # noqa: E402


def plot_losses(metrics: list[dict[str, Any]], path: Path) -> Path:
    """Training and validation loss against tokens seen, and validation bits per byte."""
    train = [(r["tokens"], r["loss"]) for r in metrics if "loss" in r]
    val = [(r["tokens"], r["val_loss"], r["val_bpb"]) for r in metrics if "val_loss" in r]
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    if train:
        left.plot([t / 1e6 for t, _ in train], [loss for _, loss in train], label="train", linewidth=1)
    if val:
        left.plot([t / 1e6 for t, _, _ in val], [loss for _, loss, _ in val], "o-", label="validation")
        right.plot([t / 1e6 for t, _, _ in val], [bpb for _, _, bpb in val], "o-", color="C1")
    left.set(xlabel="tokens (millions)", ylabel="loss (nats per token)", title="loss")
    left.legend()
    left.grid(alpha=0.3)
    right.set(xlabel="tokens (millions)", ylabel="bits per byte", title="validation bits per byte")
    right.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def markdown_table(rows: list[tuple[str, str]], header: tuple[str, str] = ("", "")) -> str:
    lines = [f"| {header[0]} | {header[1]} |", "| --- | --- |"]
    lines += [f"| {key} | {value} |" for key, value in rows]
    return "\n".join(lines)


# ---- run reports: figures, plots, report.md and one self-contained report.html ----------------

PLOT_SIZE_IN = (8.0, 4.5)
"""Every report plot's size in inches; at PLOT_DPI that is 800 × 450 pixels."""
PLOT_DPI = 100
METRICS_FILE = "metrics.jsonl"
KEY_SETTINGS = (
    "model.n_layer", "model.n_head", "model.n_kv_head", "model.n_embd", "model.block_size", "model.vocab_size",
    "model.mlp", "model.position", "model.norm",
    "optim.lr", "optim.min_lr_ratio", "optim.warmup_steps", "optim.weight_decay", "optim.grad_clip",
    "train.batch_tokens", "train.micro_batch_size", "train.max_steps", "train.time_budget_s", "train.eval_every",
    "train.dtype", "train.compile", "train.seed", "train.init_from",
    "data.shards", "data.tokenizer", "data.train", "data.val", "data.batch_size", "data.max_length", "data.beta",
    "lora.rank", "lora.alpha",
    "parallel.backend", "parallel.dp", "parallel.fsdp", "parallel.tp",
)
"""The run config's settings a report shows, those present in the run's meta.json."""


def read_run_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """A run directory's metrics.jsonl, with one sentence for each way it can be missing or broken."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir} is not a directory; give a run directory (a run's train.out_dir).")
    path = run_dir / METRICS_FILE
    if not path.is_file():
        raise UserError(f"{run_dir} has no {METRICS_FILE}; give a run directory (a run's train.out_dir), which training writes it into.")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{path} is not UTF-8 text; the file is corrupt.") from None
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise UserError(f"{path} line {number} is not valid JSON ({error.msg}); the file is corrupt.") from None
        if not isinstance(record, dict) or not isinstance(record.get("step"), int):
            raise UserError(f"{path} line {number} is not a metrics record (a JSON object with a step number); the file is corrupt.")
        records.append(record)
    if not records:
        raise UserError(f"{path} is empty: the run has not logged a step yet.")
    return records


def _series(metrics: list[dict[str, Any]], x: str, y: str) -> tuple[list[float], list[float]]:
    points = [(r[x], r[y]) for r in metrics if isinstance(r.get(x), (int, float)) and isinstance(r.get(y), (int, float))]
    return [p[0] for p in points], [p[1] for p in points]


def _figure(columns: int = 1) -> tuple[Any, list[Any]]:
    figure, axes = plt.subplots(1, columns, figsize=PLOT_SIZE_IN)
    return figure, list(axes) if columns > 1 else [axes]


def _save(figure: Any, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=PLOT_DPI)  # no bbox_inches="tight": every PNG has the same pixel size
    plt.close(figure)
    return path


def _millions(values: list[float]) -> list[float]:
    return [v / 1e6 for v in values]


def plots(metrics: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    """PNGs of a run into out_dir: losses.png (train and validation loss against tokens),
    learning_rate.png, throughput.png (tokens/s and MFU) and grad_norm.png against step. A plot
    whose series are all absent is not drawn."""
    out_dir = _output_dir(out_dir)
    written = []
    train, val = _series(metrics, "tokens", "loss"), _series(metrics, "tokens", "val_loss")
    if train[0] or val[0]:
        figure, (ax,) = _figure()
        if train[0]:
            ax.plot(_millions(train[0]), train[1], label="train", linewidth=1)
        if val[0]:
            ax.plot(_millions(val[0]), val[1], "o-", label="validation")
        ax.set(xlabel="tokens (millions)", ylabel="loss (nats per token)", title="loss")
        ax.legend()
        ax.grid(alpha=0.3)
        written.append(_save(figure, out_dir / "losses.png"))
    lr = _series(metrics, "step", "lr")
    if lr[0]:
        figure, (ax,) = _figure()
        ax.plot(*lr, linewidth=1)
        ax.set(xlabel="step", ylabel="learning rate", title="learning rate")
        ax.grid(alpha=0.3)
        written.append(_save(figure, out_dir / "learning_rate.png"))
    speed, mfu = _series(metrics, "step", "tokens_per_s"), _series(metrics, "step", "mfu")
    panels = [(s, label) for s, label in ((speed, "tokens/s"), (mfu, "MFU")) if s[0]]
    if panels:
        figure, axes = _figure(len(panels))
        for ax, ((steps, values), label) in zip(axes, panels):
            ax.plot(steps, [v * 100 for v in values] if label == "MFU" else values, linewidth=1)
            ax.set(xlabel="step", ylabel="MFU (%)" if label == "MFU" else label, title=label)
            ax.grid(alpha=0.3)
        written.append(_save(figure, out_dir / "throughput.png"))
    grad = _series(metrics, "step", "grad_norm")
    if grad[0]:
        figure, (ax,) = _figure()
        ax.plot(*grad, linewidth=1)
        ax.set(xlabel="step", ylabel="gradient norm", title="gradient norm (before clipping)")
        ax.grid(alpha=0.3)
        written.append(_save(figure, out_dir / "grad_norm.png"))
    return written


def final_figures(metrics: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """The run's figures as (name, value) rows: only those its metrics hold."""
    train = [r for r in metrics if "loss" in r]
    evals = [r for r in metrics if any(k.startswith("val_") for k in r)]
    rows = [("steps", f"{max(r['step'] for r in metrics):,}")]
    tokens = [r["tokens"] for r in metrics if isinstance(r.get("tokens"), (int, float))]
    if tokens:
        rows.append(("tokens", f"{max(tokens):,}"))
    if train:
        rows.append(("final train loss", f"{train[-1]['loss']:.4f}"))
    val_losses = [r["val_loss"] for r in evals if isinstance(r.get("val_loss"), (int, float))]
    if val_losses:
        rows += [("best validation loss", f"{min(val_losses):.4f}"), ("final validation loss", f"{val_losses[-1]:.4f}")]
    if evals:
        names = {"val_perplexity": "validation perplexity", "val_bpb": "validation bits per byte"}
        last = {k: v for r in evals for k, v in r.items() if k.startswith("val_") and k != "val_loss" and isinstance(v, (int, float)) and not isinstance(v, bool)}
        for key, value in last.items():
            name = names.get(key, "validation " + key.removeprefix("val_").replace("_", " "))
            rows.append((name, f"{value:.2f}" if key == "val_perplexity" else f"{value:.4f}"))
    # The first window holds compilation and warm-up; with more than one it is left out of the mean.
    timed = [r for r in metrics if isinstance(r.get("tokens_per_s"), (int, float))]
    timed = timed[1:] if len(timed) > 1 else timed
    if timed:
        rows.append(("mean tokens/s", f"{sum(r['tokens_per_s'] for r in timed) / len(timed):,.0f}"))
        mfus = [r["mfu"] for r in timed if isinstance(r.get("mfu"), (int, float))]
        if mfus:
            rows.append(("mean MFU", f"{sum(mfus) / len(mfus):.1%}"))
    for key, name in (("elapsed_s", "wall time"), ("train_s", "training time")):
        seconds = [r[key] for r in metrics if isinstance(r.get(key), (int, float))]
        if seconds:
            rows.append((name, _duration(max(seconds))))
    return rows


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    minutes, s = divmod(round(seconds), 60)
    hours, m = divmod(minutes, 60)
    return f"{hours} h {m:02d} min {s:02d} s" if hours else f"{m} min {s:02d} s"


def run_settings(run_dir: Path) -> list[tuple[str, str]]:
    """Key settings of the run config in the newest checkpoint's meta.json; [] without a checkpoint."""
    from scratchlm.checkpoints import list_checkpoints

    checkpoints = list_checkpoints(run_dir)
    if not checkpoints:
        return []
    path = checkpoints[-1] / "meta.json"
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UserError(f"{path} is not valid JSON ({error}); the file is corrupt.") from None
    config = meta.get("run_config") if isinstance(meta, dict) else None
    if not isinstance(config, dict):
        return []
    rows = [("checkpoint", checkpoints[-1].name)]
    for key in KEY_SETTINGS:
        value: Any = config
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if value is not None and value != "" and not isinstance(value, (dict, list)):
            rows.append((key, str(value)))
    return rows


def _format_extra(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def _output_dir(out_dir: Path) -> Path:
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"{out_dir} is a file, not a directory; choose another output directory.")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise UserError(f"{out_dir} cannot be created because a parent of it is a file; choose another output directory.") from None
    return out_dir


# A report is a list of blocks, rendered both as Markdown and as HTML:
# ("h1" | "h2" | "p", text), ("table", (header, rows)) or ("image", (title, path)).
Block = tuple[str, Any]


def _markdown(blocks: list[Block], out_dir: Path) -> str:
    lines: list[str] = []
    for kind, content in blocks:
        if kind == "h1":
            lines += [f"# {content}", ""]
        elif kind == "h2":
            lines += [f"## {content}", ""]
        elif kind == "p":
            lines += [content, ""]
        elif kind == "table":
            header, rows = content
            cell = lambda text: str(text).replace("|", "\\|")  # noqa: E731
            lines += ["| " + " | ".join(map(cell, header)) + " |", "|" + " --- |" * len(header)]
            lines += ["| " + " | ".join(map(cell, row)) + " |" for row in rows]
            lines.append("")
        elif kind == "image":
            title, path = content
            lines += [f"![{title}]({Path(os.path.relpath(path, out_dir)).as_posix()})", ""]
    return "\n".join(lines)


_CSS = (
    "body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#222}"
    "table{border-collapse:collapse;margin:1rem 0}th,td{border:1px solid #ccc;padding:.3rem .7rem;text-align:left}"
    "th{background:#f3f3f3}td:not(:first-child){font-variant-numeric:tabular-nums}img{max-width:100%;display:block;margin:1rem 0}"
)


def _html(blocks: list[Block]) -> str:
    title = next((content for kind, content in blocks if kind == "h1"), "scratchlm report")
    parts = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">', f"<title>{html.escape(title)}</title>", f"<style>{_CSS}</style>", "</head>", "<body>"]
    for kind, content in blocks:
        if kind in ("h1", "h2", "p"):
            tag = kind
            parts.append(f"<{tag}>{html.escape(content)}</{tag}>")
        elif kind == "table":
            header, rows = content
            parts.append("<table>")
            parts.append("<tr>" + "".join(f"<th>{html.escape(str(h))}</th>" for h in header) + "</tr>")
            parts += ["<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows]
            parts.append("</table>")
        elif kind == "image":
            image_title, path = content
            data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
            parts.append(f'<img alt="{html.escape(image_title, quote=True)}" src="data:image/png;base64,{data}">')
    parts += ["</body>", "</html>", ""]
    return "\n".join(parts)


def _write(blocks: list[Block], out_dir: Path) -> Path:
    """report.md (images linked beside it) and report.html (images inside it) in out_dir."""
    (out_dir / "report.html").write_text(_html(blocks), encoding="utf-8")
    path = out_dir / "report.md"
    path.write_text(_markdown(blocks, out_dir), encoding="utf-8")
    return path


_PLOT_TITLES = {"losses.png": "loss curves", "learning_rate.png": "learning rate", "throughput.png": "throughput", "grad_norm.png": "gradient norm"}


def write_report(run_dir: Path, extra: dict[str, Any] | None = None, out_dir: Path | None = None) -> Path:
    """report.md and a self-contained report.html for one run, with its plots, into out_dir
    (default: the run directory). `extra` adds (name: value) rows to the figures table.
    Returns the path of report.md; report.html lies beside it."""
    run_dir = Path(run_dir)
    metrics = read_run_metrics(run_dir)
    settings = run_settings(run_dir)
    out = _output_dir(out_dir if out_dir is not None else run_dir)
    figures = final_figures(metrics) + [(str(k), _format_extra(v)) for k, v in (extra or {}).items()]
    blocks: list[Block] = [("h1", f"Run report: {run_dir.resolve().name}"), ("p", f"Run directory: {run_dir}"), ("h2", "Figures"), ("table", (("", "value"), figures))]
    if settings:
        blocks += [("h2", "Settings"), ("p", f"From {settings[0][1]}/meta.json, the newest checkpoint."), ("table", (("setting", "value"), settings[1:]))]
    pngs = plots(metrics, out)
    if pngs:
        blocks.append(("h2", "Plots"))
        blocks += [("image", (_PLOT_TITLES.get(p.name, p.stem), p)) for p in pngs]
    return _write(blocks, out)


def run_labels(run_dirs: list[Path]) -> list[str]:
    """Names for runs in a legend: each directory's last path parts, as few as tell them apart."""
    parts = [Path(d).resolve().parts for d in run_dirs]
    for depth in range(1, max(len(p) for p in parts) + 1):
        labels = ["/".join(p[-depth:]) for p in parts]
        if len(set(labels)) == len(labels):
            return labels
    return [str(d) for d in run_dirs]


def compare_runs(run_dirs: list[Path], out_dir: Path) -> Path:
    """Overlay runs: compare_train_loss.png and compare_val_loss.png (loss against tokens, one
    line per run, the legend naming its directory) and their figures side by side, in out_dir's
    report.md and report.html. Returns the path of report.md."""
    run_dirs = [Path(d) for d in run_dirs]
    if not run_dirs:
        raise UserError("No run directory was given; name at least one run to report on.")
    runs = [read_run_metrics(d) for d in run_dirs]
    out = _output_dir(out_dir)
    labels = run_labels(run_dirs)
    pngs = []
    for key, name, title in (("loss", "compare_train_loss.png", "train loss"), ("val_loss", "compare_val_loss.png", "validation loss")):
        series = [(label, _series(metrics, "tokens", key)) for label, metrics in zip(labels, runs)]
        if not any(points[0] for _, points in series):
            continue
        figure, (ax,) = _figure()
        for label, (tokens, values) in series:
            if tokens:
                ax.plot(_millions(tokens), values, "o-" if key == "val_loss" else "-", label=label, linewidth=1)
        ax.set(xlabel="tokens (millions)", ylabel="loss (nats per token)", title=title)
        ax.legend()
        ax.grid(alpha=0.3)
        pngs.append(_save(figure, out / name))
    figures = [dict(final_figures(metrics)) for metrics in runs]
    names = list(dict.fromkeys(name for f in figures for name in f))
    rows = [(name, *(f.get(name, "–") for f in figures)) for name in names]
    blocks: list[Block] = [
        ("h1", f"Comparison of {len(run_dirs)} runs"),
        ("p", "Runs: " + ", ".join(f"{label} ({d})" for label, d in zip(labels, run_dirs))),
        ("h2", "Figures"),
        ("table", (("", *labels), rows)),
    ]
    if pngs:
        blocks.append(("h2", "Plots"))
        blocks += [("image", (p.stem.removeprefix("compare_").replace("_", " "), p)) for p in pngs]
    return _write(blocks, out)
