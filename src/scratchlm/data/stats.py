"""`scratchlm data stats`: what a documents directory (from `data prepare`) or a shards directory holds.

The library functions return plain dicts (so tests can check the numbers); `render_*` turns them
into rich tables and `plot_*` into PNGs.
"""

from __future__ import annotations

import json
from array import array
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Group
from rich.table import Table

from scratchlm.data.documents import ReadStats, read_jsonl
from scratchlm.data.prepare import FORMAT_NAME as DOCUMENTS_FORMAT
from scratchlm.data.prepare import FORMAT_VERSION as DOCUMENTS_VERSION
from scratchlm.data.shards import FORMAT_NAME as SHARDS_FORMAT
from scratchlm.data.shards import read_manifest
from scratchlm.errors import UserError

MANIFEST = "manifest.json"
_ENCODE_BATCH = 256


def detect(directory: str | Path) -> str:
    """"documents" or "shards", from the directory's manifest; anything else is a UserError."""
    directory = Path(directory)
    what = f"{directory} must be a documents directory (from `scratchlm data prepare`) or a shards directory (with a {MANIFEST} of format {SHARDS_FORMAT!r})"
    if not directory.exists():
        raise UserError(f"{directory} does not exist; pass a documents directory (from `scratchlm data prepare`) or a shards directory.")
    if not directory.is_dir():
        raise UserError(f"{what}, but it is not a directory.")
    path = directory / MANIFEST
    if not path.is_file():
        raise UserError(f"{what}, but it has no {MANIFEST}.")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserError(f"{path} is not valid JSON ({error}); {what}.") from None
    found = manifest.get("format") if isinstance(manifest, dict) else None
    if found == DOCUMENTS_FORMAT:
        return "documents"
    if found == SHARDS_FORMAT:
        return "shards"
    raise UserError(f"{what}; its {MANIFEST} has format {found!r}.")


def _read_documents_manifest(directory: Path) -> dict[str, Any]:
    if detect(directory) != "documents":
        raise UserError(f"{directory} is a shards directory, not a documents directory (from `scratchlm data prepare`).")
    manifest = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
    if manifest.get("version") != DOCUMENTS_VERSION:
        raise UserError(f"{directory / MANIFEST} is documents format version {manifest.get('version')}; this scratchlm reads version {DOCUMENTS_VERSION}, so re-run `data prepare`.")
    return manifest


def length_buckets(max_length: int) -> list[int]:
    """Log-spaced bucket edges 1, 2, 5, 10, 20, 50, ... up past `max_length` (0 gets its own bucket)."""
    edges = [1]
    while edges[-1] <= max_length:
        last = edges[-1]
        edges.append(last * 5 // 2 if str(last).startswith("2") else last * 2)
    return edges


def _histogram(lengths: np.ndarray) -> list[dict[str, int]]:
    """Rows of {"low", "high", "count"} (low inclusive, high exclusive); empty buckets at the ends left out."""
    if lengths.size == 0:
        return []
    rows = []
    zeros = int((lengths == 0).sum())
    if zeros:
        rows.append({"low": 0, "high": 1, "count": zeros})
    edges = length_buckets(int(lengths.max()))
    counts, _ = np.histogram(lengths[lengths > 0], bins=edges)
    nonzero = np.flatnonzero(counts)
    if nonzero.size:
        for i in range(nonzero[0], nonzero[-1] + 1):
            rows.append({"low": edges[i], "high": edges[i + 1], "count": int(counts[i])})
    return rows


def documents_stats(directory: str | Path, tokenizer: Any = None) -> dict[str, Any]:
    """Counts over the kept documents of a `data prepare` directory, streamed file by file.

    `tokenizer` (a Tokenizer or a path to one) adds "tokens" and "bytes_per_token".
    """
    directory = Path(directory)
    manifest = _read_documents_manifest(directory)
    if tokenizer is not None and not hasattr(tokenizer, "encode_batch"):
        from scratchlm.tokenizer.tokenizer import load_tokenizer

        tokenizer = load_tokenizer(tokenizer)
    files = [directory / name for name in manifest.get("output", {}).get("files", [])]
    for path in files:
        if not path.is_file():
            raise UserError(f"{path} is listed in {directory / MANIFEST} but missing; restore it or re-run `data prepare`.")
    lengths = array("q")
    n_bytes = 0
    tokens = 0
    languages: Counter[str] = Counter()
    batch: list[str] = []

    def encode(texts: list[str]) -> int:
        return sum(len(ids) for ids in tokenizer.encode_batch(texts)) if texts else 0

    read = ReadStats()
    for document in read_jsonl(files, read):
        lengths.append(len(document.text))
        n_bytes += len(document.text.encode("utf-8"))
        if "language" in document.meta:
            languages[str(document.meta["language"])] += 1
        if tokenizer is not None:
            batch.append(document.text)
            if len(batch) >= _ENCODE_BATCH:
                tokens += encode(batch)
                batch = []
    if tokenizer is not None:
        tokens += encode(batch)
    if read.malformed_lines:
        raise UserError(f"{read.malformed_lines} malformed line(s) in the documents files (first: {read.malformed_examples[0]}); re-run `data prepare`.")

    values = np.frombuffer(lengths, dtype=np.int64) if len(lengths) else np.zeros(0, dtype=np.int64)
    count = int(values.size)
    steps = [
        {
            "name": step.get("name", "?"),
            "read": step.get("read", 0),
            "kept": step.get("kept", 0),
            "removed": step.get("removed", sum(step.get("removed_by_reason", {}).values())),
            "removed_by_reason": dict(step.get("removed_by_reason", {})),
        }
        for step in manifest.get("steps", [])
    ]
    result: dict[str, Any] = {
        "kind": "documents",
        "directory": str(directory),
        "files": len(files),
        "documents": count,
        "characters": int(values.sum()),
        "bytes": n_bytes,
        "mean_chars": float(values.mean()) if count else 0.0,
        "median_chars": float(np.median(values)) if count else 0.0,
        "min_chars": int(values.min()) if count else 0,
        "max_chars": int(values.max()) if count else 0,
        "languages": dict(languages.most_common()),
        "histogram": _histogram(values),
        "read": manifest.get("read", {}).get("documents"),
        "steps": steps,
        "removed": manifest.get("removed", sum(s["removed"] for s in steps)),
        "accounted": manifest.get("accounted"),
        "manifest_documents": manifest.get("output", {}).get("documents"),
    }
    if tokenizer is not None:
        result["tokens"] = tokens
        result["bytes_per_token"] = n_bytes / tokens if tokens else None
        result["tokenizer_hash"] = tokenizer.hash
    return result


def shards_stats(directory: str | Path) -> dict[str, Any]:
    """Per split tokens, documents, bytes, bytes per token and files, from a shards manifest."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    splits = {}
    for name, split in manifest["splits"].items():
        tokens = int(split.get("tokens", 0))
        n_bytes = int(split.get("bytes", 0))
        splits[name] = {
            "tokens": tokens,
            "documents": int(split.get("documents", 0)),
            "bytes": n_bytes,
            "bytes_per_token": n_bytes / tokens if tokens else None,
            "files": len(split.get("files", [])),
        }
    rule = manifest.get("split_rule", {})
    return {
        "kind": "shards",
        "directory": str(directory),
        "tokenizer_hash": manifest.get("tokenizer_hash"),
        "tokenizer_name": manifest.get("tokenizer_name"),
        "vocab_size": manifest.get("vocab_size"),
        "dtype": manifest.get("dtype"),
        "documents_in": manifest.get("documents_in"),
        "empty_documents": manifest.get("empty_documents"),
        "splits": splits,
        "split_rule": rule.get("rule"),
        "val_key": rule.get("val_key"),
        "val_groups": list(rule.get("val_groups", [])),
    }


# ---- rendering -------------------------------------------------------------------------------


def _ratio(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def render_documents(stats: dict[str, Any]) -> Group:
    """Rich tables: totals, languages, length histogram, and the prepare funnel."""
    overview = Table(title=f"documents in {stats['directory']}", show_header=False)
    overview.add_column(style="bold")
    overview.add_column(justify="right")
    overview.add_row("documents", f"{stats['documents']:,}")
    overview.add_row("characters", f"{stats['characters']:,}")
    overview.add_row("UTF-8 bytes", f"{stats['bytes']:,}")
    overview.add_row("mean length (chars)", f"{stats['mean_chars']:,.1f}")
    overview.add_row("median length (chars)", f"{stats['median_chars']:,.1f}")
    overview.add_row("min / max length (chars)", f"{stats['min_chars']:,} / {stats['max_chars']:,}")
    overview.add_row("files", f"{stats['files']:,}")
    if "tokens" in stats:
        overview.add_row("tokens", f"{stats['tokens']:,}")
        overview.add_row("bytes per token", _ratio(stats["bytes_per_token"]))
    parts: list[Any] = [overview]

    if stats["languages"]:
        languages = Table(title="languages (meta.language)")
        languages.add_column("language")
        languages.add_column("documents", justify="right")
        languages.add_column("share", justify="right")
        for language, count in stats["languages"].items():
            languages.add_row(language, f"{count:,}", f"{count / stats['documents']:.1%}")
        parts.append(languages)

    if stats["histogram"]:
        histogram = Table(title="length histogram (chars, log-spaced buckets)")
        histogram.add_column("length", justify="right")
        histogram.add_column("documents", justify="right")
        histogram.add_column("")
        peak = max(row["count"] for row in stats["histogram"])
        for row in stats["histogram"]:
            label = "0" if row["high"] == 1 else f"{row['low']:,}–{row['high'] - 1:,}"
            bar = "█" * max(1 if row["count"] else 0, round(30 * row["count"] / peak))
            histogram.add_row(label, f"{row['count']:,}", bar)
        parts.append(histogram)

    funnel = Table(title=f"prepare funnel: {stats['read'] if stats['read'] is not None else '?'} read → {stats['documents']:,} kept")
    funnel.add_column("step")
    funnel.add_column("read", justify="right")
    funnel.add_column("kept", justify="right")
    funnel.add_column("removed", justify="right")
    funnel.add_column("reasons")
    for step in stats["steps"]:
        reasons = ", ".join(f"{reason} {count:,}" for reason, count in step["removed_by_reason"].items()) or "—"
        funnel.add_row(step["name"], f"{step['read']:,}", f"{step['kept']:,}", f"{step['removed']:,}", reasons)
    parts.append(funnel)
    accounted = stats["accounted"]
    mark = "[green]yes[/green]" if accounted else ("[red]NO[/red]" if accounted is not None else "unknown")
    line = f"accounted (read = kept + removed): {mark}"
    if stats["manifest_documents"] is not None and stats["manifest_documents"] != stats["documents"]:
        line += f"  [red]manifest lists {stats['manifest_documents']:,} kept documents but the files hold {stats['documents']:,}[/red]"
    parts.append(line)
    return Group(*parts)


def render_shards(stats: dict[str, Any]) -> Group:
    """Rich tables: per-split counts, the tokenizer, and the split rule."""
    splits = Table(title=f"shards in {stats['directory']}")
    for column in ("split", "tokens", "documents", "bytes", "bytes/token", "files"):
        splits.add_column(column, justify="left" if column == "split" else "right")
    for name, split in stats["splits"].items():
        splits.add_row(name, f"{split['tokens']:,}", f"{split['documents']:,}", f"{split['bytes']:,}", _ratio(split["bytes_per_token"]), f"{split['files']:,}")
    info = Table(show_header=False)
    info.add_column(style="bold")
    info.add_column()
    info.add_row("tokenizer hash", str(stats["tokenizer_hash"]))
    if stats["tokenizer_name"]:
        info.add_row("tokenizer name", str(stats["tokenizer_name"]))
    info.add_row("vocab size", f"{stats['vocab_size']:,}" if isinstance(stats["vocab_size"], int) else str(stats["vocab_size"]))
    info.add_row("dtype", str(stats["dtype"]))
    info.add_row("split rule", str(stats["split_rule"]))
    info.add_row("split by", f"meta[{stats['val_key']!r}]" if stats["val_key"] else "document id")
    groups = stats["val_groups"]
    shown = ", ".join(map(str, groups[:10])) + (f", … ({len(groups):,} in all)" if len(groups) > 10 else "")
    info.add_row("val groups", shown or "—")
    return Group(splits, info)


# ---- plots -----------------------------------------------------------------------------------


def _pyplot(path: str | Path):
    if not Path(path).parent.is_dir():
        raise UserError(f"Cannot write the plot to {path}: {Path(path).parent} is not a directory; create it or choose another --plot path.")
    import matplotlib

    matplotlib.use("Agg")  # no display needed: the plot goes to a file
    import matplotlib.pyplot as plt

    return plt


def plot_documents(stats: dict[str, Any], path: str | Path) -> Path:
    """A histogram of document lengths in characters, log x (empty documents noted in the title)."""
    plt = _pyplot(path)
    rows = [row for row in stats["histogram"] if row["low"] > 0]
    zeros = sum(row["count"] for row in stats["histogram"] if row["low"] == 0)
    figure, axes = plt.subplots(figsize=(8, 4))
    if rows:
        axes.bar([r["low"] for r in rows], [r["count"] for r in rows], width=[r["high"] - r["low"] for r in rows], align="edge", edgecolor="white")
    axes.set_xscale("log")
    title = f"document lengths ({stats['documents']:,} documents)" + (f", {zeros:,} empty not shown" if zeros else "")
    axes.set(xlabel="length (characters)", ylabel="documents", title=title)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return Path(path)


def plot_shards(stats: dict[str, Any], path: str | Path) -> Path:
    """A bar chart of tokens per split."""
    plt = _pyplot(path)
    names = list(stats["splits"])
    figure, axes = plt.subplots(figsize=(6, 4))
    axes.bar(names, [stats["splits"][n]["tokens"] for n in names], color=[f"C{i}" for i in range(len(names))])
    axes.set(xlabel="split", ylabel="tokens", title="tokens per split")
    axes.grid(alpha=0.3, axis="y")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return Path(path)
