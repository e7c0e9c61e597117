"""`scratchlm data prepare`: raw text → cleaned, filtered, deduplicated, decontaminated documents.

The steps run in the order the config lists them, as one stream, in one process (parallel
executors over input shards, with completion markers, are the next milestone). The output is

    OUTPUT/documents_NNNNN.jsonl.zst   the kept documents, {"id", "text", "meta"} per line
    OUTPUT/removed_NNNNN.jsonl.zst     with --keep-removed: each removed document and its reason
    OUTPUT/manifest.json               inputs, each step's settings and counts per reason, checks
    OUTPUT/shards/                     with a tokenizer: token shards of the kept documents

written to a temporary directory and renamed, so a crash never leaves a half-written output.
The manifest's `accounted` check holds when every document read is either written or counted as
removed by exactly one step.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import zstandard

from scratchlm.config import to_dict
from scratchlm.console import info, progress_bar
from scratchlm.data.decontaminate import DecontaminateConfig
from scratchlm.data.dedup import ExactDedupConfig, MinHashConfig
from scratchlm.data.documents import Document, ReadStats
from scratchlm.data.filters import QualityFiltersConfig
from scratchlm.data.langid import LangIdConfig
from scratchlm.data.pipeline import Step
from scratchlm.data.quality import QualityClassifierConfig
from scratchlm.data.shards import ShardConfig
from scratchlm.errors import UserError

STEP_NAMES = ("clean", "langid", "quality", "quality_classifier", "exact_dedup", "minhash_dedup", "decontaminate")
FORMAT_NAME = "scratchlm-documents"
FORMAT_VERSION = 1


@dataclass
class PrepareConfig:
    """A data-preparation pipeline: the steps, in order, and the settings of each."""

    steps: list[str] = field(default_factory=lambda: ["clean", "langid", "quality", "exact_dedup", "minhash_dedup"])
    """Steps in order, from: clean, langid, quality, quality_classifier (once quality_classifier.model_path is set), exact_dedup, minhash_dedup, decontaminate (once decontaminate.benchmarks is set)."""
    text_field: str = "text"
    """The field that holds the text in JSONL and Parquet inputs."""
    documents_per_file: int = 10_000
    """Documents per output file."""
    langid: LangIdConfig = field(default_factory=LangIdConfig)
    """Language identification (fastText lid.176)."""
    quality: QualityFiltersConfig = field(default_factory=QualityFiltersConfig)
    """Heuristic quality filters (Gopher, C4, FineWeb)."""
    quality_classifier: QualityClassifierConfig = field(default_factory=QualityClassifierConfig)
    """A fastText quality classifier trained with `scratchlm data train-quality`."""
    exact_dedup: ExactDedupConfig = field(default_factory=ExactDedupConfig)
    """Exact deduplication."""
    minhash_dedup: MinHashConfig = field(default_factory=MinHashConfig)
    """MinHash-LSH near-deduplication."""
    decontaminate: DecontaminateConfig = field(default_factory=DecontaminateConfig)
    """Benchmark decontamination."""
    shards: ShardConfig = field(default_factory=ShardConfig)
    """Tokenization into train/val shards (used when a tokenizer is given)."""

    def __post_init__(self) -> None:
        for name in self.steps:
            if name not in STEP_NAMES:
                raise UserError(f"Unknown step {name!r}; choose from {', '.join(STEP_NAMES)}.")
        if len(set(self.steps)) != len(self.steps):
            raise UserError("A step is listed twice in steps; list each once.")
        if "quality_classifier" in self.steps and not self.quality_classifier.model_path:
            raise UserError("quality_classifier is in steps but quality_classifier.model_path is empty; train one with `scratchlm data train-quality` and set it.")
        if "decontaminate" in self.steps and not self.decontaminate.benchmarks:
            raise UserError("decontaminate is in steps but decontaminate.benchmarks is empty; add benchmark files or remove the step.")
        if self.documents_per_file < 1:
            raise UserError("documents_per_file must be at least 1.")


def build_steps(config: PrepareConfig) -> list[Step]:
    from scratchlm.data.clean import CleanStep
    from scratchlm.data.decontaminate import Decontaminate
    from scratchlm.data.dedup import ExactDedup, MinHashDedup
    from scratchlm.data.filters import build_quality_filters
    from scratchlm.data.langid import LanguageFilter
    from scratchlm.data.quality import QualityClassifierFilter

    steps: list[Step] = []
    for name in config.steps:
        if name == "clean":
            steps.append(CleanStep())
        elif name == "langid":
            steps.append(LanguageFilter(config.langid))
        elif name == "quality":
            steps.extend(build_quality_filters(config.quality))
        elif name == "quality_classifier":
            steps.append(QualityClassifierFilter(config.quality_classifier))
        elif name == "exact_dedup":
            steps.append(ExactDedup(config.exact_dedup))
        elif name == "minhash_dedup":
            steps.append(MinHashDedup(config.minhash_dedup))
        else:
            steps.append(Decontaminate(config.decontaminate))
    return steps


class JsonlZstWriter:
    """Documents into numbered `{prefix}_NNNNN.jsonl.zst` files of at most `per_file` lines."""

    def __init__(self, directory: Path, prefix: str, per_file: int) -> None:
        self.directory, self.prefix, self.per_file = directory, prefix, per_file
        self.files: list[str] = []
        self.count = 0
        self.bytes = 0
        self._stream: IO[bytes] | None = None

    def write(self, record: dict[str, Any]) -> None:
        if self.count % self.per_file == 0:
            self._close_file()
            name = f"{self.prefix}_{len(self.files):05d}.jsonl.zst"
            self.files.append(name)
            self._stream = zstandard.ZstdCompressor(level=3).stream_writer(open(self.directory / name, "wb"), closefd=True)
        self._stream.write((json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8"))
        self.count += 1
        self.bytes += len(record["text"].encode("utf-8"))

    def _close_file(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None

    def close(self) -> dict[str, Any]:
        self._close_file()
        return {"files": self.files, "documents": self.count, "bytes": self.bytes}


def _counted(documents: Iterable[Document], advance) -> Iterator[Document]:
    for document in documents:
        advance(1)
        yield document


def prepare(
    inputs: list[str | Path],
    output: str | Path,
    config: PrepareConfig | None = None,
    corpus: str | None = None,
    tokenizer_path: str | Path | None = None,
    keep_removed: bool = False,
) -> dict[str, Any]:
    """Run the pipeline over the inputs (and/or a named corpus); returns the manifest."""
    from scratchlm.data.corpus import corpus_documents
    from scratchlm.data.documents import read_documents

    config = config or PrepareConfig()
    if not inputs and corpus is None:
        raise UserError("Nothing to prepare; pass --input PATH (files, directories, JSONL, Parquet) or --corpus shakespeare.")
    output = Path(output)
    if output.exists() and not (output / "manifest.json").is_file() and any(output.iterdir()):
        raise UserError(f"{output} exists and is not a documents directory; choose a new --output.")
    read_stats = ReadStats()
    sources: list[Iterable[Document]] = [corpus_documents(corpus, stats=read_stats)] if corpus else []
    if inputs:
        sources.append(read_documents([Path(p) for p in inputs], read_stats, text_field=config.text_field))
    steps = build_steps(config)

    temporary = output.parent / f".{output.name}.tmp-{os.getpid()}"
    if temporary.exists():
        shutil.rmtree(temporary)
    temporary.mkdir(parents=True)
    started = time.perf_counter()
    try:
        kept = JsonlZstWriter(temporary, "documents", config.documents_per_file)
        removed = JsonlZstWriter(temporary, "removed", config.documents_per_file) if keep_removed else None
        if removed is not None:
            for step in steps:
                step.on_removed = lambda document, reason: removed.write({"id": document.id, "text": document.text, "meta": document.meta, "reason": reason})
        with progress_bar("preparing documents", total=None) as advance:
            stream: Iterable[Document] = _counted((d for source in sources for d in source), advance)
            for step in steps:
                stream = step.run(stream)
            for document in stream:
                kept.write({"id": document.id, "text": document.text, "meta": document.meta})
        written = kept.close()
        removed_info = removed.close() if removed is not None else None
        total_removed = sum(sum(step.stats.removed.values()) for step in steps)
        manifest = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "inputs": [str(p) for p in inputs] + ([f"corpus:{corpus}"] if corpus else []),
            "read": {k: v for k, v in vars(read_stats).items()},
            "steps": [{"name": step.name, **step.stats.as_dict(), **({"details": step.details()} if step.details() else {})} for step in steps],
            "settings": to_dict(config),
            "output": written,
            "removed_output": removed_info,
            "removed": total_removed,
            "accounted": read_stats.documents == written["documents"] + total_removed,
            "seconds": time.perf_counter() - started,
        }
        (temporary / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    if output.exists():
        shutil.rmtree(output)
    os.replace(temporary, output)
    info(f"{read_stats.documents:,} documents read, {written['documents']:,} kept, {total_removed:,} removed ({manifest['seconds']:.1f} s) → {output}")
    if tokenizer_path is not None:
        from scratchlm.data.documents import read_jsonl
        from scratchlm.data.shards import write_shards
        from scratchlm.tokenizer.tokenizer import load_tokenizer

        tokenizer = load_tokenizer(tokenizer_path)
        write_shards(read_jsonl([output / name for name in written["files"]], ReadStats()), tokenizer, output / "shards", config.shards)
    return manifest
