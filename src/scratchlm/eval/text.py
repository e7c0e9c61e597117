"""Loss, perplexity and bits per byte of a checkpoint on text, every token scored exactly once.

Each document is encoded on its own as ordinary text (special-token strings stay plain text, as
`data tokenize` does) and prefixed with <|endoftext|> when the tokenizer has it. That is what
pretraining sees: a shard holds `doc EOT doc EOT ...`, so every document after the first is
predicted from an end-of-text, its first token included. Without an end-of-text token the first
token of each document has no context and is not scored.

A document longer than the model's context is scored with sliding windows (the method of
Hugging Face's "perplexity of fixed-length models"): the first window scores all of its tokens;
with `stride` s below the context C, each next window starts s tokens later and scores only its
last s tokens, so every token is scored once with at least C − s tokens of left context. s = C
(the default) is disjoint chunks: the cheapest pass, with less context early in each chunk.

Windows of many documents share a batch (sorted by length, right-padded; padding and already-scored positions
get target -100, which the model scores 0 and the sums leave out). As in `perplexity.evaluate`,
predictions of special tokens (no bytes of text) are left out of both the token and the byte
counts; bits per byte = total nats / ln 2 / UTF-8 bytes of the scored tokens.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from scratchlm.data.documents import ReadStats, expand_paths, read_file
from scratchlm.data.loader import TokenLoader
from scratchlm.data.shards import FORMAT_NAME as SHARDS_FORMAT
from scratchlm.data.shards import (
    MANIFEST,
    check_tokenizer,
    read_documents_tokens,
    read_manifest,
)
from scratchlm.errors import UserError
from scratchlm.eval.perplexity import token_byte_lengths
from scratchlm.tokenizer.tokenizer import Tokenizer

DOCUMENT_SUFFIXES = (".txt", ".jsonl", ".jsonl.zst", ".jsonl.gz", ".parquet")
"""Files of a (non-shards) directory that are read as documents; others are skipped."""

_ENCODE_BATCH = 64
"""Documents encoded together (tiktoken threads)."""

_SORT_BATCHES = 16
"""Windows are gathered this many batches at a time and sorted by length before batching."""

Progress = Callable[[int], None]


def check_stride(stride: int | None, context: int) -> int:
    """The stride to use: `stride`, or the whole context when None; outside 1..context is a UserError."""
    if stride is None:
        return context
    if not 1 <= stride <= context:
        raise UserError(f"--stride is {stride}; set it between 1 and the model's context of {context} tokens (or leave it out for {context}).")
    return stride


def document_windows(ids: np.ndarray, context: int, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """The windows (x, y), each (windows, context) int64, that score `ids[1:]` exactly once.

    Window i starts at i·stride; y holds the targets it scores and -100 elsewhere (positions
    scored by the window before, and right padding past the document's end)."""
    targets = len(ids) - 1  # ids[1:] are predicted
    if targets <= context:
        count = 1
    else:
        count = 1 + -(-(targets - context) // stride)
    starts = np.arange(count, dtype=np.int64) * stride  # (W,)
    padded = np.concatenate([ids.astype(np.int64), np.zeros(context + 1, dtype=np.int64)])
    windows = padded[starts[:, None] + np.arange(context + 1)]  # (W, C+1)
    x, y = windows[:, :-1], windows[:, 1:].copy()
    position = np.arange(context)[None, :]  # (1, C)
    scored = position < (targets - starts)[:, None]  # inside the document
    scored[1:] &= position >= context - stride  # later windows: only their last `stride` positions
    y[~scored] = -100
    return x, y


class _Totals:
    """Sums of nats, bytes and scored tokens over batches, kept on the device (one sync at the end)."""

    def __init__(self, model: nn.Module, byte_lengths: torch.Tensor, autocast: AbstractContextManager | None) -> None:
        self.model, self.byte_lengths, self.autocast = model, byte_lengths, autocast
        device = byte_lengths.device
        self.nats = torch.zeros((), dtype=torch.float64, device=device)
        self.bytes = torch.zeros((), dtype=torch.long, device=device)
        self.tokens = torch.zeros((), dtype=torch.long, device=device)
        self.windows = 0

    def add(self, x: torch.Tensor, y: torch.Tensor) -> None:
        with self.autocast or nullcontext():
            _, nats = self.model(x, y, reduction="none")  # (B, T), 0 where y is -100
        lengths = self.byte_lengths[y.clamp(min=0)] * (y >= 0)  # (B, T)
        counted = lengths > 0
        self.nats += torch.where(counted, nats.double(), 0.0).sum()
        self.bytes += lengths.sum()
        self.tokens += counted.sum()
        self.windows += x.shape[0]

    def result(self, **extra: Any) -> dict[str, Any]:
        tokens, total_bytes, nats = int(self.tokens), int(self.bytes), float(self.nats)
        if tokens == 0:
            raise UserError("There is no text to score (every document is empty or a single token); give documents with text.")
        loss = nats / tokens
        return {"loss": loss, "perplexity": math.exp(loss), "bits_per_byte": nats / (math.log(2) * total_bytes), "tokens": tokens, "bytes": total_bytes, "windows": self.windows, **extra}


def _encoded(tokenizer: Tokenizer, texts: Iterable[str]) -> Iterator[list[int]]:
    """Each non-empty text's ids (ordinary text, as shards encode it), in order."""
    batch: list[str] = []
    for text in texts:
        if text:
            batch.append(text)
        if len(batch) == _ENCODE_BATCH:
            yield from tokenizer.encode_batch(batch)
            batch = []
    if batch:
        yield from tokenizer.encode_batch(batch)


@torch.inference_mode()
def evaluate_tokens(
    model: nn.Module,
    tokenizer: Tokenizer,
    documents: Iterable[list[int]],
    *,
    stride: int | None = None,
    batch_size: int = 8,
    autocast: AbstractContextManager | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """`evaluate_texts` for documents already encoded (ids without the end-of-text prefix)."""
    context = model.config.block_size
    stride = check_stride(stride, context)
    if batch_size < 1:
        raise UserError(f"--batch-size is {batch_size}; set it to 1 or more.")
    device = next(model.parameters()).device
    totals = _Totals(model, token_byte_lengths(tokenizer, max(model.config.vocab_size, tokenizer.vocab_size), device), autocast)
    prefix = [] if tokenizer.eot_id is None else [tokenizer.eot_id]
    pending_x: list[np.ndarray] = []
    pending_y: list[np.ndarray] = []
    pending = 0
    documents_seen = 0

    def score(x: np.ndarray, y: np.ndarray) -> None:
        used = y >= 0
        width = int(used.any(axis=0).nonzero()[0].max()) + 1  # drop columns that are padding in every row
        totals.add(torch.from_numpy(x[:, :width]).to(device), torch.from_numpy(y[:, :width]).to(device))
        if progress is not None:
            progress(int(used.sum()))

    def flush(final: bool) -> None:
        """Score every whole batch of the pending windows (and the rest too when `final`)."""
        nonlocal pending_x, pending_y, pending
        x_all, y_all = np.concatenate(pending_x), np.concatenate(pending_y)
        # Longest windows first, so a batch holds windows of like length and little padding.
        widths = context - np.argmax((y_all >= 0)[:, ::-1], axis=1)
        order = np.argsort(-widths, kind="stable")
        x_all, y_all = x_all[order], y_all[order]
        whole = len(x_all) if final else len(x_all) - len(x_all) % batch_size
        for first in range(0, whole, batch_size):
            score(x_all[first : first + batch_size], y_all[first : first + batch_size])
        pending_x, pending_y, pending = [x_all[whole:]], [y_all[whole:]], len(x_all) - whole

    model_was_training = model.training
    model.eval()
    try:
        for ids in documents:
            ids = np.asarray(prefix + list(ids), dtype=np.int64)
            if len(ids) < 2:
                continue
            documents_seen += 1
            x, y = document_windows(ids, context, stride)
            pending_x.append(x)
            pending_y.append(y)
            pending += len(x)
            if pending >= _SORT_BATCHES * batch_size:
                flush(final=False)
        if pending:
            flush(final=True)
    finally:
        model.train(model_was_training)
    return totals.result(documents=documents_seen, context=context, stride=stride)


def evaluate_texts(
    model: nn.Module,
    tokenizer: Tokenizer,
    texts: Iterable[str],
    *,
    stride: int | None = None,
    batch_size: int = 8,
    autocast: AbstractContextManager | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Loss (mean nats per scored token), perplexity, bits_per_byte, tokens and bytes (of the scored
    tokens), documents, windows, context and stride of `model` on `texts`, one document each.

    `stride` (default: the model's context) is how far each window moves on along a long document;
    `progress` is called with the number of tokens each batch scored."""
    return evaluate_tokens(model, tokenizer, _encoded(tokenizer, texts), stride=stride, batch_size=batch_size, autocast=autocast, progress=progress)


@torch.inference_mode()
def evaluate_shards(
    model: nn.Module,
    tokenizer: Tokenizer,
    directory: str | Path,
    split: str,
    *,
    batch_size: int = 8,
    autocast: AbstractContextManager | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """One split of a shards directory as training's evaluation sees it (`ShardEvaluator`): its
    non-overlapping windows of the model's context in order, each scored once."""
    context = model.config.block_size
    device = next(model.parameters()).device
    byte_lengths = token_byte_lengths(tokenizer, max(model.config.vocab_size, tokenizer.vocab_size), device)
    loader = TokenLoader(directory, split, batch_size, context, mode="sequential", device=device)
    totals = _Totals(model, byte_lengths, autocast)
    model_was_training = model.training
    model.eval()
    try:
        for x, y in loader.iter_epoch():
            totals.add(x, y)
            if progress is not None:
                progress(y.numel())
    finally:
        model.train(model_was_training)
    return totals.result(documents=None, context=context, stride=context)


def is_shards(path: str | Path) -> bool:
    """Whether `path` is a shards directory (its manifest.json says so)."""
    manifest = Path(path) / MANIFEST
    if not manifest.is_file():
        return False
    try:
        return json.loads(manifest.read_text(encoding="utf-8")).get("format") == SHARDS_FORMAT
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return False


def read_texts(path: str | Path) -> Iterator[str]:
    """The documents of a .txt (one document), .jsonl(.zst/.gz) or .parquet file, or of every such
    file in a directory (a documents directory from `data prepare` reads its kept documents only)."""
    path = Path(path)
    files = expand_paths(path)  # a missing path is a UserError here, before any reading
    if path.is_dir():
        prepared = (path / MANIFEST).is_file()
        files = [(f, name) for f, name in files if f.name.endswith(DOCUMENT_SUFFIXES) and (not prepared or f.name.startswith("documents_"))]
        if not files:
            raise UserError(f"{path} holds no documents ({', '.join(DOCUMENT_SUFFIXES)} files) and is no shards directory; point to one of those.")
    stats = ReadStats()
    for file, name in files:
        for document in read_file(file, name, stats):
            yield document.text


def evaluate_path(
    model: nn.Module,
    tokenizer: Tokenizer,
    path: str | Path,
    split: str | None = None,
    stride: int | None = None,
    batch_size: int = 8,
    *,
    autocast: AbstractContextManager | None = None,
    progress: Progress | None = None,
) -> dict[str, dict[str, Any]]:
    """Figures (as `evaluate_texts` gives them) by name: for a shards directory one entry per
    split (or only `split`), otherwise one entry named after `path`.

    Shards without `stride` are scored as training evaluates them (non-overlapping windows across
    document boundaries); with `stride`, their documents are scored one by one like text, so
    they give the same figures as the documents they were made from."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"No such file or directory: {path}; check --data.")
    context = model.config.block_size
    check_stride(stride, context)
    if batch_size < 1:
        raise UserError(f"--batch-size is {batch_size}; set it to 1 or more.")
    options = {"batch_size": batch_size, "autocast": autocast, "progress": progress}
    if path.is_dir() and is_shards(path):
        manifest = read_manifest(path)
        check_tokenizer(manifest, tokenizer)
        splits = list(manifest["splits"]) if split is None else [split]
        if split is not None and split not in manifest["splits"]:
            raise UserError(f"{path} has no {split!r} split (it has {', '.join(manifest['splits'])}); choose one of those with --split.")
        if stride is None:
            return {name: evaluate_shards(model, tokenizer, path, name, **options) for name in splits}
        return {name: evaluate_tokens(model, tokenizer, read_documents_tokens(path, name), stride=stride, **options) for name in splits}
    if split is not None:
        raise UserError(f"--split is for shards directories and {path} is not one; leave it out.")
    try:
        return {path.name: evaluate_texts(model, tokenizer, read_texts(path), stride=stride, **options)}
    except UserError as error:
        if str(error).startswith("There is no text to score"):
            raise UserError(f"{path} holds no text to score; point --data to a file or directory with text.") from None
        raise


def _format(results: dict[str, dict[str, Any]]) -> str:
    header = f"{'data':<20} {'loss':>8} {'ppl':>10} {'bpb':>7} {'tokens':>12} {'bytes':>14}"
    rows = [header]
    for name, r in results.items():
        rows.append(f"{name[:20]:<20} {r['loss']:>8.4f} {r['perplexity']:>10.3f} {r['bits_per_byte']:>7.4f} {r['tokens']:>12,} {r['bytes']:>14,}")
    return "\n".join(rows) + "\n"


def eval_text(
    checkpoint: Path,
    data: Path,
    stride: int | None = None,
    batch_size: int = 8,
    split: str | None = None,
    device: str = "auto",
    dtype: str = "float32",
    as_json: bool = False,
) -> dict[str, dict[str, Any]]:
    """The `eval` command: load a checkpoint, score `data` with a progress bar (tokens) and print
    a table (or JSON) of loss, perplexity and bits per byte; returns the figures."""
    from scratchlm.checkpoints import load_model
    from scratchlm.console import progress_bar
    from scratchlm.runtime import autocast, resolve_device, resolve_dtype

    if not Path(data).exists():
        raise UserError(f"No such file or directory: {data}; check --data.")
    torch_device = resolve_device(device, "--device")
    torch_dtype = resolve_dtype(dtype, torch_device, "--dtype")
    model, tokenizer, _ = load_model(checkpoint, torch_device, torch_dtype)
    with progress_bar("scoring", total=None, unit="tokens") as advance:
        results = evaluate_path(model, tokenizer, data, split, stride, batch_size, autocast=autocast(torch_device, torch_dtype), progress=advance)
    sys.stdout.write(json.dumps(results, indent=2) + "\n" if as_json else _format(results))
    return results
