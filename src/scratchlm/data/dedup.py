"""Deduplication steps: exact (hash of normalized text) and MinHash-LSH near-duplicates.

Both compare texts after one normalization, `normalize_text`: lowercase (`str.lower`), every
punctuation or symbol character (Unicode categories P* and S*) replaced by a space, and runs of
whitespace collapsed to one space with none at the ends. So "Hello,  World!" and "hello world"
are the same text, and so are "well-known" and "well known"; "don't" becomes "don t". The words
of a text are what is left between the spaces.

**Exact dedup** (`ExactDedup`) hashes the normalized text with BLAKE2b (128-bit digest) and
keeps the first document with each digest; later ones are removed as "exact_duplicate" and
`duplicates` maps each removed id to the id of the document it repeats. Texts that normalize to
nothing (empty, or punctuation only) are duplicates of each other. On one stream (`run`) it
streams: memory is one digest per distinct text.

**Near dedup** (`MinHashDedup`) follows FineWeb's MinHash setup:

- shingles are word n-grams (`ngram`, 5); a text with fewer words has one shingle of all of
  them, and a text with no words has none and is never a duplicate;
- each shingle gets a 32-bit hash x: every word is hashed once (a polynomial hash of its code
  points, computed for all words of a batch with numpy prefix sums), and an n-gram's hash
  mixes a weighted sum of its words' hashes, so no Python code runs per word or shingle;
- each of `num_bands × rows_per_band` (14 × 8 = 112) hash functions
  h(x) = ((a·x + b) mod 2^64) >> 32, with a and b random 64-bit numbers, permutes the shingle
  hashes, and the signature is the minimum of each over the text's shingles. This is
  Dietzfelbinger's multiply-add-shift scheme, which for 32-bit x and 64-bit arithmetic is
  2-independent, the same guarantee as (a·x + b) mod p for a prime p, without the modulo: a
  multiply, an add and a minimum per shingle and function (~1.3 ns together), broadcast over
  all 112 functions and a whole batch of texts' shingles at once;
- two texts agree in one signature position with probability equal to the Jaccard similarity s
  of their shingle sets, so the fraction of agreeing positions estimates s (standard error
  sqrt(s(1-s)/112), 0.038 at s = 0.8);
- LSH: the signature is cut into `num_bands` bands of `rows_per_band` values, and texts whose
  band is identical in any band become candidate pairs. A pair with similarity s is a candidate
  with probability 1 - (1 - s^r)^b (`lsh_probability`), an S-curve that for 14 × 8 is 0.56 at
  s = 0.7, 0.77 at 0.75, 0.92 at 0.8 and 0.99 at 0.85 (it crosses 0.5 at s = 0.685; the usual
  rule of thumb for the threshold a banding implies is (1/b)^(1/r), 0.72 here);
- candidates are verified: a pair is kept only if its estimated Jaccard is at least
  `threshold`, which drops the rare pairs that share a band by chance;
- union-find over the verified pairs gives clusters (transitively: A~B and B~C put A, B and C
  in one cluster even if A and C are less similar). The first document of each cluster (in
  input order) is kept, the others are removed as "near_duplicate". `clusters` lists the ids of
  every cluster of two or more, `duplicates` maps each removed id to the kept one.

Both are `GlobalStep`s: the decision is global, over every document the step reads (running
them per input shard would only find duplicates within a shard). `keys` (digests, signatures)
is the costly per-document part, which `scratchlm data prepare`'s executors compute shard by
shard in parallel; `decide` then sees all keys in input order (for MinHash, 112 × 4 bytes per
document held in memory) and the executors drop the removed documents shard by shard again.
`MinHashDedup.run` on one stream holds the documents in memory between the two passes.
"""

from __future__ import annotations

import functools
import hashlib
import math
import sys
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from scratchlm.data.documents import Document
from scratchlm.data.pipeline import GlobalStep, batched
from scratchlm.errors import UserError

# ---- normalization ----------------------------------------------------------------------------

_SPACE = 32


def _is_separator(character: str) -> bool:
    return character.isspace() or unicodedata.category(character)[0] in "PS"


# ASCII texts take a fast path through bytes.translate: lowercase letters, separators to spaces.
_ASCII_TABLE = bytes(
    (_SPACE if _is_separator(chr(c)) else ord(chr(c).lower())) if c < 128 else c for c in range(256)
)


@functools.cache
def _separator_table() -> np.ndarray:
    """True for every code point that separates words: punctuation, symbols and whitespace.

    Planes 3-13 and 15-16 hold no punctuation, symbols or whitespace (they are ideographs,
    unassigned or private use), so only planes 0-2 and 14 are scanned (~0.1 s, once).
    """
    table = np.zeros(sys.maxunicode + 1, dtype=bool)
    for low, high in ((0, 0x30000), (0xE0000, 0xF0000)):
        table[low:high] = np.fromiter((_is_separator(chr(c)) for c in range(low, high)), bool, high - low)
    return table


def _normalized_codes(text: str) -> bytes | np.ndarray:
    """The lowercased text with each separator replaced by a space (runs not yet collapsed).

    ASCII text comes back as bytes, anything else as a uint32 array of code points; the values
    are the same either way (an ASCII byte is its code point), so are the word hashes.
    """
    if text.isascii():
        return text.encode("ascii").translate(_ASCII_TABLE)
    codes = np.frombuffer(text.lower().encode("utf-32-le", "surrogatepass"), np.uint32).copy()
    codes[_separator_table()[codes]] = _SPACE
    return codes


def normalize_text(text: str) -> str:
    """Lowercase, punctuation and symbols (Unicode P*, S*) to spaces, whitespace collapsed."""
    codes = _normalized_codes(text)
    if isinstance(codes, bytes):
        return b" ".join(codes.split()).decode("ascii")
    return " ".join(codes.tobytes().decode("utf-32-le", "surrogatepass").split())


def _normalized_bytes(text: str) -> bytes:
    codes = _normalized_codes(text)
    if isinstance(codes, bytes):
        return b" ".join(codes.split())
    return " ".join(codes.tobytes().decode("utf-32-le", "surrogatepass").split()).encode("utf-8", "surrogatepass")


# ---- exact dedup ------------------------------------------------------------------------------


@dataclass
class ExactDedupConfig:
    """Settings for removing documents whose normalized text repeats an earlier one."""

    normalize: bool = True
    """Compare texts after normalization (lowercase, punctuation and symbols to spaces, whitespace collapsed); false compares the exact text."""


class ExactDedup(GlobalStep):
    """Keeps the first document with each (normalized) text; removes the rest as "exact_duplicate"."""

    name = "exact_dedup"
    removal_reason = "exact_duplicate"

    def __init__(self, config: ExactDedupConfig | None = None) -> None:
        super().__init__()
        self.config = config or ExactDedupConfig()
        self.duplicates: dict[str, str] = {}
        """Removed document id → id of the earlier document it repeats (for the manifest)."""
        self._seen: dict[bytes, str] = {}

    def digest(self, text: str) -> bytes:
        """The 128-bit BLAKE2b digest this step compares texts by."""
        data = _normalized_bytes(text) if self.config.normalize else text.encode("utf-8", "surrogatepass")
        return hashlib.blake2b(data, digest_size=16).digest()

    def keys(self, texts: list[str]) -> np.ndarray:
        return np.frombuffer(b"".join(self.digest(text) for text in texts), dtype=np.uint8).reshape(len(texts), 16)

    def decide(self, ids: list[str], keys: np.ndarray) -> np.ndarray:
        remove = np.zeros(len(ids), dtype=bool)
        for row, (doc_id, key) in enumerate(zip(ids, keys)):
            digest = key.tobytes()
            first = self._seen.get(digest)
            if first is None:
                self._seen[digest] = doc_id
            else:
                remove[row] = True
                self.duplicates[doc_id] = first
        return remove

    def run(self, documents: Iterable[Document]) -> Iterator[Document]:
        # Streams, where GlobalStep.run would hold every document: the first-seen digests persist
        # across calls to `decide`, so deciding batch by batch is the same as deciding once.
        for batch in batched(documents, self.batch_documents):
            remove = self.decide([d.id for d in batch], self.keys([d.text for d in batch]))
            yield from self.dropping(remove).run(batch)

    def details(self) -> dict[str, Any]:
        return {"duplicates": len(self.duplicates), "examples": dict(list(self.duplicates.items())[:20])}


# ---- MinHash signatures -------------------------------------------------------------------------


@dataclass
class MinHashConfig:
    """Settings for MinHash-LSH near-duplicate removal (FineWeb's 5-grams and 14 bands × 8 rows)."""

    ngram: int = 5
    """Words per shingle; texts are compared by their sets of word n-grams."""
    num_bands: int = 14
    """LSH bands; a pair becomes a candidate when any band of its signatures matches. Hash functions = num_bands × rows_per_band."""
    rows_per_band: int = 8
    """Signature values per band. A pair of Jaccard similarity s is a candidate with probability 1 - (1 - s^rows)^bands: 0.92 at s = 0.8 and 0.56 at 0.7 for 14 × 8."""
    threshold: float = 0.7
    """Candidates are merged only if their estimated Jaccard (share of equal signature values) is at least this. 0.7 sits at the 14 × 8 S-curve's midpoint, so it only drops chance candidates: a pair of true similarity 0.8 passes with probability 0.995, where a 0.8 cut would drop half of them."""
    seed: int = 1
    """Seed of the hash functions; signatures from different seeds are not comparable."""

    def __post_init__(self) -> None:
        if self.ngram < 1 or self.num_bands < 1 or self.rows_per_band < 1:
            raise UserError("minhash ngram, num_bands and rows_per_band must all be at least 1.")
        if not 0 < self.threshold <= 1:
            raise UserError(f"minhash threshold is {self.threshold}; set it above 0 and at most 1.")

    @property
    def num_perm(self) -> int:
        """Hash functions, i.e. the signature length."""
        return self.num_bands * self.rows_per_band


def lsh_probability(similarity: float, num_bands: int, rows_per_band: int) -> float:
    """Probability that a pair of this Jaccard similarity shares at least one band: 1-(1-s^r)^b."""
    return 1.0 - (1.0 - similarity**rows_per_band) ** num_bands


def _random_uint64(label: str, count: int) -> np.ndarray:
    """`count` reproducible 64-bit numbers (SHAKE-128 of a label: the same on every platform)."""
    return np.frombuffer(hashlib.shake_128(label.encode()).digest(8 * count), "<u8").astype(np.uint64)


def _mix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finalizer, elementwise: every input bit affects every output bit."""
    x = x ^ (x >> np.uint64(30))
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return x


_BASE = np.uint64(0x9E3779B97F4A7C15)  # odd, so invertible modulo 2^64
_PIECE = 1 << 18
"""Code points hashed per numpy call (bounds the tables of powers of _BASE)."""


@functools.cache
def _powers(length: int) -> tuple[np.ndarray, np.ndarray]:
    """_BASE^j and _BASE^-j modulo 2^64 for j < length."""
    inverse = np.uint64(pow(int(_BASE), -1, 1 << 64))
    powers = []
    for base in (_BASE, inverse):
        factors = np.full(length, base, dtype=np.uint64)
        factors[0] = 1
        powers.append(np.cumprod(factors))
    return powers[0], powers[1]


def _piece_word_hashes(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Hash and start of every word in `codes`, which ends with a space or at a word's end.

    A word's raw hash is the polynomial sum (c_j + 1)·B^(j - start) over its code points,
    modulo 2^64: prefix sums of (c_j + 1)·B^j, differenced at the word's ends and multiplied by
    B^-start, so all words hash in a handful of vectorized passes whatever their lengths.
    """
    length = len(codes)
    word = (codes != _SPACE).view(np.int8)
    edges = np.diff(word, prepend=np.int8(0), append=np.int8(0))
    starts = np.flatnonzero(edges == 1)
    ends = np.flatnonzero(edges == -1)
    powers, inverses = _powers(max(length, _PIECE))
    terms = codes.astype(np.uint64)
    terms += np.uint64(1)
    terms *= powers[:length]
    prefix = np.empty(length + 1, dtype=np.uint64)
    prefix[0] = 0
    np.cumsum(terms, out=prefix[1:])
    raw = prefix[ends] - prefix[starts]
    raw *= inverses[starts]
    return _mix64(raw), starts


def _word_hashes(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """64-bit hash and start index of every word (maximal run of non-space codes), in order."""
    hashes, starts = [], []
    low, total = 0, len(codes)
    while low < total:
        high = min(low + _PIECE, total)
        if high < total:  # cut after the piece's last space, so no word is split
            spaces = np.flatnonzero(codes[low:high] == _SPACE)
            if len(spaces):
                high = low + int(spaces[-1]) + 1
            else:  # one word longer than a piece
                later = np.flatnonzero(codes[high:] == _SPACE)
                high = high + int(later[0]) + 1 if len(later) else total
        piece_hashes, piece_starts = _piece_word_hashes(codes[low:high])
        hashes.append(piece_hashes)
        starts.append(piece_starts + low)
        low = high
    if not hashes:
        return np.empty(0, np.uint64), np.empty(0, np.int64)
    return np.concatenate(hashes), np.concatenate(starts)


class MinHasher:
    """Computes MinHash signatures of texts, a batch of texts per numpy operation.

    `signatures(texts)` is an (n, num_perm) uint32 array; a text with no words gets all
    0xFFFFFFFF (as datasketch's empty MinHash does) and is never a duplicate. A text's signature
    does not depend on the other texts in its batch.
    """

    BATCH_DOCUMENTS = 128
    """Texts normalized and hashed together."""

    def __init__(self, config: MinHashConfig | None = None, chunk_shingles: int = 8192) -> None:
        self.config = config or MinHashConfig()
        self.num_perm = self.config.num_perm
        self.chunk_shingles = chunk_shingles
        """Shingles per broadcast (num_perm × chunk uint64 values: 7.3 MB at 112 × 8192)."""
        self._multipliers = _random_uint64("scratchlm-minhash-shingle", self.config.ngram)
        values = _random_uint64(f"scratchlm-minhash-permutations-{self.config.seed}", 2 * self.num_perm)
        self._a = values[: self.num_perm, None].copy()
        self._b = values[self.num_perm :, None].copy()
        self._work = np.empty((self.num_perm, chunk_shingles), dtype=np.uint64)

    def signatures(self, texts: Iterable[str]) -> np.ndarray:
        """(len(texts), num_perm) uint32 MinHash signatures."""
        blocks, batch = [], []
        for text in texts:
            batch.append(text)
            if len(batch) == self.BATCH_DOCUMENTS:
                blocks.append(self.batch_signatures(batch))
                batch = []
        if batch or not blocks:
            blocks.append(self.batch_signatures(batch))
        return np.concatenate(blocks)

    def batch_signatures(self, texts: list[str]) -> np.ndarray:
        """Signatures of a list of texts, all at once (`signatures` cuts its input into such lists)."""
        count = len(texts)
        parts = [_normalized_codes(text) for text in texts]
        lengths = np.fromiter(map(len, parts), np.int64, count)
        if all(isinstance(part, bytes) for part in parts):
            codes = np.frombuffer(b" ".join(parts) + b" ", np.uint8)
        else:
            space = np.array([_SPACE], np.uint32)
            arrays = [np.frombuffer(p, np.uint8) if isinstance(p, bytes) else p for p in parts]
            codes = np.concatenate([a for array in arrays for a in (array, space)]) if arrays else space
        words, starts = _word_hashes(codes)
        text_of_word = np.searchsorted(np.cumsum(lengths + 1), starts, side="right")
        words_per_text = np.bincount(text_of_word, minlength=count)
        shingles, shingles_per_text = self._shingles(words, text_of_word, words_per_text)
        return self._min_hashes(shingles, shingles_per_text)

    def _shingles(
        self, words: np.ndarray, text_of_word: np.ndarray, words_per_text: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """32-bit hashes of every text's word n-grams, text after text, and how many per text.

        An n-gram's hash mixes Σ_k m_k·w_{i+k} (fixed random 64-bit m_k, so word order
        counts); n-grams that would span two texts are dropped.
        """
        n, m = self.config.ngram, self._multipliers
        total = len(words)
        per_text = np.maximum(words_per_text - n + 1, 0)
        if total >= n:
            sums = words[: total - n + 1] * m[0]
            for k in range(1, n):
                sums += words[k : total - n + 1 + k] * m[k]
            sums = sums[text_of_word[: total - n + 1] == text_of_word[n - 1 :]]
        else:
            sums = np.empty(0, np.uint64)
        short = np.flatnonzero((words_per_text > 0) & (words_per_text < n))
        if len(short):  # texts with fewer than n words: one shingle of all their words
            firsts = (np.cumsum(words_per_text) - words_per_text)[short]
            sizes = words_per_text[short]
            short_sums = words[firsts] * m[0]
            for k in range(1, n - 1):
                has = k < sizes
                short_sums[has] += words[firsts[has] + k] * m[k]
            sums = np.insert(sums, (np.cumsum(per_text) - per_text)[short], short_sums)
            per_text[short] = 1
        return _mix64(sums) >> np.uint64(32), per_text

    def _min_hashes(self, shingles: np.ndarray, per_text: np.ndarray) -> np.ndarray:
        """Minimum over each text's shingles of every hash function, a chunk of shingles at a time."""
        minima = np.full((self.num_perm, len(per_text)), np.iinfo(np.uint64).max, dtype=np.uint64)
        present = np.flatnonzero(per_text > 0)
        ends = np.cumsum(per_text)[present]
        starts = ends - per_text[present]
        total = len(shingles)
        for low in range(0, total, self.chunk_shingles):
            high = min(low + self.chunk_shingles, total)
            first = np.searchsorted(ends, low, side="right")
            last = np.searchsorted(starts, high, side="left")
            block = self._work[:, : high - low]
            np.multiply(self._a, shingles[low:high], out=block)
            np.add(block, self._b, out=block)
            segments = np.maximum(starts[first:last], low) - low
            columns = present[first:last]
            minima[:, columns] = np.minimum(minima[:, columns], np.minimum.reduceat(block, segments, axis=1))
        return np.ascontiguousarray((minima >> np.uint64(32)).astype(np.uint32).T)


def estimated_jaccard(a: np.ndarray, b: np.ndarray) -> np.ndarray | float:
    """Share of equal signature values (along the last axis): the MinHash Jaccard estimate."""
    value = np.mean(np.asarray(a) == np.asarray(b), axis=-1)
    return float(value) if np.ndim(value) == 0 else value


# ---- LSH and clusters ---------------------------------------------------------------------------


_EMPTY = (1 << 32) - 1
"""Every value of the signature of a text with no words (ours and datasketch's alike)."""


def candidate_pairs(signatures: np.ndarray, num_bands: int, rows_per_band: int) -> np.ndarray:
    """Pairs (i, j), i < j, of rows that agree on all values of at least one band; (k, 2) int64.

    Rows are bucketed per band by a 64-bit hash of the band's values. Within a bucket (members
    in row order), each member pairs with the bucket's first member and with the member before
    it: linear in the bucket's size, and enough to connect every bucket whose members are
    near-duplicates of each other. Rows of texts with no words (all values `_EMPTY`) are left out.
    """
    signatures = np.asarray(signatures)
    count, width = signatures.shape
    if width < num_bands * rows_per_band:
        raise UserError(f"Signatures have {width} values, fewer than {num_bands} bands × {rows_per_band} rows.")
    rows = np.flatnonzero(~np.all(signatures == _EMPTY, axis=1))
    found = []
    for band in range(num_bands):
        key = np.zeros(len(rows), dtype=np.uint64)
        for column in range(band * rows_per_band, (band + 1) * rows_per_band):
            key = _mix64(key + signatures[rows, column].astype(np.uint64))
        order = np.argsort(key, kind="stable")  # stable: members stay in row order
        same = key[order[1:]] == key[order[:-1]]
        if not same.any():
            continue
        members = rows[order]
        group_start = np.maximum.accumulate(np.where(np.concatenate(([True], ~same)), np.arange(len(rows)), 0))
        later = members[1:][same]
        found.append(members[:-1][same] * count + later)
        found.append(members[group_start[1:][same]] * count + later)
    if not found:
        return np.empty((0, 2), np.int64)
    codes = np.unique(np.concatenate(found))
    return np.stack([codes // count, codes % count], axis=1)


def cluster_roots(signatures: np.ndarray, config: MinHashConfig) -> np.ndarray:
    """For each row, the first row of its cluster (itself when it has no near-duplicate).

    Candidate pairs from `candidate_pairs` whose estimated Jaccard is at least
    `config.threshold` are joined by union-find; the root of each cluster is its smallest row.
    """
    signatures = np.asarray(signatures)
    count = len(signatures)
    roots = np.arange(count)
    pairs = candidate_pairs(signatures, config.num_bands, config.rows_per_band)
    if not len(pairs):
        return roots
    width = signatures.shape[1]
    needed = math.ceil(config.threshold * width - 1e-9)
    verified = []
    for low in range(0, len(pairs), 1 << 16):
        chunk = pairs[low : low + (1 << 16)]
        agree = np.count_nonzero(signatures[chunk[:, 0]] == signatures[chunk[:, 1]], axis=1)
        verified.append(chunk[agree >= needed])
    pairs = np.concatenate(verified)
    nodes, local = np.unique(pairs, return_inverse=True)
    local = local.reshape(-1, 2)
    parent = list(range(len(nodes)))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for i, j in local.tolist():
        root_i, root_j = find(i), find(j)
        if root_i != root_j:  # the smaller index (earlier row, as nodes are sorted) stays root
            parent[max(root_i, root_j)] = min(root_i, root_j)
    roots[nodes] = nodes[[find(x) for x in range(len(nodes))]]
    return roots


# ---- the step -----------------------------------------------------------------------------------


class MinHashDedup(GlobalStep):
    """Removes near-duplicates (MinHash-LSH clusters over all input), keeping each cluster's first."""

    name = "minhash_dedup"
    removal_reason = "near_duplicate"

    def __init__(self, config: MinHashConfig | None = None) -> None:
        super().__init__()
        self.config = config or MinHashConfig()
        self.duplicates: dict[str, str] = {}
        """Removed document id → id of the kept document of its cluster."""
        self.clusters: list[list[str]] = []
        """Member ids of every cluster of two or more, kept document first, in input order."""
        self._hasher: MinHasher | None = None

    batch_documents = MinHasher.BATCH_DOCUMENTS

    def keys(self, texts: list[str]) -> np.ndarray:
        if self._hasher is None:
            self._hasher = MinHasher(self.config)
        return self._hasher.batch_signatures(texts)

    def decide(self, ids: list[str], keys: np.ndarray) -> np.ndarray:
        roots = cluster_roots(keys, self.config)
        rows = np.arange(len(roots))
        remove = roots != rows
        clusters: dict[int, list[str]] = {int(r): [ids[int(r)]] for r in np.unique(roots[remove])}
        for row in np.flatnonzero(remove).tolist():
            members = clusters[int(roots[row])]
            self.duplicates[ids[row]] = members[0]
            members.append(ids[row])
        self.clusters.extend(clusters.values())
        return remove

    def details(self) -> dict[str, Any]:
        sizes = [len(cluster) for cluster in self.clusters]
        return {"clusters": len(self.clusters), "documents_in_clusters": sum(sizes), "largest_cluster": max(sizes, default=0), "examples": self.clusters[:20]}
