"""`scratchlm data stats`: numbers for documents and shards directories, checked independently, and the CLI."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import zstandard
from conftest import synthetic_text

from scratchlm.data.documents import Document
from scratchlm.data.prepare import PrepareConfig, prepare
from scratchlm.data.shards import ShardConfig, write_shards
from scratchlm.data.stats import detect, documents_stats, length_buckets, shards_stats
from scratchlm.errors import UserError
from scratchlm.tokenizer.tokenizer import Tokenizer
from scratchlm.tokenizer.train import TokenizerTrainConfig, train_from_texts

CLI = [sys.executable, "-c", "from scratchlm.cli import main; main()"]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return train_from_texts([synthetic_text(seed, 2000) for seed in range(2)], TokenizerTrainConfig(vocab_size=400, workers=1))


@pytest.fixture()
def documents_dir(tmp_path: Path) -> Path:
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    texts = [synthetic_text(seed, 30 + 40 * seed) for seed in range(5)]
    for i, text in enumerate(texts):
        (inputs / f"doc{i}.txt").write_text(text)
    (inputs / "copy.txt").write_text(texts[2])  # an exact duplicate of doc2
    out = tmp_path / "documents"
    config = PrepareConfig(steps=["clean", "exact_dedup"])
    config.executor.input_shard_mb = 0.002  # input shards of ~2 KB: several output files
    prepare([inputs], out, config)
    return out


def kept_texts(directory: Path) -> list[str]:
    """The kept documents, read straight from the zstd files without scratchlm's readers."""
    texts = []
    for path in sorted(directory.glob("documents_*.jsonl.zst")):
        data = zstandard.ZstdDecompressor().stream_reader(path.open("rb")).read()
        texts += [json.loads(line)["text"] for line in data.decode("utf-8").splitlines() if line.strip()]
    return texts


def test_documents_stats_counts_and_funnel(documents_dir: Path) -> None:
    texts = kept_texts(documents_dir)
    stats = documents_stats(documents_dir)
    assert stats["documents"] == len(texts) == 5  # six read, one duplicate removed
    assert stats["characters"] == sum(len(t) for t in texts)
    assert stats["bytes"] == sum(len(t.encode()) for t in texts)
    assert stats["max_chars"] == max(len(t) for t in texts)
    assert stats["median_chars"] == sorted(len(t) for t in texts)[2]
    assert sum(row["count"] for row in stats["histogram"]) == 5
    for row in stats["histogram"]:
        assert row["count"] == sum(row["low"] <= len(t) < row["high"] for t in texts)
    shards = json.loads((documents_dir / "manifest.json").read_text())["input_shards"]
    assert stats["files"] == shards > 1  # one per input shard of ~2 KB
    assert stats["read"] == 6 and stats["removed"] == 1 and stats["accounted"] is True
    names = [step["name"] for step in stats["steps"]]
    assert names == ["clean", "exact_dedup"]
    dedup = stats["steps"][1]
    assert (dedup["read"], dedup["kept"], dedup["removed"]) == (6, 5, 1)
    assert sum(dedup["removed_by_reason"].values()) == 1
    assert stats["languages"] == {}


def test_documents_stats_with_tokenizer(documents_dir: Path, tokenizer: Tokenizer) -> None:
    texts = kept_texts(documents_dir)
    stats = documents_stats(documents_dir, tokenizer)
    tokens = sum(len(tokenizer.encode_ordinary(t)) for t in texts)
    assert stats["tokens"] == tokens
    assert stats["bytes_per_token"] == pytest.approx(sum(len(t.encode()) for t in texts) / tokens)


def test_length_buckets_are_log_spaced() -> None:
    assert length_buckets(120) == [1, 2, 5, 10, 20, 50, 100, 200]


def test_shards_stats(tmp_path: Path, tokenizer: Tokenizer) -> None:
    docs = [Document(f"d{i}", synthetic_text(100 + i, 20 + 13 * i), {"work": f"w{i // 3}"}) for i in range(12)]
    out = tmp_path / "shards"
    manifest = write_shards(docs, tokenizer, out, ShardConfig(workers=1, shard_tokens=300, val_fraction=0.25, val_key="work"))
    stats = shards_stats(out)
    assert detect(out) == "shards"
    assert stats["vocab_size"] == tokenizer.vocab_size and stats["tokenizer_hash"] == tokenizer.hash
    assert stats["val_groups"] == manifest["split_rule"]["val_groups"] and stats["val_key"] == "work"
    val_docs = [d for d in docs if d.meta["work"] in stats["val_groups"]]
    assert stats["splits"]["val"]["documents"] == len(val_docs)
    assert stats["splits"]["val"]["bytes"] == sum(len(d.text.encode()) for d in val_docs)
    # each document adds its tokens plus one end-of-text
    assert stats["splits"]["val"]["tokens"] == sum(len(tokenizer.encode_ordinary(d.text)) + 1 for d in val_docs)
    train = stats["splits"]["train"]
    assert train["files"] == len(manifest["splits"]["train"]["files"]) > 1
    assert train["bytes_per_token"] == pytest.approx(train["bytes"] / train["tokens"])


def test_detect_rejects_other_directories(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="must be a documents directory"):
        detect(tmp_path)
    (tmp_path / "manifest.json").write_text('{"format": "something-else"}')
    with pytest.raises(UserError, match="must be a documents directory"):
        detect(tmp_path)


def test_cli_documents_and_plot(documents_dir: Path, tmp_path: Path) -> None:
    png = tmp_path / "lengths.png"
    result = run("data", "stats", str(documents_dir), "--plot", str(png))
    assert result.returncode == 0, result.stderr
    output = result.stdout + result.stderr
    assert "documents" in output and "exact_dedup" in output and "accounted" in output
    assert re.search(r"│ documents\s+│\s+5 │", output), output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_shards_and_plot(tmp_path: Path, tokenizer: Tokenizer) -> None:
    docs = [Document(f"d{i}", synthetic_text(i, 50)) for i in range(8)]
    write_shards(docs, tokenizer, tmp_path / "shards", ShardConfig(workers=1, val_fraction=0.25))
    png = tmp_path / "splits.png"
    result = run("data", "stats", str(tmp_path / "shards"), "--plot", str(png))
    assert result.returncode == 0, result.stderr
    assert "train" in result.stdout + result.stderr and tokenizer.hash[:12] in (result.stdout + result.stderr).replace("\n", "")
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_cli_random_directory_is_one_line_error(tmp_path: Path) -> None:
    (tmp_path / "junk.txt").write_text("not data")
    result = run("data", "stats", str(tmp_path))
    assert result.returncode == 2
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), lines


def test_missing_directory_is_said_not_to_exist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from scratchlm.cli import main

    missing = tmp_path / "no-such-dir"
    with pytest.raises(UserError, match=r"^.*no-such-dir does not exist; pass a documents directory"):
        detect(missing)
    monkeypatch.setattr(sys, "argv", ["scratchlm", "data", "stats", str(missing)])
    with pytest.raises(SystemExit) as exit:
        main()
    assert exit.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and err.count("\n") == 1 and "does not exist" in err and "manifest" not in err, err
