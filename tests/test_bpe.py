"""BPE training against a naive reference that recounts every pair before each merge."""

from __future__ import annotations

from collections import Counter

import regex
from conftest import synthetic_text
from hypothesis import given, settings
from hypothesis import strategies as st

from scratchlm.tokenizer.bpe import (
    PATTERNS,
    count_chunks,
    cut_chunk,
    learn_merges,
    merges_to_ranks,
    split_pieces,
)


def naive_merges(chunk_counts: dict[bytes, int], num_merges: int) -> list[tuple[int, int]]:
    """minbpe-style training: recount all pairs, merge the best (count, then smallest ids)."""
    words = {chunk: list(chunk) for chunk in chunk_counts}
    merges = []
    for new_id in range(256, 256 + num_merges):
        counts: Counter[tuple[int, int]] = Counter()
        for chunk, word in words.items():
            for pair in zip(word, word[1:]):
                counts[pair] += chunk_counts[chunk]
        if not counts:
            break
        best = min(counts, key=lambda pair: (-counts[pair], pair))
        merges.append(best)
        for chunk, word in words.items():
            merged, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                    merged.append(new_id)
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            words[chunk] = merged
    return merges


def test_incremental_merges_equal_naive_recount() -> None:
    counts = count_chunks([synthetic_text(1, 2000)], PATTERNS["gpt2"], workers=1)
    chunks = {c.encode(): n for c, n in counts.items()}
    assert learn_merges(chunks, 300) == naive_merges(chunks, 300)


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(st.binary(min_size=1, max_size=12), st.integers(1, 20), min_size=1, max_size=40), st.integers(1, 60))
def test_incremental_merges_equal_naive_on_arbitrary_bytes(chunks: dict[bytes, int], num_merges: int) -> None:
    # Repeated bytes ("aaaa") exercise overlapping pairs, the classic incremental-update bug.
    assert learn_merges(chunks, num_merges) == naive_merges(chunks, num_merges)


def test_merges_stop_when_every_chunk_is_one_token() -> None:
    merges = learn_merges({b"ab": 3, b"c": 1}, 50)
    assert merges == [(ord("a"), ord("b"))]
    assert merges_to_ranks(merges)[256] == b"ab"


@settings(max_examples=80, deadline=None)
@given(st.text(alphabet=st.sampled_from("ab \n\t.'9é"), max_size=400), st.integers(1, 30))
def test_split_pieces_never_changes_the_presplit(text: str, piece_chars: int) -> None:
    for pattern in PATTERNS.values():
        whole = regex.findall(pattern, text)
        pieces = [chunk for piece in split_pieces(text, piece_chars) for chunk in regex.findall(pattern, piece)]
        assert pieces == whole
        assert "".join(split_pieces(text, piece_chars)) == text


def test_parallel_count_equals_serial_count() -> None:
    texts = [synthetic_text(seed, 5000) for seed in range(4)]
    serial = count_chunks(texts, PATTERNS["gpt4"], workers=1)
    parallel = count_chunks(texts, PATTERNS["gpt4"], workers=2)
    direct = Counter(chunk for text in texts for chunk in regex.findall(PATTERNS["gpt4"], text))
    assert serial == parallel == direct


def test_special_tokens_are_cut_out_before_counting() -> None:
    counts = count_chunks(["hello<|endoftext|>world"], PATTERNS["gpt2"], ["<|endoftext|>"], workers=1)
    assert counts == Counter({"hello": 1, "world": 1})


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300), st.integers(4, 40))
def test_cut_chunk_bounds_pieces_at_character_boundaries(text: str, max_bytes: int) -> None:
    chunk = text.encode("utf-8", errors="replace")
    pieces = list(cut_chunk(chunk, max_bytes))
    assert b"".join(pieces) == chunk
    assert all(0 < len(piece) <= max_bytes for piece in pieces) or pieces == [b""]
    for piece in pieces:
        piece.decode("utf-8")  # whole characters only
    assert list(cut_chunk(chunk, 0)) == [chunk]


def test_progress_counts_utf8_bytes() -> None:
    texts = ["héllo wörld " * 50_000, "日本語のテキスト " * 1000, "plain"]
    seen: list[int] = []
    count_chunks(texts, PATTERNS["gpt2"], workers=1, on_bytes=seen.append)
    assert sum(seen) == sum(len(text.encode()) for text in texts)
