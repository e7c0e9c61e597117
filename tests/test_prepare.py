"""`data prepare` end to end: every document is either written or counted with its reason."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import synthetic_text

from scratchlm.data.documents import ReadStats, read_documents
from scratchlm.data.prepare import PrepareConfig, prepare
from scratchlm.errors import UserError
from scratchlm.tokenizer.train import TokenizerTrainConfig, train_from_texts

pytest.importorskip("fasttext", reason="language ID needs the data extra (pip install scratchlm[data])")

ENGLISH = (
    "The committee met on a quiet morning to review the plans for the new library. Everyone agreed that the "
    "reading rooms should face the river, and that the children's section needed more light. After a long "
    "discussion about the budget, they decided to ask the city for a small grant. The architect promised to "
    "return with revised drawings within two weeks, and the meeting ended with coffee and cake for all."
)
FRENCH = (
    "Le comité s'est réuni un matin tranquille pour examiner les plans de la nouvelle bibliothèque. Tout le "
    "monde a convenu que les salles de lecture devaient donner sur la rivière et que la section des enfants "
    "avait besoin de plus de lumière. Après une longue discussion sur le budget, ils ont décidé de demander "
    "une petite subvention à la ville."
)


def test_prepare_counts_every_document(tmp_path: Path) -> None:
    lines = [
        {"id": "a", "text": ENGLISH},
        {"id": "b", "text": ENGLISH.upper().replace(".", " .")},  # exact duplicate after normalization
        {"id": "c", "text": FRENCH},
        {"id": "d", "text": "asdf qwer zxcv"},
    ]
    source = tmp_path / "in.jsonl"
    source.write_text("\n".join(json.dumps(line) for line in lines) + "\n{broken json\n")
    manifest = prepare([source], tmp_path / "out", PrepareConfig(steps=["clean", "exact_dedup", "langid"]), keep_removed=True)

    assert manifest["accounted"] and manifest["read"]["malformed_lines"] == 1
    kept = list(read_documents([tmp_path / "out" / name for name in manifest["output"]["files"]], ReadStats()))
    assert [d.id for d in kept] == ["a"] and kept[0].meta["language"] == "en"
    reasons = {s["name"]: s["removed_by_reason"] for s in manifest["steps"]}
    assert reasons["langid"] == {"language_fr": 1, "low_language_score": 1}
    assert reasons["exact_dedup"] == {"exact_duplicate": 1}
    removed = list(read_documents([tmp_path / "out" / "removed_00000.jsonl.zst"], ReadStats()))
    assert sorted((d.id, d.meta["reason"]) for d in removed) == [("b", "exact_dedup:exact_duplicate"), ("c", "langid:language_fr"), ("d", "langid:low_language_score")]


def test_prepare_with_tokenizer_writes_shards(tmp_path: Path) -> None:
    texts = [synthetic_text(seed, 400) for seed in range(6)]
    source = tmp_path / "docs"
    source.mkdir()
    for i, text in enumerate(texts):
        (source / f"{i}.txt").write_text(text)
    tokenizer = train_from_texts(texts, TokenizerTrainConfig(vocab_size=300))
    tokenizer.save(tmp_path / "tok")
    config = PrepareConfig(steps=["clean", "exact_dedup", "minhash_dedup"])
    config.shards.val_fraction = 0.2
    prepare([source], tmp_path / "out", config, tokenizer_path=tmp_path / "tok")
    shards = json.loads((tmp_path / "out" / "shards" / "manifest.json").read_text())
    assert shards["splits"]["train"]["documents"] + shards["splits"]["val"]["documents"] == 6


def test_prepare_errors_and_cli(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="benchmarks is empty"):
        PrepareConfig(steps=["clean", "decontaminate"])
    with pytest.raises(UserError, match="Unknown step"):
        PrepareConfig(steps=["cleaning"])
    (tmp_path / "a.txt").write_text(ENGLISH)
    cli = [sys.executable, "-c", "from scratchlm.cli import main; main()", "-q", "data", "prepare", "--input", str(tmp_path / "a.txt"), "--output", str(tmp_path / "out")]
    result = subprocess.run([*cli, "--set", "steps=[\"clean\", \"quality\"]"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["output"]["documents"] == 1
    typo = subprocess.run([*cli, "--set", "langid.min_scor=0.5"], capture_output=True, text=True, timeout=120)
    assert typo.returncode == 2 and "did you mean 'langid.min_score'" in typo.stderr


def test_bad_output_and_tokenizer_are_refused_before_any_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import scratchlm.data.prepare as prepare_module

    def must_not_run(*args: object, **kwargs: object) -> None:
        raise AssertionError("started work before checking the paths")

    monkeypatch.setattr(prepare_module, "plan_input_shards", must_not_run)
    (tmp_path / "a.txt").write_text(ENGLISH)
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match=r"^--output .*file is a file, not a directory"):
        prepare([tmp_path / "a.txt"], tmp_path / "file")
    with pytest.raises(UserError, match=r"^--output .*file/out lies under .*file, which is a file"):
        prepare([tmp_path / "a.txt"], tmp_path / "file" / "out")
    with pytest.raises(UserError, match="No tokenizer"):
        prepare([tmp_path / "a.txt"], tmp_path / "out", tokenizer_path=tmp_path / "no-tokenizer")
    assert not (tmp_path / "out").exists()


def test_prepare_command_output_errors_are_one_line(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text(ENGLISH)
    (tmp_path / "file").write_text("x")
    for output in (tmp_path / "file", tmp_path / "file" / "out"):
        cli = [sys.executable, "-c", "from scratchlm.cli import main; main()", "-q", "data", "prepare", "--input", str(tmp_path / "a.txt"), "--output", str(output)]
        result = subprocess.run(cli, capture_output=True, text=True, timeout=120)
        assert result.returncode == 2, result.stderr
        assert result.stderr.startswith("error:") and "Traceback" not in result.stderr


def _one_process(steps: list[str]) -> PrepareConfig:
    config = PrepareConfig(steps=steps)
    config.executor.processes = 1
    return config


def _cli_error(argv: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> str:
    from scratchlm.cli import main

    monkeypatch.setattr(sys, "argv", ["scratchlm", "-q", *argv])  # -q: no progress lines
    with pytest.raises(SystemExit) as exit:
        main()
    assert exit.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_earlier_output_is_replaced_only_with_overwrite(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "a.txt").write_text(ENGLISH)
    (tmp_path / "b.txt").write_text(FRENCH)
    first = prepare([tmp_path / "a.txt"], tmp_path / "out", _one_process(["clean"]))
    before = (tmp_path / "out" / "manifest.json").read_text()
    with pytest.raises(UserError, match=r"^--output .*out already holds the documents of an earlier `data prepare`; pass --overwrite"):
        prepare([tmp_path / "b.txt"], tmp_path / "out", _one_process(["clean"]))
    err = _cli_error(["data", "prepare", "--input", str(tmp_path / "b.txt"), "--output", str(tmp_path / "out"), "--set", 'steps=["clean"]'], monkeypatch, capsys)
    assert "--overwrite" in err
    assert (tmp_path / "out" / "manifest.json").read_text() == before and not (tmp_path / ".out.work").exists()
    second = prepare([tmp_path / "b.txt"], tmp_path / "out", _one_process(["clean"]), overwrite=True)
    assert first["inputs"] != second["inputs"] and json.loads((tmp_path / "out" / "manifest.json").read_text())["inputs"] == second["inputs"]


def test_no_readable_document_is_an_error_naming_what_was_skipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "bad.jsonl").write_bytes(b'{broken json\n{"text": 3}\n')
    (inputs / "empty.txt").write_bytes(b"")
    (inputs / "blob.bin").write_bytes(b"\x7fELF\x00\x01\x02" * 10)
    with pytest.raises(UserError) as error:
        prepare([inputs], tmp_path / "out", _one_process(["clean"]))
    message = str(error.value)
    assert message.startswith("No documents could be read from the inputs"), message
    assert f"2 malformed lines (first: {inputs / 'bad.jsonl'}:1: bad JSON" in message
    assert f"1 binary file (first: {inputs / 'blob.bin'}, NUL bytes" in message and "1 empty file" in message
    assert not (tmp_path / "out").exists() and not (tmp_path / ".out.work").exists()
    err = _cli_error(["data", "prepare", "--input", str(inputs), "--output", str(tmp_path / "out"), "--set", 'steps=["clean"]', "--processes", "1"], monkeypatch, capsys)
    assert "malformed line" in err and "binary file" in err


def test_tokenizer_without_eot_is_refused_before_any_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import scratchlm.data.prepare as prepare_module

    def must_not_run(*args: object, **kwargs: object) -> None:
        raise AssertionError("started work before checking the tokenizer")

    monkeypatch.setattr(prepare_module, "plan_input_shards", must_not_run)
    (tmp_path / "a.txt").write_text(ENGLISH)
    train_from_texts([ENGLISH], TokenizerTrainConfig(vocab_size=300, special_tokens=[])).save(tmp_path / "tok")
    with pytest.raises(UserError, match=r"has no <\|endoftext\|> token"):
        prepare([tmp_path / "a.txt"], tmp_path / "out", tokenizer_path=tmp_path / "tok")
    err = _cli_error(["data", "prepare", "--input", str(tmp_path / "a.txt"), "--output", str(tmp_path / "out"), "--tokenizer", str(tmp_path / "tok")], monkeypatch, capsys)
    assert "endoftext" in err and not (tmp_path / "out").exists()


def test_an_output_that_cannot_be_written_is_one_sentence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    from scratchlm.data import prepare as prepare_module

    def read_only(*_: object) -> None:
        raise OSError(errno.EROFS, "Read-only file system")

    (tmp_path / "a.txt").write_text(ENGLISH)
    monkeypatch.setattr(prepare_module, "open_work_dir", read_only)
    with pytest.raises(UserError, match=r"Cannot write the work directory .*\.out\.work beside --output \(Read-only file system\); choose another --output\."):
        prepare([tmp_path / "a.txt"], tmp_path / "out", _one_process(["clean"]))
