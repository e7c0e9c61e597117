"""The `tokenizer train` stage: documents or text files in, a saved tokenizer directory out."""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from scratchlm.console import info, progress_bar
from scratchlm.errors import UserError
from scratchlm.paths import check_output_location
from scratchlm.tokenizer.bpe import (
    PATTERNS,
    count_chunks,
    cut_chunk,
    learn_merges,
    merges_to_ranks,
    utf8_size,
)
from scratchlm.tokenizer.tokenizer import (
    CONFIG_FILE,
    EOT,
    HF_FILE,
    RANKS_FILE,
    Tokenizer,
)

TOKENIZER_FILES = frozenset({RANKS_FILE, CONFIG_FILE, HF_FILE})


class _NoTextError(UserError):
    """No text to train on, raised where the caller may know why (what its readers skipped)."""


@dataclass
class TokenizerTrainConfig:
    """Settings for training a byte-level BPE tokenizer."""

    vocab_size: int = 8192
    """Total vocabulary size: 256 byte tokens + learned merges + special tokens."""
    pattern: str = "gpt2"
    """Pre-split regex by name: `gpt2` (GPT-2) or `gpt4` (tiktoken's cl100k_base: digit groups of at most 3, case-insensitive contractions)."""
    max_token_bytes: int = 128
    """Longest token to learn, in bytes (0 = no limit; GPT-2's longest is 128). Longer pre-split chunks, such as a line without spaces or a base64 blob, are cut into pieces of at most this size (between UTF-8 characters) for training only; encoding is unaffected."""
    special_tokens: list[str] = field(default_factory=lambda: [EOT])
    """Special tokens, given ids after the merges in this order; `<|endoftext|>` separates documents."""
    workers: int = 0
    """Processes that pre-split and count the text; 0 means one per CPU core."""
    max_chars: int = 0
    """Train on at most this many characters of input (0 = all of it)."""
    text_field: str = "text"
    """The field that holds the text in JSONL and Parquet inputs."""

    def __post_init__(self) -> None:
        if self.pattern not in PATTERNS:
            raise UserError(f"Unknown pattern {self.pattern!r}; choose one of: {', '.join(PATTERNS)}.")
        if len(set(self.special_tokens)) != len(self.special_tokens):
            raise UserError("A special token is listed twice; list each special token once.")
        minimum = 256 + len(self.special_tokens)
        if self.vocab_size < minimum + 1:
            raise UserError(f"vocab_size {self.vocab_size} leaves no room for merges; it must exceed 256 byte tokens + {len(self.special_tokens)} special tokens = {minimum}.")
        if self.workers < 0 or self.max_chars < 0:
            raise UserError("workers and max_chars must be 0 or more.")
        if self.max_token_bytes < 0 or 0 < self.max_token_bytes < 4:
            raise UserError(f"max_token_bytes is {self.max_token_bytes}; set it to 0 (no limit) or at least 4, the longest UTF-8 character.")


def train_from_texts(texts: Iterable[str], config: TokenizerTrainConfig, name: str = "scratchlm", total_bytes: int | None = None) -> Tokenizer:
    """Train a tokenizer on an iterable of texts (streamed, never held in memory at once).

    `total_bytes`, the texts' UTF-8 size if the caller can tell (from file sizes), sizes the
    progress bar; a list or tuple of texts is measured here instead.
    """
    pattern = PATTERNS[config.pattern]
    started = time.perf_counter()
    if isinstance(texts, (list, tuple)):
        total_bytes = sum(map(utf8_size, _limit(texts, config.max_chars)))
    read = 0
    with progress_bar("pre-splitting", total=total_bytes, unit="bytes") as bar:

        def advance(n: int) -> None:
            nonlocal read
            read += n
            bar(n)

        counts = count_chunks(_limit(texts, config.max_chars), pattern, config.special_tokens, config.workers or None, on_bytes=advance)
        # File sizes only estimate the text (binary files are skipped, max_chars stops early).
        bar.update(total=read)
    if not counts:
        raise _NoTextError("The input holds no text to train on; check the --input paths.")
    chunks: Counter[bytes] = Counter()
    for chunk, n in counts.items():
        for piece in cut_chunk(chunk.encode("utf-8"), config.max_token_bytes):
            chunks[piece] += n
    num_merges = config.vocab_size - 256 - len(config.special_tokens)
    with progress_bar("merging", total=num_merges) as advance_merges:
        merges = learn_merges(chunks, num_merges, on_merge=advance_merges)
    if len(merges) < num_merges:
        info(f"[yellow]The text allows only {len(merges)} merges (every chunk, cut at max_token_bytes, is already one token); the vocabulary has {256 + len(merges) + len(config.special_tokens)} tokens, not {config.vocab_size}.")
    ranks = tuple(merges_to_ranks(merges))
    specials = {token: len(ranks) + i for i, token in enumerate(config.special_tokens)}
    info(f"trained {len(ranks) + len(specials)} tokens from {sum(counts.values()):,} chunks ({len(counts):,} unique) in {time.perf_counter() - started:.1f} s")
    return Tokenizer(ranks, pattern, specials, name=name)


def _limit(texts: Iterable[str], max_chars: int) -> Iterator[str]:
    if not max_chars:
        yield from texts
        return
    left = max_chars
    for text in texts:
        if left <= 0:
            return
        yield text[:left]
        left -= len(text)


def train(
    inputs: list[str | Path],
    output: str | Path,
    config: TokenizerTrainConfig | None = None,
    corpus: str | None = None,
    overwrite: bool = False,
) -> Tokenizer:
    """Train on files, directories, JSONL/Parquet and/or a named corpus, and save to `output`.

    A tokenizer already in `output` is replaced only with `overwrite`; a directory holding
    anything else is never replaced.
    """
    from scratchlm.data.corpus import corpus_documents
    from scratchlm.data.documents import ReadStats, read_documents

    config = config or TokenizerTrainConfig()
    output = Path(output)
    if not inputs and corpus is None:
        raise UserError("Nothing to train on; pass --input PATH (files, directories, JSONL, Parquet) or --corpus shakespeare.")
    # Before reading or fetching anything: training can take an hour, a bad --output must not.
    check_output_location(output, "--output")
    _check_replaceable(output, overwrite)
    stats = ReadStats()
    paths = [Path(p) for p in inputs]
    # Readers check every path when called, so a typo fails before any work starts.
    sources = [corpus_documents(corpus)] if corpus is not None else []
    if inputs:
        sources.append(read_documents(paths, stats, text_field=config.text_field))
    texts = (doc.text for source in sources for doc in source)

    try:
        tokenizer = train_from_texts(texts, config, name=output.name, total_bytes=None if corpus is not None else _text_files_size(paths))
    except _NoTextError:
        skipped = stats.skipped()
        if not skipped:
            raise
        raise UserError(f"The input holds no text to train on: the readers skipped {skipped}; fix or replace those files, or check the --input paths.") from None
    if inputs and (stats.malformed_lines or stats.invalid_utf8_documents or stats.binary_files or stats.empty_files):
        info(stats.summary())
    tokenizer.save(output)
    info(f"saved tokenizer ({tokenizer.vocab_size} tokens, hash {tokenizer.hash[:12]}) to {output}")
    return tokenizer


def _check_replaceable(output: Path, overwrite: bool) -> None:
    entries = set(os.listdir(output)) if output.is_dir() else set()
    if not entries:
        return
    if not entries <= TOKENIZER_FILES:
        raise UserError(f"--output {output} holds files that are not a tokenizer's; choose a new or empty directory.")
    if not overwrite:
        raise UserError(f"--output {output} already holds a tokenizer; pass --overwrite to replace it, or choose another path.")


def _text_files_size(paths: list[Path]) -> int | None:
    """The UTF-8 size of the text in `paths` when all are plain text files, else None (the size
    of a JSONL or Parquet file says little about the text in it)."""
    from scratchlm.data.documents import _JSONL_SUFFIXES, expand_paths

    files = [path for path, _ in expand_paths(paths)]
    if any(path.name.endswith((*_JSONL_SUFFIXES, ".parquet")) for path in files):
        return None
    return sum(path.stat().st_size for path in files)
