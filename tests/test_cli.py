"""The command line, run as a user runs it: a real subprocess of the installed entry point."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import synthetic_text

# Run the CLI the way the console script does, with the interpreter of this test run.
CLI = [sys.executable, "-c", "from scratchlm.cli import main; main()"]


def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], input=stdin, capture_output=True, text=True, timeout=120)


def test_train_encode_decode_stats(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text(synthetic_text(1, 3000))
    (corpus / "b.jsonl").write_text('{"text": "hello world, hello tokenizer"}\n{"text": "second line"}\n')
    result = run("-q", "tokenizer", "train", "--input", str(corpus), "--vocab-size", "400", "--set", "pattern=gpt4", "--output", str(tmp_path / "tok"))
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # -q silences the progress bars and status lines
    assert (tmp_path / "tok" / "tokenizer.json").is_file()

    encoded = run("tokenizer", "encode", str(tmp_path / "tok"), "hello world 123")
    ids = encoded.stdout.split()
    assert encoded.returncode == 0 and ids and all(i.isdigit() for i in ids)
    decoded = run("tokenizer", "decode", str(tmp_path / "tok"), stdin=encoded.stdout)
    assert decoded.stdout == "hello world 123\n"

    stats = run("tokenizer", "stats", str(tmp_path / "tok"), "--input", str(corpus / "a.txt"))
    assert stats.returncode == 0, stats.stderr
    assert "bytes per token" in stats.stderr and "gpt4" in stats.stderr


def test_user_errors_are_one_line_and_exit_2(tmp_path: Path) -> None:
    cases = [
        ("tokenizer", "train", "--input", str(tmp_path / "missing.txt"), "--output", str(tmp_path / "t")),
        ("tokenizer", "train", "--input", str(tmp_path), "--vocab-size", "100", "--output", str(tmp_path / "t")),
        ("tokenizer", "train", "--input", str(tmp_path), "--pattern", "nope", "--output", str(tmp_path / "t")),
        ("tokenizer", "train", "--input", str(tmp_path), "--set", "vocab_sise=300", "--output", str(tmp_path / "t")),
        ("tokenizer", "encode", str(tmp_path / "no-tokenizer"), "text"),
    ]
    for args in cases:
        result = run(*args)
        assert result.returncode == 2, (args, result.stderr)
        assert result.stderr.startswith("error:"), (args, result.stderr)
        assert "Traceback" not in result.stderr
    result = run("tokenizer", "train", "--input", str(tmp_path), "--set", "vocab_sise=300", "--output", str(tmp_path / "t"))
    assert "did you mean 'vocab_size'" in result.stderr


def test_empty_input_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "empty.txt").write_text("")
    result = run("tokenizer", "train", "--input", str(tmp_path / "empty.txt"), "--vocab-size", "300", "--output", str(tmp_path / "t"))
    assert result.returncode == 2 and "no text" in result.stderr


def test_help_lists_documented_settings() -> None:
    result = run("tokenizer", "train", "--help")
    assert result.returncode == 0
    assert "--vocab-size" in result.stdout and "256 byte tokens" in result.stdout
