"""Running a `data prepare` pipeline over input shards: in one process, a local process pool, or Ray.

**Input shards.** The inputs are cut into shards, the unit of parallel work: consecutive files
up to `input_shard_mb` MB each (a bigger file is a shard of its own), and a named corpus in
`corpus_parts` contiguous parts. Output file k holds what was kept of input shard k.

**Stages.** The deduplication steps are global (`GlobalStep`): which copy of a text came first
depends on every shard. So the step list is cut at each global step into stages. A stage runs
shard by shard, in parallel: it drops what the previous global step decided to remove, runs the
per-document steps (cleaning, filters, decontamination) and computes the keys (digests, MinHash
signatures) of the next global step. Between stages, this process reads every shard's keys in
input order and decides what that step removes. For `clean, langid, quality, exact_dedup,
minhash_dedup, decontaminate` that is three stages:

    stage 0: read → clean → langid → quality → exact-dedup keys        (per shard, parallel)
             exact_dedup decides                                       (here, all shards)
    stage 1: drop exact duplicates → MinHash signatures                (per shard, parallel)
             minhash_dedup decides                                     (here, all shards)
    stage 2: drop near duplicates → decontaminate → documents_k.jsonl.zst

**Resuming.** Everything goes into a work directory beside the output (`.NAME.work/`). Each
shard's stage ends by writing a marker (`stage{i}/{k}.done.json`, with that shard's counts) after
its files are complete, and each decision by writing `stage{i}/decision.json`. A rerun with the
same inputs and settings (`plan.json`) skips every marked piece of work, so a run that crashed or
was stopped with Ctrl-C continues where it stopped, and, because every step is deterministic
and output follows input order, writes byte for byte the output an uninterrupted run writes.
The output directory appears, by rename, only when everything is done.

**Executors** only map one function over tasks: `LocalExecutor` (this process, or a pool of
spawned processes) and `RayExecutor` (tasks on a Ray cluster; the work directory and the
inputs must then be on a file system every node sees).
"""

from __future__ import annotations

import io
import json
import os
import pickle
import shutil
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import zstandard

from scratchlm.console import info, progress_bar
from scratchlm.data.documents import MAX_EXAMPLES, Document, ReadStats, expand_paths, read_file
from scratchlm.data.pipeline import DropStep, GlobalStep, Step, batched
from scratchlm.errors import UserError

if TYPE_CHECKING:
    from scratchlm.data.prepare import PrepareConfig

WORK_FORMAT = "scratchlm-prepare-work"
WORK_VERSION = 1


@dataclass
class ExecutorConfig:
    """Where and how `data prepare` runs its steps."""

    kind: Literal["local", "ray"] = "local"
    """local: this machine, with `processes` worker processes; ray: tasks on a Ray cluster (pip install scratchlm[ray])."""
    processes: int = 0
    """Worker processes (local) or CPUs to start a local Ray with; 0 = one per CPU core, 1 = everything in this process."""
    ray_address: str = ""
    """Address of a running Ray cluster (e.g. "ray://head:10001" or "auto"); "" starts a private local Ray."""
    input_shard_mb: float = 64.0
    """Input files are grouped into shards of about this many MB (on disk); a bigger file is a shard of its own. Shards are the unit of parallel work and of resuming."""
    corpus_parts: int = 8
    """A named corpus (--corpus) is read in this many contiguous parts, so that workers can share it."""

    def __post_init__(self) -> None:
        if self.processes < 0:
            raise UserError("executor.processes must be 0 (one per CPU core) or more.")
        if self.input_shard_mb <= 0:
            raise UserError("executor.input_shard_mb must be above 0.")
        if self.corpus_parts < 1:
            raise UserError("executor.corpus_parts must be at least 1.")

    def worker_count(self) -> int:
        return self.processes or os.cpu_count() or 1


# ---- input shards -------------------------------------------------------------------------------


@dataclass(frozen=True)
class InputShard:
    """One unit of parallel work: some input files, or one part of a named corpus."""

    index: int
    files: tuple[tuple[str, str], ...] = ()
    """(path, name) of each file; the name is the id its documents get (or their id prefix)."""
    corpus: str | None = None
    part: tuple[int, int] = (0, 1)
    """(k, n): this shard reads the k-th of the corpus's n contiguous parts."""

    def documents(self, stats: ReadStats, text_field: str) -> Iterator[Document]:
        if self.corpus is not None:
            from scratchlm.data.corpus import corpus_documents

            yield from corpus_documents(self.corpus, stats=stats, part=self.part)
        for path, name in self.files:
            yield from read_file(Path(path), name, stats, text_field)

    def describe(self) -> dict[str, Any]:
        """What identifies this shard's input, for checking that a rerun reads the same data."""
        if self.corpus is not None:
            return {"corpus": self.corpus, "part": list(self.part)}
        files = []
        for path, name in self.files:
            status = Path(path).stat()
            files.append({"path": path, "name": name, "bytes": status.st_size, "mtime_ns": status.st_mtime_ns})
        return {"files": files}


def plan_input_shards(inputs: list[Path], corpus: str | None, config: ExecutorConfig) -> list[InputShard]:
    """Input shards in input order: the corpus parts first, then consecutive groups of files."""
    shards = [InputShard(k, corpus=corpus, part=(k, config.corpus_parts)) for k in range(config.corpus_parts)] if corpus else []
    limit = config.input_shard_mb * 1e6
    group: list[tuple[str, str]] = []
    size = 0
    for path, name in expand_paths(inputs) if inputs else []:
        file_size = path.stat().st_size
        if group and size + file_size > limit:
            shards.append(InputShard(len(shards), tuple(group)))
            group, size = [], 0
        group.append((str(path.resolve()), name))
        size += file_size
    if group:
        shards.append(InputShard(len(shards), tuple(group)))
    return shards


# ---- stages -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stage:
    """Per-shard work between two global decisions."""

    index: int
    drop: str | None
    """The global step whose decisions this stage applies first (none in stage 0)."""
    steps: tuple[str, ...]
    """Per-document steps, by their names in `PrepareConfig.steps`."""
    keys: str | None
    """The global step whose keys this stage computes for the documents it keeps (none in the last stage, which writes the output)."""

    @property
    def final(self) -> bool:
        return self.keys is None


def plan_stages(step_names: Iterable[str], global_steps: Iterable[str]) -> list[Stage]:
    """Cut the step list at each global step (see the module docstring)."""
    global_steps = set(global_steps)
    stages: list[Stage] = []
    drop: str | None = None
    local: list[str] = []
    for name in step_names:
        if name in global_steps:
            stages.append(Stage(len(stages), drop, tuple(local), name))
            drop, local = name, []
        else:
            local.append(name)
    stages.append(Stage(len(stages), drop, tuple(local), None))
    return stages


@dataclass(frozen=True)
class StageTask:
    """Everything a worker needs to run one stage over one shard (picklable)."""

    work: str
    stage: Stage
    shard: InputShard
    config: PrepareConfig
    keep_removed: bool


def _shard_file(work: Path, stage: int, shard: int, suffix: str) -> Path:
    return work / f"stage{stage}" / f"{shard:05d}.{suffix}"


def run_stage(task: StageTask) -> dict[str, Any]:
    """Run one stage over one shard; returns (and leaves as the marker) its counts.

    Idempotent: a shard whose marker exists is not run again; a shard without one is run from the
    start, overwriting whatever an interrupted attempt left.
    """
    from scratchlm.data.prepare import build_step

    work, stage, shard, config = Path(task.work), task.stage, task.shard, task.config
    marker = _shard_file(work, stage.index, shard.index, "done.json")
    if marker.exists():
        return json.loads(marker.read_text())
    read_stats = ReadStats()
    if stage.index == 0:
        source: Iterable[Document] = shard.documents(read_stats, config.text_field)
    else:
        source = _read_spool(_shard_file(work, stage.index - 1, shard.index, "docs.zst"))
    steps: list[Step] = []
    if stage.drop is not None:
        (dropped,) = build_step(stage.drop, config)
        assert isinstance(dropped, GlobalStep)
        steps.append(DropStep(stage.drop, _decisions(work, stage.index - 1, shard.index), dropped.removal_reason))
    for name in stage.steps:
        steps.extend(build_step(name, config))

    removed_path = _shard_file(work, stage.index, shard.index, "removed.jsonl.zst")
    removed = _JsonlZst(removed_path) if task.keep_removed else None
    if removed is not None:
        for step in steps:
            step.on_removed = lambda document, reason: removed.write({"id": document.id, "text": document.text, "meta": document.meta, "reason": reason})
    stream: Iterable[Document] = source
    for step in steps:
        stream = step.run(stream)

    result: dict[str, Any] = {"shard": shard.index}
    if stage.final:
        output = work / "output" / f"documents_{shard.index:05d}.jsonl.zst"
        kept = _JsonlZst(output)
        for document in stream:
            kept.write({"id": document.id, "text": document.text, "meta": document.meta})
        result.update(documents=kept.count, bytes=kept.bytes, file=output.name if kept.count else None)
        kept.close(keep_empty=False)
    else:
        (keyed,) = build_step(stage.keys, config)
        assert isinstance(keyed, GlobalStep)
        spool = _Spool(_shard_file(work, stage.index, shard.index, "docs.zst"))
        ids: list[str] = []
        blocks: list[np.ndarray] = []
        for batch in batched(stream, keyed.batch_documents):
            blocks.append(keyed.keys([d.text for d in batch]))
            ids.extend(d.id for d in batch)
            spool.write(batch)
        spool.close()
        _save_keys(_shard_file(work, stage.index, shard.index, "keys.npy"), blocks)
        _atomic_write(_shard_file(work, stage.index, shard.index, "ids.json"), json.dumps(ids, ensure_ascii=False))
        result.update(documents=len(ids))
    if removed is not None:
        removed.close(keep_empty=True)
        if stage.final:
            _join_removed(work, stage.index, shard.index)
    result["read"] = asdict(read_stats) if stage.index == 0 else None
    result["steps"] = [{"name": step.name, **step.stats.as_dict(), "details": step.details()} for step in steps]
    _atomic_write(marker, json.dumps(result, ensure_ascii=False))
    return result


def _join_removed(work: Path, last_stage: int, shard: int) -> None:
    """The shard's removed documents of every stage as one file (zstd frames concatenate)."""
    target = work / "output" / f"removed_{shard:05d}.jsonl.zst"
    partial = target.with_name(target.name + ".partial")
    with partial.open("wb") as out:
        for stage in range(last_stage + 1):
            with _shard_file(work, stage, shard, "removed.jsonl.zst").open("rb") as f:
                shutil.copyfileobj(f, out)
    os.replace(partial, target)


def _decisions(work: Path, stage: int, shard: int) -> np.ndarray:
    decision = json.loads((work / f"stage{stage}" / "decision.json").read_text())
    start = sum(decision["documents_per_shard"][:shard])
    return np.load(work / f"stage{stage}" / "decision.npy", mmap_mode="r")[start : start + decision["documents_per_shard"][shard]]


def decide(work: Path, stage: Stage, shards: list[InputShard], config: PrepareConfig) -> dict[str, Any]:
    """The global step's decision over every shard's keys, in input order (once; then read back)."""
    from scratchlm.data.prepare import build_step

    marker = work / f"stage{stage.index}" / "decision.json"
    if marker.exists():
        return json.loads(marker.read_text())
    (step,) = build_step(stage.keys, config)
    assert isinstance(step, GlobalStep)
    ids: list[str] = []
    blocks: list[np.ndarray] = []
    counts: list[int] = []
    for shard in shards:
        shard_ids = json.loads(_shard_file(work, stage.index, shard.index, "ids.json").read_text())
        ids.extend(shard_ids)
        counts.append(len(shard_ids))
        if shard_ids:
            blocks.append(np.load(_shard_file(work, stage.index, shard.index, "keys.npy")))
    remove = step.decide(ids, np.concatenate(blocks)) if ids else np.zeros(0, dtype=bool)
    partial = marker.with_name("decision.partial.npy")
    np.save(partial, remove)
    os.replace(partial, work / f"stage{stage.index}" / "decision.npy")
    decision = {"step": step.name, "documents_per_shard": counts, "removed": int(remove.sum()), "details": step.details()}
    _atomic_write(marker, json.dumps(decision, ensure_ascii=False))
    return decision


# ---- files --------------------------------------------------------------------------------------


def _atomic_write(path: Path, text: str) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    os.replace(partial, path)


def _save_keys(path: Path, blocks: list[np.ndarray]) -> None:
    partial = path.with_name(path.name + ".partial.npy")
    np.save(partial, np.concatenate(blocks) if blocks else np.zeros((0,), dtype=np.uint8))
    os.replace(partial, path)


class _JsonlZst:
    """Records as JSON lines in one zstd file, which gets its name only when closed."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.partial = path.with_name(path.name + ".partial")
        self.count = 0
        self.bytes = 0
        self._stream = zstandard.ZstdCompressor(level=3).stream_writer(self.partial.open("wb"), closefd=True)

    def write(self, record: dict[str, Any]) -> None:
        # default=str: meta values JSON has no type for (Parquet dates) are written as text
        self._stream.write((json.dumps(record, ensure_ascii=False, default=str) + "\n").encode("utf-8"))
        self.count += 1
        self.bytes += len(record["text"].encode("utf-8"))

    def close(self, keep_empty: bool) -> None:
        self._stream.close()
        if self.count or keep_empty:
            os.replace(self.partial, self.path)
        else:
            self.partial.unlink()


class _Spool:
    """Documents between two stages: pickled batches in one zstd frame (pickle keeps meta exact)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.partial = path.with_name(path.name + ".partial")
        self._file = self.partial.open("wb")
        self._stream = zstandard.ZstdCompressor(level=1).stream_writer(self._file)

    def write(self, batch: list[Document]) -> None:
        pickle.dump(batch, self._stream, protocol=pickle.HIGHEST_PROTOCOL)

    def close(self) -> None:
        self._stream.flush(zstandard.FLUSH_FRAME)
        self._file.close()
        os.replace(self.partial, self.path)


def _read_spool(path: Path) -> Iterator[Document]:
    with path.open("rb") as f:
        reader = io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(f))
        while True:
            try:
                batch = pickle.load(reader)
            except EOFError:
                return
            yield from batch


# ---- executors ----------------------------------------------------------------------------------


class LocalExecutor:
    """Tasks in this process (one worker) or in a pool of spawned worker processes."""

    def __init__(self, processes: int) -> None:
        self.processes = processes
        self._pool: ProcessPoolExecutor | None = None

    def map(self, function: Callable[[Any], Any], tasks: list[Any]) -> Iterator[Any]:
        """Results in the order the tasks finish."""
        if self.processes <= 1 or len(tasks) <= 1:
            yield from map(function, tasks)
            return
        if self._pool is None:
            # spawn, not fork: the parent has threads (progress bars, tokenizers) that fork copies badly
            self._pool = ProcessPoolExecutor(self.processes, mp_context=get_context("spawn"))
        pending: set[Future] = {self._pool.submit(function, task) for task in tasks}
        try:
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    yield future.result()
        finally:
            for future in pending:
                future.cancel()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


class RayExecutor:
    """Tasks on a Ray cluster: the one at `address`, or a private local one with `cpus` CPUs."""

    def __init__(self, address: str, cpus: int) -> None:
        try:
            import ray
        except ImportError as e:
            raise UserError("executor.kind is ray but ray is not installed; pip install 'scratchlm[ray]'.") from e
        self.ray = ray
        self._started = False
        if not ray.is_initialized():
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
            if address:
                ray.init(address=address, logging_level="WARNING", log_to_driver=False)
            else:
                ray.init(num_cpus=cpus, include_dashboard=False, _node_ip_address="127.0.0.1", logging_level="WARNING", log_to_driver=False)
            self._started = True

    def map(self, function: Callable[[Any], Any], tasks: list[Any]) -> Iterator[Any]:
        remote = self.ray.remote(function)
        pending = [remote.remote(task) for task in tasks]
        try:
            while pending:
                done, pending = self.ray.wait(pending, num_returns=1)
                yield self.ray.get(done[0])
        finally:
            for ref in pending:
                self.ray.cancel(ref)

    def close(self) -> None:
        if self._started:
            self.ray.shutdown()


def make_executor(config: ExecutorConfig) -> LocalExecutor | RayExecutor:
    if config.kind == "ray":
        return RayExecutor(config.ray_address, config.worker_count())
    return LocalExecutor(config.worker_count())


# ---- the run ------------------------------------------------------------------------------------


@dataclass
class RunResult:
    """What a pipeline run produced, merged over shards, for the manifest."""

    read: ReadStats
    steps: list[dict[str, Any]]
    files: list[str]
    documents: int
    bytes: int
    removed_files: list[str] = field(default_factory=list)


def run_pipeline(
    work: Path,
    shards: list[InputShard],
    stages: list[Stage],
    config: PrepareConfig,
    executor: LocalExecutor | RayExecutor,
    keep_removed: bool,
    step_class: Callable[[str], type[Step]],
) -> RunResult:
    """Run every stage over every shard (skipping finished work); output lands in work/output."""
    (work / "output").mkdir(parents=True, exist_ok=True)
    markers: list[list[dict[str, Any]]] = []
    decisions: dict[str, dict[str, Any]] = {}
    for stage in stages:
        (work / f"stage{stage.index}").mkdir(exist_ok=True)
        tasks = [StageTask(str(work), stage, shard, config, keep_removed) for shard in shards]
        done = {}
        todo = []
        for task in tasks:
            marker = _shard_file(work, stage.index, task.shard.index, "done.json")
            if marker.exists():
                done[task.shard.index] = json.loads(marker.read_text())
            else:
                todo.append(task)
        if done and todo:
            info(f"stage {stage.index}: {len(done)} of {len(shards)} shards already done, resuming")
        names = ([stage.drop] if stage.drop else []) + list(stage.steps) + ([f"{stage.keys} keys"] if stage.keys else [])
        with progress_bar(f"stage {stage.index + 1}/{len(stages)}: {', '.join(names) or 'copy'}", total=len(shards)) as advance:
            advance(len(done))
            for result in executor.map(run_stage, todo):
                done[result["shard"]] = result
                advance(1)
        markers.append([done[shard.index] for shard in shards])
        if stage.keys is not None:
            decisions[stage.keys] = decide(work, stage, shards, config)

    read = _merge_read_stats([m["read"] for m in markers[0]])
    steps = _merge_steps(markers, decisions, step_class)
    final = markers[-1]
    files = [m["file"] for m in final if m["file"]]
    removed_files = [f"removed_{shard.index:05d}.jsonl.zst" for shard in shards] if keep_removed else []
    return RunResult(read, steps, files, sum(m["documents"] for m in final), sum(m["bytes"] for m in final), removed_files)


def _merge_steps(markers: list[list[dict[str, Any]]], decisions: dict[str, dict[str, Any]], step_class: Callable[[str], type[Step]]) -> list[dict[str, Any]]:
    merged = []
    for stage_markers in markers:
        for position, first in enumerate(stage_markers[0]["steps"] if stage_markers else []):
            entries = [m["steps"][position] for m in stage_markers]
            removed: Counter[str] = Counter()
            for entry in entries:
                removed.update(entry["removed_by_reason"])
            name = first["name"]
            if name in decisions:
                details = decisions[name]["details"]
            else:
                details = step_class(name).merge_details([entry["details"] for entry in entries])
            row = {
                "name": name,
                "read": sum(e["read"] for e in entries),
                "kept": sum(e["kept"] for e in entries),
                "removed": sum(removed.values()),
                "removed_by_reason": dict(sorted(removed.items())),
            }
            merged.append({**row, **({"details": details} if details else {})})
    return merged


def _merge_read_stats(parts: list[dict[str, Any]]) -> ReadStats:
    total = ReadStats()
    for part in parts:
        for key, value in part.items():
            if isinstance(value, list):
                getattr(total, key).extend(value[: MAX_EXAMPLES - len(getattr(total, key))])
            else:
                setattr(total, key, getattr(total, key) + value)
    return total


def open_work_dir(work: Path, plan: dict[str, Any]) -> bool:
    """Make `work` ready for `plan`; True when it resumes an earlier run of the same plan."""
    plan_file = work / "plan.json"
    text = json.dumps(plan, indent=2, ensure_ascii=False, sort_keys=True)
    if plan_file.exists():
        if plan_file.read_text() == text:
            return True
        info(f"{work} holds an unfinished run with other inputs or settings; starting over")
        shutil.rmtree(work)
    elif work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    _atomic_write(plan_file, text)
    return False
