"""The run report: loss curves as a PNG and a Markdown summary of every stage."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display needed: the plot goes to a file
import matplotlib.pyplot as plt  # noqa: E402


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
