"""The `tokenizer train` stage: documents or text files in, a saved tokenizer directory out."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from scratchlm.console import info, progress_bar
from scratchlm.errors import UserError
from scratchlm.tokenizer.bpe import (
    PATTERNS,
    count_chunks,
    learn_merges,
    merges_to_ranks,
)
from scratchlm.tokenizer.tokenizer import EOT, Tokenizer


@dataclass
class TokenizerTrainConfig:
    """Settings for training a byte-level BPE tokenizer."""

    vocab_size: int = 8192
    """Total vocabulary size: 256 byte tokens + learned merges + special tokens."""
    pattern: str = "gpt2"
    """Pre-split regex by name: `gpt2` (GPT-2) or `gpt4` (tiktoken's cl100k_base: digit groups of at most 3, case-insensitive contractions)."""
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


def train_from_texts(texts: Iterable[str], config: TokenizerTrainConfig, name: str = "scratchlm") -> Tokenizer:
    """Train a tokenizer on an iterable of texts (streamed, never held in memory at once)."""
    pattern = PATTERNS[config.pattern]
    started = time.perf_counter()
    with progress_bar("pre-splitting", total=config.max_chars or None) as advance:
        counts = count_chunks(_limit(texts, config.max_chars), pattern, config.special_tokens, config.workers or None, on_chars=advance)
    if not counts:
        raise UserError("The input holds no text to train on; check the --input paths (empty files are skipped).")
    chunks = {chunk.encode("utf-8"): n for chunk, n in counts.items()}
    num_merges = config.vocab_size - 256 - len(config.special_tokens)
    with progress_bar("merging", total=num_merges) as advance:
        merges = learn_merges(chunks, num_merges, on_merge=advance)
    if len(merges) < num_merges:
        info(f"[yellow]The text allows only {len(merges)} merges (every chunk is already one token); the vocabulary has {256 + len(merges) + len(config.special_tokens)} tokens, not {config.vocab_size}.")
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


def train(inputs: list[str | Path], output: str | Path, config: TokenizerTrainConfig | None = None, corpus: str | None = None) -> Tokenizer:
    """Train on files, directories, JSONL/Parquet and/or a named corpus, and save to `output`."""
    from scratchlm.data.corpus import corpus_documents
    from scratchlm.data.documents import ReadStats, read_documents

    config = config or TokenizerTrainConfig()
    if not inputs and corpus is None:
        raise UserError("Nothing to train on; pass --input PATH (files, directories, JSONL, Parquet) or --corpus shakespeare.")
    stats = ReadStats()
    # Readers check every path when called, so a typo fails before any work starts.
    sources = [corpus_documents(corpus)] if corpus is not None else []
    if inputs:
        sources.append(read_documents([Path(p) for p in inputs], stats, text_field=config.text_field))
    texts = (doc.text for source in sources for doc in source)

    tokenizer = train_from_texts(texts, config, name=Path(output).name)
    if inputs and (stats.malformed_lines or stats.invalid_utf8_documents or stats.binary_files or stats.empty_files):
        info(stats.summary())
    tokenizer.save(output)
    info(f"saved tokenizer ({tokenizer.vocab_size} tokens, hash {tokenizer.hash[:12]}) to {output}")
    return tokenizer
