"""Benchmark contamination: which benchmark items share word n-grams with the training data.

One implementation with the data pipeline's decontamination step (`data/decontaminate.py`): the
benchmark's items are indexed as GPT-3 did (word 13-grams after normalization; an item shorter
than 13 words as its whole word sequence), and every training document is looked up in the index.
The report says, per benchmark item, how many training documents share an n-gram with it and
which (the first few), and overall how many items are contaminated: those are the items whose
scores cannot be trusted.

Training data is documents (text, JSONL, Parquet files or directories, as `data prepare` reads
them) or a shards directory, whose train split's documents (what a model trains on) are decoded
with the tokenizer beside it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from scratchlm.console import progress_bar
from scratchlm.data.decontaminate import NGramIndex
from scratchlm.data.documents import ReadStats, read_documents
from scratchlm.errors import UserError

EXAMPLES_PER_ITEM = 3
"""Training documents named per contaminated item (the count is always complete)."""


def _shard_texts(directory: Path) -> Iterator[tuple[str, str]]:
    from scratchlm.data.shards import (
        check_tokenizer,
        read_documents_tokens,
        read_manifest,
    )
    from scratchlm.tokenizer.tokenizer import load_tokenizer

    manifest = read_manifest(directory)
    beside = directory.parent / "tokenizer" if not (directory / "tokenizer").is_dir() else directory / "tokenizer"
    if not beside.is_dir():
        raise UserError(f"{directory} holds shards but no tokenizer beside them ({beside}); pass the documents instead, or put the tokenizer there.")
    tokenizer = load_tokenizer(beside)
    check_tokenizer(manifest, tokenizer)
    for number, tokens in enumerate(read_documents_tokens(directory, "train"), start=1):
        yield f"{directory.name}/train#{number}", tokenizer.decode(tokens)


def training_texts(paths: Sequence[str | Path]) -> Iterator[tuple[str, str]]:
    """(document id, text) of the training data: documents, or a shards directory's decoded documents."""
    for path in map(Path, paths):
        if path.is_dir() and (path / "manifest.json").is_file() and any(path.glob("*.bin")):
            yield from _shard_texts(path)
        else:
            for document in read_documents([path], ReadStats()):
                yield document.id, document.text


def contamination(train: Sequence[str | Path], benchmark: Sequence[str | Path], text_fields: Sequence[str] = ("text",), n: int = 13, min_item_words: int = 8) -> dict[str, Any]:
    """Per benchmark item, the training documents (files or shards) sharing an n-gram with it; and the totals."""
    result = contamination_in(training_texts(train), benchmark, text_fields, n, min_item_words)
    if result["training_documents"] == 0:
        raise UserError(f"No training documents in {', '.join(map(str, train))}; pass documents or a shards directory.")
    return result


def contamination_in(texts: Iterable[tuple[str, str]], benchmark: Sequence[str | Path], text_fields: Sequence[str] = ("text",), n: int = 13, min_item_words: int = 8) -> dict[str, Any]:
    """`contamination` over (document id, text) pairs already in hand."""
    index = NGramIndex.from_files(benchmark, text_fields, n, min_item_words)
    if not index.item_ids:
        raise UserError(f"No benchmark item has {min_item_words} words or more; lower the minimum or check the text fields {list(text_fields)}.")
    hits: dict[str, list[str]] = {}
    documents = 0
    with progress_bar("checking training documents", None) as bar:
        for doc_id, text in texts:
            documents += 1
            for item in {item for _, _, item in index.matches(text)}:
                hits.setdefault(item, []).append(doc_id)
            bar(1)
    items = [{"item": item, "documents": len(docs), "examples": docs[:EXAMPLES_PER_ITEM]} for item, docs in hits.items()]
    items.sort(key=lambda row: (-row["documents"], row["item"]))
    checked = len(index.item_ids)
    return {
        "benchmark_items": checked,
        "skipped_short_items": index.skipped_short_items,
        "training_documents": documents,
        "ngram": n,
        "contaminated_items": len(items),
        "contaminated_share": len(items) / checked,
        "items": items,
    }


def render(result: dict[str, Any], limit: int = 20) -> str:
    lines = [
        f"{result['contaminated_items']:,} of {result['benchmark_items']:,} benchmark items ({100 * result['contaminated_share']:.1f} %) share a word "
        f"{result['ngram']}-gram with the {result['training_documents']:,} training documents"
        + (f"; {result['skipped_short_items']:,} items too short to check were skipped" if result["skipped_short_items"] else "")
    ]
    for row in result["items"][:limit]:
        lines.append(f"  {row['item']}: {row['documents']:,} document(s), e.g. {', '.join(row['examples'])}")
    if len(result["items"]) > limit:
        lines.append(f"  ... and {len(result['items']) - limit:,} more (--json lists them all)")
    return "\n".join(lines)
