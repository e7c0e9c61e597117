"""The prepare executors: stages, global dedup across shards, same output for any process count,
and resuming after a crash with byte-identical output."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import WORDS, synthetic_text

from scratchlm.data import executor
from scratchlm.data.decontaminate import DecontaminateConfig
from scratchlm.data.documents import ReadStats, read_documents
from scratchlm.data.executor import ExecutorConfig, Stage, plan_input_shards, plan_stages
from scratchlm.data.prepare import GLOBAL_STEPS, PrepareConfig, prepare

STEPS = ["clean", "exact_dedup", "minhash_dedup", "decontaminate"]
BENCHMARK = " ".join(random.Random(99).choice(WORDS) + str(i) for i in range(40))


def edited(text: str, fraction: float, seed: int) -> str:
    rng = random.Random(seed)
    words = text.split()
    for i in rng.sample(range(len(words)), int(len(words) * fraction)):
        words[i] = rng.choice(WORDS)
    return " ".join(words)


def write_inputs(directory: Path, files: int = 6, per_file: int = 5) -> dict[str, str]:
    """JSONL files of unique texts, with copies and near-copies of earlier files' texts planted in
    later files, and a benchmark passage inside one document. Returns planted id → its original."""
    directory.mkdir()
    planted = {}
    texts = {}
    for f in range(files):
        records = []
        for d in range(per_file):
            doc_id = f"f{f}d{d}"
            text = synthetic_text(100 * f + d, 150)
            if f >= 2 and d == 0:
                source = f"f{f - 2}d1"
                text, planted[doc_id] = texts[source].upper(), source  # exact after normalization
            elif f >= 2 and d == 1:
                source = f"f{f - 1}d2"
                text, planted[doc_id] = edited(texts[source], 0.01, f), source  # one word changed
            elif f == 1 and d == 3:
                text = text + "\n\n" + BENCHMARK
            texts[doc_id] = text
            records.append(json.dumps({"id": doc_id, "text": text}))
        (directory / f"part{f}.jsonl").write_text("\n".join(records) + "\n")
    return planted


def config(processes: int, tmp_path: Path) -> PrepareConfig:
    benchmark = tmp_path / "bench.jsonl"
    if not benchmark.exists():
        benchmark.write_text(json.dumps({"id": "q1", "text": BENCHMARK}) + "\n")
    return PrepareConfig(
        steps=STEPS,
        decontaminate=DecontaminateConfig(benchmarks=[str(benchmark)]),
        executor=ExecutorConfig(processes=processes, input_shard_mb=0.001),  # a shard per file
    )


def output_bytes(directory: Path) -> dict[str, bytes]:
    """Every output file's bytes; the manifest without its timing and executor settings."""
    files = {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.name != "manifest.json"}
    manifest = json.loads((directory / "manifest.json").read_text())
    del manifest["seconds"], manifest["executor"]
    files["manifest.json"] = json.dumps(manifest).encode()
    return files


def test_plan_stages_cuts_at_global_steps() -> None:
    stages = plan_stages(["clean", "langid", "exact_dedup", "minhash_dedup", "decontaminate"], GLOBAL_STEPS)
    assert stages == [
        Stage(0, None, ("clean", "langid"), "exact_dedup"),
        Stage(1, "exact_dedup", (), "minhash_dedup"),
        Stage(2, "minhash_dedup", ("decontaminate",), None),
    ]
    assert plan_stages(["clean"], GLOBAL_STEPS) == [Stage(0, None, ("clean",), None)]
    assert plan_stages(["exact_dedup"], GLOBAL_STEPS) == [Stage(0, None, (), "exact_dedup"), Stage(1, "exact_dedup", (), None)]


def test_input_shards_group_small_files(tmp_path: Path) -> None:
    for name, size in [("a", 600), ("b", 300), ("c", 300), ("d", 2500), ("e", 10)]:
        (tmp_path / f"{name}.txt").write_text("x" * size)
    shards = plan_input_shards([tmp_path], None, ExecutorConfig(input_shard_mb=0.001))
    assert [[name for _, name in shard.files] for shard in shards] == [["a.txt", "b.txt"], ["c.txt"], ["d.txt"], ["e.txt"]]
    assert [shard.index for shard in shards] == [0, 1, 2, 3]


def test_global_dedup_across_shards_and_same_output_for_any_process_count(tmp_path: Path) -> None:
    planted = write_inputs(tmp_path / "in")
    one = prepare([tmp_path / "in"], tmp_path / "one", config(1, tmp_path), keep_removed=True)
    assert one["input_shards"] == 6 and one["accounted"]
    steps = {step["name"]: step for step in one["steps"]}
    assert steps["exact_dedup"]["details"]["examples"] == {k: v for k, v in planted.items() if k.endswith("d0")}
    assert steps["minhash_dedup"]["removed_by_reason"] == {"near_duplicate": 4}
    assert steps["decontaminate"]["details"]["matches"][0]["document_id"] == "f1d3"
    assert steps["decontaminate"]["removed_by_reason"] == {"contaminated": 1}
    assert one["read"]["documents"] == 30 and one["read"]["files"] == 6
    kept = [d.id for d in read_documents([tmp_path / "one" / name for name in one["output"]["files"]], ReadStats())]
    assert len(kept) == 30 - len(planted) - 1 and not set(kept) & set(planted)
    assert kept == sorted(kept, key=lambda i: (int(i[1 : i.index("d")]), int(i[i.index("d") + 1 :])))  # input order
    removed = {d.id: d.meta["reason"] for d in read_documents(sorted((tmp_path / "one").glob("removed_*")), ReadStats())}
    assert removed["f1d3"] == "decontaminate:contaminated" and removed["f2d0"] == "exact_dedup:exact_duplicate"

    two = prepare([tmp_path / "in"], tmp_path / "two", config(2, tmp_path), keep_removed=True)
    assert two["executor"]["processes"] == 2
    assert output_bytes(tmp_path / "one") == output_bytes(tmp_path / "two")
    assert not (tmp_path / ".one.work").exists()


def test_resume_after_a_crash_gives_identical_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_inputs(tmp_path / "in")
    prepare([tmp_path / "in"], tmp_path / "reference", config(1, tmp_path), keep_removed=True)

    original = executor.run_stage
    calls: list[tuple[int, int]] = []

    def crash_in_stage_one(task):
        calls.append((task.stage.index, task.shard.index))
        if task.stage.index == 1 and task.shard.index == 3:
            raise KeyboardInterrupt  # as Ctrl-C would, half-way through a stage
        return original(task)

    monkeypatch.setattr(executor, "run_stage", crash_in_stage_one)
    with pytest.raises(KeyboardInterrupt):
        prepare([tmp_path / "in"], tmp_path / "out", config(1, tmp_path), keep_removed=True)
    assert not (tmp_path / "out").exists() and (tmp_path / ".out.work" / "stage1" / "00002.done.json").exists()
    assert calls == [(0, k) for k in range(6)] + [(1, k) for k in range(4)]

    calls.clear()
    monkeypatch.setattr(executor, "run_stage", lambda task: calls.append((task.stage.index, task.shard.index)) or original(task))
    prepare([tmp_path / "in"], tmp_path / "out", config(1, tmp_path), keep_removed=True)
    assert calls == [(1, 3), (1, 4), (1, 5)] + [(2, k) for k in range(6)]  # finished work is not redone
    assert output_bytes(tmp_path / "out") == output_bytes(tmp_path / "reference")


def test_changed_settings_start_over(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_inputs(tmp_path / "in", files=3)
    original = executor.run_stage

    def crash(task):
        if task.stage.index == 1:
            raise RuntimeError("simulated crash")
        return original(task)

    monkeypatch.setattr(executor, "run_stage", crash)
    with pytest.raises(RuntimeError):
        prepare([tmp_path / "in"], tmp_path / "out", config(1, tmp_path))
    monkeypatch.setattr(executor, "run_stage", original)
    changed = config(1, tmp_path)
    changed.minhash_dedup.threshold = 0.9
    manifest = prepare([tmp_path / "in"], tmp_path / "out", changed)
    assert manifest["settings"]["minhash_dedup"]["threshold"] == 0.9 and manifest["accounted"]


def test_killed_cli_run_resumes_to_identical_output(tmp_path: Path) -> None:
    write_inputs(tmp_path / "in", files=8, per_file=40)
    settings = config(2, tmp_path)
    (tmp_path / "pipeline.toml").write_text(
        f'steps = {json.dumps(STEPS)}\n[decontaminate]\nbenchmarks = ["{settings.decontaminate.benchmarks[0]}"]\n[executor]\ninput_shard_mb = 0.001\n'
    )
    prepare([tmp_path / "in"], tmp_path / "reference", config(1, tmp_path))
    cli = [sys.executable, "-c", "from scratchlm.cli import main; main()", "-q", "data", "prepare", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--config", str(tmp_path / "pipeline.toml"), "--set", "executor.processes=2"]

    run = subprocess.Popen(cli, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    markers = tmp_path / ".out.work" / "stage0"
    deadline = time.monotonic() + 120
    while not list(markers.glob("*.done.json")) and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert run.poll() is None, "the run finished before it could be killed; give it more work"
    os.killpg(run.pid, signal.SIGKILL)  # the whole group: the parent and its worker processes
    run.wait()
    assert not (tmp_path / "out").exists()

    finished = subprocess.run(cli, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr
    assert output_bytes(tmp_path / "out") == output_bytes(tmp_path / "reference")


def test_ray_executor_gives_the_same_output(tmp_path: Path) -> None:
    pytest.importorskip("ray", reason="the Ray executor needs the ray extra (pip install scratchlm[ray])")
    write_inputs(tmp_path / "in")
    prepare([tmp_path / "in"], tmp_path / "local", config(1, tmp_path))
    settings = config(2, tmp_path)
    settings.executor.kind = "ray"
    manifest = prepare([tmp_path / "in"], tmp_path / "ray", settings)
    assert manifest["executor"]["kind"] == "ray"
    assert output_bytes(tmp_path / "ray") == output_bytes(tmp_path / "local")
