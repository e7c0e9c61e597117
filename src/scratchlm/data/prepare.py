"""`scratchlm data prepare`: raw text → cleaned, filtered, deduplicated, decontaminated documents.

The steps run in the order the config lists them, over input shards, in parallel (see
`executor.py` for shards, stages, resuming and the Ray executor). The output is

    OUTPUT/documents_NNNNN.jsonl.zst   what was kept of input shard NNNNN, {"id", "text", "meta"} per line
    OUTPUT/removed_NNNNN.jsonl.zst     with --keep-removed: each removed document and its reason
    OUTPUT/manifest.json               inputs, each step's settings and counts per reason, checks
    OUTPUT/shards/                     with a tokenizer: token shards of the kept documents

Work happens in `.OUTPUT.work/` beside it, which a rerun after a crash resumes from, and the
output directory appears by rename only when everything is done. The manifest's `accounted`
check holds when every document read is either written or counted as removed by exactly one step.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scratchlm.config import to_dict
from scratchlm.console import info
from scratchlm.data.decontaminate import DecontaminateConfig
from scratchlm.data.dedup import ExactDedupConfig, MinHashConfig
from scratchlm.data.documents import ReadStats
from scratchlm.data.executor import (
    ExecutorConfig,
    make_executor,
    open_work_dir,
    plan_input_shards,
    plan_stages,
    run_pipeline,
)
from scratchlm.data.filters import QualityFiltersConfig
from scratchlm.data.langid import LangIdConfig
from scratchlm.data.pipeline import Step
from scratchlm.data.quality import QualityClassifierConfig
from scratchlm.data.shards import ShardConfig
from scratchlm.errors import UserError
from scratchlm.paths import check_output_location, make_directory

STEP_NAMES = ("clean", "langid", "quality", "quality_classifier", "exact_dedup", "minhash_dedup", "decontaminate")
GLOBAL_STEPS = ("exact_dedup", "minhash_dedup")
"""Steps that decide over all documents at once (see `GlobalStep`); the rest run document by document."""
FORMAT_NAME = "scratchlm-documents"
FORMAT_VERSION = 2


@dataclass
class PrepareConfig:
    """A data-preparation pipeline: the steps, in order, and the settings of each."""

    steps: list[str] = field(default_factory=lambda: ["clean", "langid", "quality", "exact_dedup", "minhash_dedup"])
    """Steps in order, from: clean, langid, quality, quality_classifier (once quality_classifier.model_path is set), exact_dedup, minhash_dedup, decontaminate (once decontaminate.benchmarks is set)."""
    text_field: str = "text"
    """The field that holds the text in JSONL and Parquet inputs."""
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)
    """Where the steps run: processes, or a Ray cluster; input shard size."""
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


def build_step(name: str, config: PrepareConfig) -> list[Step]:
    """The step(s) for one name of `PrepareConfig.steps` ("quality" is several filters)."""
    from scratchlm.data.clean import CleanStep
    from scratchlm.data.decontaminate import Decontaminate
    from scratchlm.data.dedup import ExactDedup, MinHashDedup
    from scratchlm.data.filters import build_quality_filters
    from scratchlm.data.langid import LanguageFilter
    from scratchlm.data.quality import QualityClassifierFilter

    if name == "clean":
        return [CleanStep()]
    if name == "langid":
        return [LanguageFilter(config.langid)]
    if name == "quality":
        return build_quality_filters(config.quality)
    if name == "quality_classifier":
        return [QualityClassifierFilter(config.quality_classifier)]
    if name == "exact_dedup":
        return [ExactDedup(config.exact_dedup)]
    if name == "minhash_dedup":
        return [MinHashDedup(config.minhash_dedup)]
    if name == "decontaminate":
        return [Decontaminate(config.decontaminate)]
    raise ValueError(f"unknown step {name!r}")


def step_class(name: str) -> type[Step]:
    """The class of a built step by its `name` (e.g. "gopher_quality"), to merge its details."""
    from scratchlm.data.clean import CleanStep
    from scratchlm.data.decontaminate import Decontaminate
    from scratchlm.data.dedup import ExactDedup, MinHashDedup
    from scratchlm.data.filters import (
        C4Filter,
        FineWebQualityFilter,
        GopherQualityFilter,
        GopherRepetitionFilter,
    )
    from scratchlm.data.langid import LanguageFilter
    from scratchlm.data.quality import QualityClassifierFilter

    classes = (CleanStep, LanguageFilter, GopherQualityFilter, GopherRepetitionFilter, C4Filter, FineWebQualityFilter, QualityClassifierFilter, ExactDedup, MinHashDedup, Decontaminate)
    return {cls.name: cls for cls in classes}[name]


def prepare(
    inputs: list[str | Path],
    output: str | Path,
    config: PrepareConfig | None = None,
    corpus: str | None = None,
    tokenizer_path: str | Path | None = None,
    keep_removed: bool = False,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Run the pipeline over the inputs (and/or a named corpus); returns the manifest.

    Documents an earlier run wrote to `output` are replaced only with `overwrite`; an
    interrupted run (its `.OUTPUT.work/`) resumes either way.
    """
    config = config or PrepareConfig()
    if not inputs and corpus is None:
        raise UserError("Nothing to prepare; pass --input PATH (files, directories, JSONL, Parquet) or --corpus shakespeare.")
    output = Path(output)
    # Before fetching or planning anything, so a bad --output fails in the first second.
    check_output_location(output, "--output")
    if output.exists() and not (output / "manifest.json").is_file() and any(output.iterdir()):
        raise UserError(f"{output} exists and is not a documents directory; choose a new --output.")
    if (output / "manifest.json").is_file() and not overwrite:
        raise UserError(f"--output {output} already holds the documents of an earlier `data prepare`; pass --overwrite to replace them (with their removed documents and shards), or choose another --output.")
    tokenizer = None
    if tokenizer_path is not None:
        from scratchlm.tokenizer.tokenizer import EOT, load_tokenizer

        tokenizer = load_tokenizer(tokenizer_path)
        # write_shards checks this too, but only after the whole pipeline has run.
        if tokenizer.eot_id is None:
            raise UserError(f"The tokenizer {tokenizer_path} has no {EOT} token to separate documents; pass a --tokenizer that has it.")
    if corpus is not None:
        from scratchlm.data.corpus import fetch

        fetch(corpus)  # once here, not in every worker at the same time
    shards = plan_input_shards([Path(p) for p in inputs], corpus, config.executor)
    if not shards:
        raise UserError("The inputs hold no files; check the --input paths.")
    stages = plan_stages(config.steps, GLOBAL_STEPS)
    settings = to_dict(config)
    executor_settings = settings.pop("executor")
    work = output.parent / f".{output.name}.work"
    plan = {"format": "scratchlm-prepare-work", "version": FORMAT_VERSION, "shards": [s.describe() for s in shards], "settings": settings, "keep_removed": keep_removed}
    make_directory(output.parent, "the parent directory of --output")
    try:
        open_work_dir(work, plan)
    except OSError as error:
        # What no check foresees: a read-only or virtual file system (/proc), a full disk.
        raise UserError(f"Cannot write the work directory {work} beside --output ({error.strerror or error}); choose another --output.") from None

    started = time.perf_counter()
    executor = make_executor(config.executor)
    try:
        result = run_pipeline(work, shards, stages, config, executor, keep_removed, step_class)
    except KeyboardInterrupt:
        info(f"interrupted: the finished work is kept in {work}; run the same command again to resume")
        raise
    finally:
        executor.close()
    if result.read.documents == 0:
        shutil.rmtree(work)
        skipped = result.read.skipped() or "nothing, yet found no documents"
        raise UserError(f"No documents could be read from the inputs: the readers skipped {skipped}; fix or replace those files, or check the --input paths.")
    total_removed = sum(step["removed"] for step in result.steps)
    manifest = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "inputs": [str(p) for p in inputs] + ([f"corpus:{corpus}"] if corpus else []),
        "input_shards": len(shards),
        "read": vars(result.read),
        "steps": result.steps,
        "settings": settings,
        "output": {"files": result.files, "documents": result.documents, "bytes": result.bytes},
        "removed_output": {"files": result.removed_files} if keep_removed else None,
        "removed": total_removed,
        "accounted": result.read.documents == result.documents + total_removed,
        "executor": executor_settings,
        "seconds": time.perf_counter() - started,
    }
    (work / "output" / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    if output.exists():
        shutil.rmtree(output)
    os.replace(work / "output", output)
    shutil.rmtree(work)
    info(f"{result.read.documents:,} documents read, {result.documents:,} kept, {total_removed:,} removed ({manifest['seconds']:.1f} s) → {output}")
    if tokenizer is not None:
        from scratchlm.data.documents import read_jsonl
        from scratchlm.data.shards import write_shards

        write_shards(read_jsonl([output / name for name in result.files], ReadStats()), tokenizer, output / "shards", config.shards)
    return manifest
