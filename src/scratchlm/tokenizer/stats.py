"""`tokenizer stats`: what a vocabulary holds and how well it compresses a given text."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from rich.table import Table

from scratchlm.errors import UserError
from scratchlm.tokenizer.tokenizer import Tokenizer

# Texts are encoded in batches of this many documents, spread over threads by tiktoken.
BATCH_DOCUMENTS = 64


def describe_tokenizer(tokenizer: Tokenizer) -> Table:
    """A table of the vocabulary: size, pattern, special tokens, token lengths, hash."""
    lengths = [len(token) for token in tokenizer.ranks[256:]]
    longest = sorted(range(256, len(tokenizer.ranks)), key=lambda i: (-len(tokenizer.ranks[i]), i))[:5]
    table = Table(title=f"tokenizer {tokenizer.name}", show_header=False)
    table.add_row("vocabulary size", f"{tokenizer.vocab_size:,}")
    table.add_row("byte tokens + merges", f"256 + {len(tokenizer.ranks) - 256:,}")
    table.add_row("special tokens", ", ".join(f"{s} ({i})" for s, i in tokenizer.special_tokens.items()) or "none")
    table.add_row("pre-split pattern", tokenizer.pattern_name)
    table.add_row("mean merged token length", f"{sum(lengths) / len(lengths):.2f} bytes" if lengths else "no merges")
    table.add_row("longest tokens", ", ".join(repr(tokenizer.ranks[i].decode("utf-8", errors="replace")) for i in longest))
    table.add_row("hash", tokenizer.hash[:16])
    return table


def _texts(inputs: list[Path], corpus: str | None) -> Iterator[str]:
    from scratchlm.data.corpus import corpus_documents
    from scratchlm.data.documents import ReadStats, read_documents

    if corpus is not None:
        yield from (doc.text for doc in corpus_documents(corpus))
    if inputs:
        yield from (doc.text for doc in read_documents(inputs, ReadStats()))


def compression(tokenizer: Tokenizer, texts: Iterator[str]) -> dict[str, float]:
    """Bytes, characters and tokens of the texts, and which share of the vocabulary they use."""
    used: Counter[int] = Counter()
    n_bytes = n_chars = n_tokens = 0
    batch: list[str] = []

    def flush() -> None:
        nonlocal n_tokens
        for ids in tokenizer.encode_batch(batch):
            used.update(ids)
            n_tokens += len(ids)
        batch.clear()

    for text in texts:
        n_bytes += len(text.encode("utf-8"))
        n_chars += len(text)
        batch.append(text)
        if len(batch) >= BATCH_DOCUMENTS:
            flush()
    flush()
    if n_tokens == 0:
        raise UserError("The input holds no text to measure; check the --input paths.")
    return {
        "bytes": n_bytes,
        "characters": n_chars,
        "tokens": n_tokens,
        "bytes_per_token": n_bytes / n_tokens,
        "characters_per_token": n_chars / n_tokens,
        "vocabulary_used": len(used) / tokenizer.vocab_size,
    }


def measure(tokenizer: Tokenizer, inputs: list[Path], corpus: str | None) -> Table:
    figures = compression(tokenizer, _texts(inputs, corpus))
    table = Table(title="compression", show_header=False)
    table.add_row("bytes", f"{figures['bytes']:,}")
    table.add_row("tokens", f"{figures['tokens']:,}")
    table.add_row("bytes per token", f"{figures['bytes_per_token']:.3f}")
    table.add_row("characters per token", f"{figures['characters_per_token']:.3f}")
    table.add_row("vocabulary used", f"{figures['vocabulary_used']:.1%}")
    return table
