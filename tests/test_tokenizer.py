"""The tokenizer against independent references: tiktoken, HF tokenizers and transformers."""

from __future__ import annotations

import builtins
import errno
import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import tiktoken
import tiktoken.load
from conftest import shared_file, synthetic_text
from hypothesis import given, settings
from hypothesis import strategies as st

from scratchlm.errors import UserError
from scratchlm.tokenizer.bpe import PATTERNS
from scratchlm.tokenizer.formats import derive_merges, load_gpt2_files, load_hf_json
from scratchlm.tokenizer.tokenizer import EOT, Tokenizer, load_tokenizer
from scratchlm.tokenizer.train import TokenizerTrainConfig, train_from_texts

HARD_STRINGS = [
    "",
    "Hello, world!",
    "emoji 👋🏽👨‍👩‍👧‍👦 and flags 🇫🇷🇯🇵",
    "CJK 日本語のテキスト 中文 한국어",
    "combining e\u0301 a\u0308 \u0915\u094d\u0937 Zalgo Z\u0351\u036b\u0343",
    "runs of spaces     and\ttabs\t\t and\n\n\nnewlines\r\n\r\n end   ",
    "   leading spaces and trailing   ",
    "digits 1 12 123 1234 12345 3.14159 1,000,000 007",
    "contractions it's we'll they've I'm you'd she's DON'T I'LL 'quoted'",
    "mixed ÀÉÎÕÜ ñ ß ﬁ ligature, Ω≈ç√∫, «quotes» “curly” — dash … ellipsis",
    "\x00\x01 control \x7f and \ufeff BOM and \u200b zero width",
    "<|endoftext|> appears as text",
]


@pytest.fixture(scope="module")
def gpt2() -> Tokenizer:
    return load_gpt2_files(shared_file("gpt2/encoder.json"), shared_file("gpt2/vocab.bpe"))


@pytest.fixture(scope="module")
def gpt2_tiktoken() -> tiktoken.Encoding:
    """tiktoken's own GPT-2 loader over the same files: an independent reading of them."""
    ranks = tiktoken.load.data_gym_to_mergeable_bpe_ranks(str(shared_file("gpt2/vocab.bpe")), str(shared_file("gpt2/encoder.json")))
    return tiktoken.Encoding("gpt2-reference", pat_str=PATTERNS["gpt2"], mergeable_ranks=ranks, special_tokens={EOT: 50256})


@pytest.fixture(scope="module")
def trained() -> Tokenizer:
    texts = [synthetic_text(seed, 4000) for seed in range(3)] + HARD_STRINGS
    return train_from_texts(texts, TokenizerTrainConfig(vocab_size=700, special_tokens=[EOT, "<|user|>"]))


def test_gpt2_files_encode_like_tiktoken_on_tinyshakespeare(gpt2: Tokenizer, gpt2_tiktoken: tiktoken.Encoding) -> None:
    text = shared_file("tinyshakespeare.txt").read_text(encoding="utf-8")
    assert gpt2.vocab_size == 50257 and gpt2.eot_id == 50256
    ids = gpt2.encode(text)
    assert ids == gpt2_tiktoken.encode(text)
    assert gpt2.decode(ids) == text


@pytest.mark.parametrize("text", HARD_STRINGS)
def test_gpt2_files_encode_like_tiktoken_on_hard_strings(gpt2: Tokenizer, gpt2_tiktoken: tiktoken.Encoding, text: str) -> None:
    assert gpt2.encode_ordinary(text) == gpt2_tiktoken.encode_ordinary(text)
    assert gpt2.reference_encode(text) == gpt2_tiktoken.encode_ordinary(text)
    assert gpt2.decode(gpt2.encode_ordinary(text)) == text


def test_gpt2_known_ids(gpt2: Tokenizer) -> None:
    # Published GPT-2 ids: "Hello" = 15496, " world" = 995.
    assert gpt2.encode("Hello world<|endoftext|>", allowed_special="all") == [15496, 995, 50256]


def test_reference_encoder_agrees_with_tiktoken_on_tinyshakespeare(gpt2: Tokenizer) -> None:
    text = shared_file("tinyshakespeare.txt").read_text(encoding="utf-8")[:100_000]
    assert gpt2.reference_encode(text) == gpt2.encode_ordinary(text)


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=200))
def test_roundtrip_and_reference_agree_on_arbitrary_unicode(trained: Tokenizer, text: str) -> None:
    # Surrogates cannot be encoded as UTF-8 at all; tiktoken and we both refuse them alike.
    text = text.encode("utf-8", errors="replace").decode("utf-8")
    ids = trained.encode_ordinary(text)
    assert trained.decode(ids) == text
    assert trained.reference_encode(text) == ids


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 699), max_size=50))
def test_decoding_any_id_sequence_never_fails(trained: Tokenizer, ids: list[int]) -> None:
    raw = trained.decode_bytes(ids)
    assert trained.decode(ids) == raw.decode("utf-8", errors="replace")


def test_out_of_range_id_is_a_clear_error(trained: Tokenizer) -> None:
    with pytest.raises(UserError, match="out of range"):
        trained.decode([trained.vocab_size])


def test_special_tokens_allowed_disallowed_and_plain(trained: Tokenizer) -> None:
    text = f"a{EOT}b"
    with pytest.raises(UserError, match="special token"):
        trained.encode(text)
    allowed = trained.encode(text, allowed_special="all")
    assert trained.special_tokens[EOT] in allowed
    assert trained.encode(text, allowed_special={EOT}) == allowed == trained.reference_encode(text, allowed_special="all")
    plain = trained.encode(text, disallowed_special=())
    assert trained.special_tokens[EOT] not in plain
    assert plain == trained.encode_ordinary(text) == trained.reference_encode(text)
    assert trained.decode(allowed) == trained.decode(plain) == text


def test_trained_tokenizer_ids_and_sizes(trained: Tokenizer) -> None:
    assert trained.vocab_size == 700
    assert trained.special_tokens == {EOT: 698, "<|user|>": 699}
    assert len(set(trained.ranks)) == len(trained.ranks) == 698
    assert derive_merges(trained)[0] == (trained.ranks.index(trained.ranks[256][:1]), trained.ranks.index(trained.ranks[256][1:]))


def test_training_twice_gives_the_same_ranks() -> None:
    texts = [synthetic_text(7, 3000)]
    first = train_from_texts(texts, TokenizerTrainConfig(vocab_size=600, workers=1))
    second = train_from_texts(texts, TokenizerTrainConfig(vocab_size=600, workers=2))
    assert first.ranks == second.ranks and first.hash == second.hash


def test_save_load_roundtrip_and_hash_check(trained: Tokenizer, tmp_path: Path) -> None:
    trained.save(tmp_path / "tok")
    loaded = Tokenizer.load(tmp_path / "tok")
    assert loaded == trained and loaded.hash == trained.hash
    assert load_tokenizer(tmp_path / "tok") == trained
    ranks_file = tmp_path / "tok" / "ranks.tiktoken"
    lines = ranks_file.read_text().splitlines()
    lines[300], lines[301] = lines[301].split()[0] + " 300", lines[300].split()[0] + " 301"
    ranks_file.write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError, match="hash"):
        Tokenizer.load(tmp_path / "tok")


def test_our_ranks_file_is_tiktoken_format(trained: Tokenizer, tmp_path: Path) -> None:
    trained.save(tmp_path / "tok")
    ranks = tiktoken.load.load_tiktoken_bpe(str(tmp_path / "tok" / "ranks.tiktoken"))
    assert ranks == {token: rank for rank, token in enumerate(trained.ranks)}


@pytest.mark.parametrize("pattern", ["gpt2", "gpt4"])
def test_hf_tokenizers_encode_like_us(pattern: str, tmp_path: Path) -> None:
    tokenizers = pytest.importorskip("tokenizers", reason="HF tokenizers is the reference here; install the dev extra")
    texts = [synthetic_text(seed, 3000) for seed in range(2)] + HARD_STRINGS
    ours = train_from_texts(texts, TokenizerTrainConfig(vocab_size=800, pattern=pattern))
    ours.save(tmp_path)
    theirs = tokenizers.Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    held_out = [synthetic_text(99, 2000), *HARD_STRINGS]
    try:
        held_out.append(shared_file("tinyshakespeare.txt").read_text(encoding="utf-8")[:200_000])
    except pytest.skip.Exception:
        pass
    for text in held_out:
        assert theirs.encode(text).ids == ours.encode(text, allowed_special="all")
    assert load_hf_json(tmp_path / "tokenizer.json") == Tokenizer(ours.ranks, ours.pattern, ours.special_tokens, name=tmp_path.name)


def test_transformers_fast_tokenizer_reads_ours(trained: Tokenizer, tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers", reason="transformers is the reference here; install the dev extra")
    trained.save(tmp_path)
    fast = transformers.PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "tokenizer.json"))
    for text in [synthetic_text(5, 500), *HARD_STRINGS[:-1]]:
        assert fast(text)["input_ids"] == trained.encode(text)
        assert fast.decode(trained.encode(text)) == text


def test_gpt2_exports_to_hf_and_back(gpt2: Tokenizer, tmp_path: Path) -> None:
    tokenizers = pytest.importorskip("tokenizers", reason="HF tokenizers is the reference here; install the dev extra")
    gpt2.save(tmp_path)
    theirs = tokenizers.Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    merges = json.loads((tmp_path / "tokenizer.json").read_text())["model"]["merges"]
    lines = shared_file("gpt2/vocab.bpe").read_text(encoding="utf-8").splitlines()[1:]
    assert [" ".join(m) for m in merges] == [line for line in lines if line]
    for text in HARD_STRINGS:
        assert theirs.encode(text).ids == gpt2.encode(text, allowed_special="all")


@pytest.mark.parametrize(
    ("settings_", "message"),
    [
        ({"vocab_size": 200}, "leaves no room"),
        ({"vocab_size": 257}, "leaves no room"),
        ({"pattern": "gpt5"}, "Unknown pattern"),
        ({"special_tokens": ["<a>", "<a>"]}, "twice"),
        ({"max_token_bytes": 3}, "at least 4"),
        ({"max_token_bytes": -1}, "max_token_bytes"),
    ],
)
def test_bad_training_settings_are_clear_errors(settings_: dict, message: str) -> None:
    with pytest.raises(UserError, match=message):
        TokenizerTrainConfig(**settings_)


def test_empty_corpus_is_a_clear_error() -> None:
    with pytest.raises(UserError, match="no text"):
        train_from_texts(["", ""], TokenizerTrainConfig(vocab_size=300))


def test_load_tokenizer_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="No tokenizer"):
        load_tokenizer(tmp_path / "missing")
    with pytest.raises(UserError, match="holds no tokenizer"):
        load_tokenizer(tmp_path)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(UserError, match="JSON"):
        load_tokenizer(bad)


# ---- long words, atomic saves, the train command's --output -------------------------------

CLI = [sys.executable, "-c", "from scratchlm.cli import main; main()"]
PHRASE = "thequickbrownfoxjumpsoverthelazydogss"  # 37 letters, no spaces


@contextmanager
def deadline(seconds: int) -> Iterator[None]:
    """Fail instead of hanging: a pure-Python loop past `seconds` is interrupted."""

    def expire(signum: int, frame: object) -> None:
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize("text", ["a" * 1_000_000, (PHRASE * 27_028)[:1_000_000]], ids=["one-letter", "phrase"])
def test_one_megabyte_word_trains_saves_and_loads_in_bounded_time(text: str, tmp_path: Path) -> None:
    started = time.perf_counter()
    with deadline(60):
        tokenizer = train_from_texts([text], TokenizerTrainConfig(vocab_size=400, workers=1))
        tokenizer.save(tmp_path / "tok")
        loaded = Tokenizer.load(tmp_path / "tok")
        assert loaded.decode(loaded.encode(text)) == text
    assert time.perf_counter() - started < 20
    assert max(len(token) for token in tokenizer.ranks) == 128
    assert (tmp_path / "tok" / "tokenizer.json").stat().st_size < 100_000


def test_unbounded_tokens_still_export_to_hf_quickly(tmp_path: Path) -> None:
    # Without a limit "a" * 100_000 becomes tokens of up to 100,000 bytes; deriving their merges
    # by rescanning every pair took hours, a heap takes about a second.
    with deadline(60):
        tokenizer = train_from_texts(["a" * 100_000], TokenizerTrainConfig(vocab_size=400, workers=1, max_token_bytes=0))
        assert max(len(token) for token in tokenizer.ranks) == 100_000
        tokenizer.save(tmp_path / "tok")
        assert load_hf_json(tmp_path / "tok" / "tokenizer.json").ranks == tokenizer.ranks


def test_max_token_bytes_bounds_tokens_without_splitting_characters() -> None:
    text = "日本語のテキスト" * 200 + " " + "é" * 1000
    tokenizer = train_from_texts([text], TokenizerTrainConfig(vocab_size=600, workers=1, max_token_bytes=10))
    assert max(len(token) for token in tokenizer.ranks) == 10
    # Cut between characters, the pieces are whole characters (three of 3 bytes, five of 2 bytes),
    # so these are learned; cut every 10 bytes, the pieces would start mid-character.
    assert "日本語".encode() in tokenizer.ranks and ("é" * 5).encode() in tokenizer.ranks
    assert tokenizer.decode(tokenizer.encode(text)) == text


def _fail_second_file_written(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the second file opened for writing fail, as a full disk would, mid-save."""
    real_open = io.open
    written: list[object] = []

    def failing_open(file: object, mode: str = "r", *args: object, **kwargs: object) -> object:
        if "w" in mode:
            written.append(file)
            if len(written) == 2:
                raise OSError(errno.ENOSPC, "No space left on device (simulated)", str(file))
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(io, "open", failing_open)
    monkeypatch.setattr(builtins, "open", failing_open)


def test_interrupted_save_keeps_the_old_tokenizer(trained: Tokenizer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    old = train_from_texts([synthetic_text(3, 1000)], TokenizerTrainConfig(vocab_size=300, workers=1))
    old.save(tmp_path / "tok")
    with monkeypatch.context() as patch:
        _fail_second_file_written(patch)
        with pytest.raises(OSError, match="simulated"):
            trained.save(tmp_path / "tok")
    assert Tokenizer.load(tmp_path / "tok") == old
    assert os.listdir(tmp_path) == ["tok"]  # no temporary or half-written directory is left


def test_interrupted_first_save_leaves_nothing(trained: Tokenizer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with monkeypatch.context() as patch:
        _fail_second_file_written(patch)
        with pytest.raises(OSError, match="simulated"):
            trained.save(tmp_path / "tok")
    assert os.listdir(tmp_path) == []
    with pytest.raises(UserError, match="No tokenizer"):
        load_tokenizer(tmp_path / "tok")


def test_save_replaces_a_tokenizer_whole(trained: Tokenizer, tmp_path: Path) -> None:
    old = train_from_texts([synthetic_text(3, 1000)], TokenizerTrainConfig(vocab_size=300, workers=1))
    old.save(tmp_path / "tok")
    (tmp_path / "tok" / "stale.txt").write_text("from before")
    trained.save(tmp_path / "tok")
    assert Tokenizer.load(tmp_path / "tok") == trained
    assert sorted(os.listdir(tmp_path / "tok")) == ["ranks.tiktoken", "scratchlm_tokenizer.json", "tokenizer.json"]
    assert os.listdir(tmp_path) == ["tok"]


def test_train_checks_output_before_reading_input(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import scratchlm.tokenizer.train as train_module

    def must_not_train(*args: object, **kwargs: object) -> Tokenizer:
        raise AssertionError("trained before checking --output")

    monkeypatch.setattr(train_module, "train_from_texts", must_not_train)
    (tmp_path / "a.txt").write_text(synthetic_text(1, 200))
    (tmp_path / "file").write_text("x")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    cases = [
        (tmp_path / "file", False, "is a file, not a directory"),
        (tmp_path / "file" / "tok", False, "lies under"),
        (tmp_path / "other", True, "holds files that are not a tokenizer's"),
    ]
    for output, overwrite, message in cases:
        with pytest.raises(UserError, match=message):
            train_module.train([tmp_path / "a.txt"], output, TokenizerTrainConfig(vocab_size=300), overwrite=overwrite)
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"


def test_train_command_output_errors_and_overwrite(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text(synthetic_text(1, 500))
    (tmp_path / "file").write_text("x")
    train = [*CLI, "-q", "tokenizer", "train", "--input", str(tmp_path / "a.txt"), "--vocab-size", "300"]
    for output in (tmp_path / "file", tmp_path / "file" / "tok"):
        result = subprocess.run([*train, "--output", str(output)], capture_output=True, text=True, timeout=120)
        assert result.returncode == 2, result.stderr
        assert result.stderr.startswith("error:") and "Traceback" not in result.stderr

    old = train_from_texts([synthetic_text(3, 1000)], TokenizerTrainConfig(vocab_size=280, workers=1))
    old.save(tmp_path / "tok")
    refused = subprocess.run([*train, "--output", str(tmp_path / "tok")], capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and refused.stderr.startswith("error:") and "--overwrite" in refused.stderr
    assert Tokenizer.load(tmp_path / "tok") == old
    replaced = subprocess.run([*train, "--output", str(tmp_path / "tok"), "--overwrite"], capture_output=True, text=True, timeout=120)
    assert replaced.returncode == 0, replaced.stderr
    assert Tokenizer.load(tmp_path / "tok").vocab_size == 300


def test_presplit_progress_bar_has_a_total_in_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import scratchlm.tokenizer.train as train_module

    totals: dict[str, list[tuple[float | None, str]]] = {}
    real_progress_bar = train_module.progress_bar

    @contextmanager
    def recording(description: str, total: float | None, unit: str = "") -> Iterator[object]:
        totals.setdefault(description, []).append((total, unit))
        with real_progress_bar(description, total, unit) as bar:
            yield bar

    monkeypatch.setattr(train_module, "progress_bar", recording)
    texts = [synthetic_text(1, 300), "héllo wörld, 日本語 " * 20]
    train_from_texts(texts, TokenizerTrainConfig(vocab_size=300, workers=1))
    (tmp_path / "in").mkdir()
    for i, text in enumerate(texts):
        (tmp_path / "in" / f"{i}.txt").write_text(text, encoding="utf-8")
    train_module.train([tmp_path / "in"], tmp_path / "tok", TokenizerTrainConfig(vocab_size=300, workers=1))
    (tmp_path / "in" / "more.jsonl").write_text('{"text": "hello"}\n')
    train_module.train([tmp_path / "in"], tmp_path / "tok2", TokenizerTrainConfig(vocab_size=300, workers=1))
    size = sum(len(text.encode()) for text in texts)
    assert totals["pre-splitting"] == [(size, "bytes"), (size, "bytes"), (None, "bytes")]


def test_train_on_only_skipped_files_says_why(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from scratchlm.cli import main

    (tmp_path / "ls").write_bytes(Path("/bin/ls").read_bytes() if Path("/bin/ls").is_file() else b"\x7fELF\x02\x01\x01\x00" * 64)
    monkeypatch.setattr(sys, "argv", ["scratchlm", "-q", "tokenizer", "train", "--input", str(tmp_path / "ls"), "--vocab-size", "300", "--set", "workers=1", "--output", str(tmp_path / "tok")])
    with pytest.raises(SystemExit) as exit:
        main()
    assert exit.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and err.count("\n") == 1, err
    assert f"1 binary file (first: {tmp_path / 'ls'}, NUL bytes" in err and "empty" not in err, err

    import scratchlm.tokenizer.train as train_module

    (tmp_path / "empty.txt").write_bytes(b"")
    with pytest.raises(UserError, match=r"skipped 1 binary file .* and 1 empty file; fix or replace those files"):
        train_module.train([tmp_path / "ls", tmp_path / "empty.txt"], tmp_path / "tok", TokenizerTrainConfig(vocab_size=300, workers=1))
    assert not (tmp_path / "tok").exists()
