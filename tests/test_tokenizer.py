"""The tokenizer against independent references: tiktoken, HF tokenizers and transformers."""

from __future__ import annotations

import json
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
