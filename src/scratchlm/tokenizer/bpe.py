"""Byte-level BPE training from scratch.

Training has two phases, and neither rereads the corpus per merge:

1. **Count chunks.** The text is pre-split with a regex (GPT-2's or GPT-4's pattern) into chunks
   (roughly words with their leading space); merges never cross a chunk boundary, so the corpus
   reduces to a table of unique chunks and their counts. The 9.5 MB Shakespeare corpus is 2.5 M
   chunks but only ~61 k unique ones. Counting streams over the input in pieces, in a process
   pool, so corpora larger than memory work.
2. **Merge.** Each unique chunk is a list of symbol ids (initially its bytes). A table of adjacent
   pair counts (weighted by chunk count), an index from each pair to the chunks that contain it,
   and a max-heap of pairs with lazy invalidation let each merge touch only the chunks that
   contain the merged pair and update the counts of the pairs around it.

Tie-breaking (documented, so training is deterministic): among pairs with the same count, the
pair with the smallest left token id wins, then the smallest right token id. Byte tokens have ids
0..255 in byte order and each merge gets the next id, so "smallest id" means "oldest token".
"""

from __future__ import annotations

import heapq
import os
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor

import regex

# Pre-split patterns. GPT-2's is from OpenAI's gpt-2 encoder (contractions lowercase only);
# GPT-4's is tiktoken's cl100k_base (case-insensitive contractions, digits in groups of at most
# three, punctuation keeps its trailing newlines).
PATTERNS: dict[str, str] = {
    "gpt2": r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""",
    "gpt4": (
        r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*"""
        r"""|\s*[\r\n]|\s+(?!\S)|\s+"""
    ),
}

# Pieces of this many characters are handed to worker processes. Small enough that a pool keeps
# both cores busy on a single large file, large enough that pickling the result is cheap.
PIECE_CHARS = 1 << 20

# A newline between a non-space and a letter is a chunk boundary under both patterns: no
# alternative matches a newline together with a following letter, and with no whitespace before
# it the newline's chunk cannot depend on what follows (`\s+(?!\S)` would, after a space).
_SAFE_BOUNDARY = regex.compile(r"(?<=\S)\n(?=\p{L})")


def split_pieces(text: str, piece_chars: int = PIECE_CHARS) -> Iterator[str]:
    """Cut `text` into pieces of about `piece_chars` at boundaries where no chunk can straddle.

    A piece with no safe boundary in reach grows until it finds one (or the text ends), so the
    pre-split of the concatenated pieces always equals the pre-split of the whole text.
    """
    start = 0
    while len(text) - start > piece_chars:
        boundary = _SAFE_BOUNDARY.search(text, start + piece_chars)
        if boundary is None:
            break
        yield text[start : boundary.start() + 1]
        start = boundary.start() + 1
    if start < len(text):
        yield text[start:]


def _count_piece(args: tuple[str, str]) -> Counter[str]:
    pattern, text = args
    return Counter(regex.findall(pattern, text))


def count_chunks(
    texts: Iterable[str],
    pattern: str,
    special_tokens: Iterable[str] = (),
    workers: int | None = None,
    on_chars: Callable[[int], None] | None = None,
) -> Counter[str]:
    """Count the pre-split chunks of all `texts`, in parallel over `workers` processes.

    Special-token strings in the text are cut out first (they are never learned as merges).
    `on_chars(n)` is called as pieces of `n` characters finish, for a progress bar.
    """
    specials = sorted(special_tokens, key=len, reverse=True)
    special_re = regex.compile("|".join(regex.escape(s) for s in specials)) if specials else None

    def jobs() -> Iterator[tuple[str, str]]:
        for text in texts:
            parts = special_re.split(text) if special_re else [text]
            for part in parts:
                for piece in split_pieces(part):
                    yield pattern, piece

    counts: Counter[str] = Counter()
    workers = workers or min(os.cpu_count() or 1, 8)
    if workers <= 1:
        for job in jobs():
            counts.update(_count_piece(job))
            if on_chars:
                on_chars(len(job[1]))
        return counts
    with ProcessPoolExecutor(workers) as pool:
        # Bounded look-ahead: at most 2 pieces per worker in flight, so memory stays flat on
        # a corpus larger than RAM.
        pending: list = []
        sizes: list[int] = []
        for job in jobs():
            pending.append(pool.submit(_count_piece, job))
            sizes.append(len(job[1]))
            if len(pending) >= 2 * workers:
                counts.update(pending.pop(0).result())
                if on_chars:
                    on_chars(sizes.pop(0))
        for future, size in zip(pending, sizes):
            counts.update(future.result())
            if on_chars:
                on_chars(size)
    return counts


def learn_merges(
    chunk_counts: dict[bytes, int],
    num_merges: int,
    on_merge: Callable[[int], None] | None = None,
) -> list[tuple[int, int]]:
    """Learn up to `num_merges` merges over byte chunks weighted by their counts.

    Returns the merges in order; merge `i` creates token id `256 + i` from the pair `(left,
    right)`. Fewer merges come back when no pair occurs any more (every chunk is one token).
    """
    words: list[list[int]] = [list(chunk) for chunk in chunk_counts]
    weights: list[int] = list(chunk_counts.values())

    pair_counts: Counter[tuple[int, int]] = Counter()
    where: dict[tuple[int, int], set[int]] = {}
    for index, (word, weight) in enumerate(zip(words, weights)):
        for pair in zip(word, word[1:]):
            pair_counts[pair] += weight
            where.setdefault(pair, set()).add(index)

    # Max-heap by count, then min left id, then min right id; entries can be stale (see below).
    heap = [(-count, pair) for pair, count in pair_counts.items()]
    heapq.heapify(heap)

    merges: list[tuple[int, int]] = []
    while len(merges) < num_merges and heap:
        negative_count, pair = heapq.heappop(heap)
        current = pair_counts.get(pair, 0)
        if current != -negative_count:
            # Stale entry. Increases always push a fresh entry, decreases do not, so a stale
            # entry above the true count is the pair's only claim and must be re-pushed.
            if 0 < current < -negative_count:
                heapq.heappush(heap, (-current, pair))
            continue
        new_id = 256 + len(merges)
        merges.append(pair)
        left, right = pair

        delta: Counter[tuple[int, int]] = Counter()
        for index in where.pop(pair):
            word = words[index]
            # The index is not pruned when a word loses a pair, so it may no longer hold it.
            if len(word) < 2:
                continue
            merged: list[int] = []
            i, n = 0, len(word)
            while i < n:
                if i + 1 < n and word[i] == left and word[i + 1] == right:
                    merged.append(new_id)
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            if len(merged) == n:
                continue
            weight = weights[index]
            for old_pair in zip(word, word[1:]):
                delta[old_pair] -= weight
            for new_pair in zip(merged, merged[1:]):
                delta[new_pair] += weight
                if new_id in new_pair:
                    where.setdefault(new_pair, set()).add(index)
            words[index] = merged

        for changed, change in delta.items():
            if change == 0:
                continue
            count = pair_counts[changed] + change
            if count > 0:
                pair_counts[changed] = count
                if change > 0:
                    heapq.heappush(heap, (-count, changed))
            else:
                del pair_counts[changed]
        pair_counts.pop(pair, None)
        if on_merge:
            on_merge(1)
    return merges


def merges_to_ranks(merges: list[tuple[int, int]]) -> list[bytes]:
    """Token bytes by id: the 256 single bytes, then one token per merge."""
    vocab = [bytes([b]) for b in range(256)]
    for left, right in merges:
        vocab.append(vocab[left] + vocab[right])
    return vocab
