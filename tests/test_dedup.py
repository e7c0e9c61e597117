"""Exact and MinHash-LSH deduplication: what is removed, what is kept, and the estimates."""

from __future__ import annotations

import datetime
import random

import numpy as np
import pytest
from conftest import WORDS, synthetic_text

from scratchlm.config import field_docs, from_dict
from scratchlm.data import dedup
from scratchlm.data.dedup import (
    ExactDedup,
    ExactDedupConfig,
    MinHashConfig,
    MinHashDedup,
    MinHasher,
    cluster_roots,
    estimated_jaccard,
    lsh_probability,
    normalize_text,
)
from scratchlm.data.documents import Document
from scratchlm.data.pipeline import DropStep
from scratchlm.errors import UserError

# A larger vocabulary than conftest's, so random 5-grams of unrelated texts never coincide.
VOCABULARY = [f"{a}{b}" for a in WORDS[:40] for b in ("", "s", "ed", "ing", "er")]


def random_words(seed: int, count: int = 300) -> list[str]:
    rng = random.Random(seed)
    return [rng.choice(VOCABULARY) for _ in range(count)]


def edited(words: list[str], fraction: float, seed: int) -> list[str]:
    """The words with one contiguous passage of `fraction` of them rewritten (as an editor would)."""
    rng = random.Random(seed)
    length = round(fraction * len(words))
    start = rng.randrange(len(words) - length + 1)
    replacement = [rng.choice(VOCABULARY) for _ in range(length)]
    return words[:start] + replacement + words[start + length :]


def shingles(text: str, n: int = 5) -> set[tuple[str, ...]]:
    words = normalize_text(text).split()
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def true_jaccard(a: str, b: str) -> float:
    x, y = shingles(a), shingles(b)
    return len(x & y) / len(x | y)


def run_step(step, documents: list[Document]) -> list[Document]:
    kept = list(step.run(documents))
    assert step.stats.read == len(documents)
    assert step.stats.read == step.stats.kept + sum(step.stats.removed.values())
    assert step.stats.kept == len(kept)
    return kept


# ---- normalization and exact dedup ---------------------------------------------------------------


def test_normalize_text() -> None:
    assert normalize_text("  Hello,   World!\n\tIt's  well-known. ") == "hello world it s well known"
    assert normalize_text("Ünïcödé — “quoted”\u00a0text… ½") == "ünïcödé quoted text ½"
    assert normalize_text("?!... \n") == ""
    # The ASCII fast path and the Unicode path agree: a non-ASCII separator changes nothing.
    text = synthetic_text(3, 200)
    assert normalize_text(text + " \u2026") == normalize_text(text)


def test_exact_dedup_removes_normalized_variants() -> None:
    texts = {
        "a": "Hello, World! This is a test.",
        "b": "A different text entirely.",
        "c": "hello world this is a test",
        "d": "HELLO   WORLD -- this is a TEST!!!\n",
        "e": "Hello World, this is a test (again).",
        "f": "a  different\ttext, ENTIRELY",
        "g": "Hello, World! This is a test",
    }
    step = ExactDedup()
    kept = run_step(step, [Document(id=k, text=v) for k, v in texts.items()])
    assert [d.id for d in kept] == ["a", "b", "e"]
    assert step.duplicates == {"c": "a", "d": "a", "f": "b", "g": "a"}
    assert step.stats.removed == {"exact_duplicate": 4}
    split = ExactDedup()  # as the executors run it: keys shard by shard, one decision
    documents = [Document(id=k, text=v) for k, v in texts.items()]
    keys = np.concatenate([split.keys([d.text for d in documents[:4]]), split.keys([d.text for d in documents[4:]])])
    assert split.decide(list(texts), keys).tolist() == [False, False, True, True, False, True, True]
    assert split.duplicates == step.duplicates


def test_exact_dedup_without_normalization_and_removal_hook() -> None:
    step = ExactDedup(ExactDedupConfig(normalize=False))
    removed = []
    step.on_removed = lambda doc, reason: removed.append((doc.id, reason))
    docs = [Document("1", "Same text."), Document("2", "same text."), Document("3", "Same text.")]
    assert [d.id for d in run_step(step, docs)] == ["1", "2"]
    assert removed == [("3", "exact_dedup:exact_duplicate")]
    assert step.duplicates == {"3": "1"}


# ---- MinHash signatures --------------------------------------------------------------------------


def test_estimated_jaccard_is_close_to_true_jaccard() -> None:
    hasher = MinHasher()
    assert hasher.num_perm == 112
    base = random_words(1)
    errors = []
    for i, fraction in enumerate((0.0, 0.03, 0.1, 0.2, 0.35, 0.5, 0.7, 1.0)):
        a, b = " ".join(base), " ".join(edited(base, fraction, seed=i))
        signatures = hasher.signatures([a, b])
        estimate, truth = estimated_jaccard(signatures[0], signatures[1]), true_jaccard(a, b)
        errors.append(abs(estimate - truth))
        assert abs(estimate - truth) <= 0.12, (fraction, estimate, truth)
    assert np.mean(errors) < 0.05


def test_signatures_do_not_depend_on_batching_chunking_or_text_path() -> None:
    texts = [synthetic_text(seed, n) for seed, n in ((1, 400), (2, 3), (3, 0), (4, 2000), (5, 50))]
    expected = MinHasher().signatures(texts)
    assert expected.shape == (5, 112) and expected.dtype == np.uint32
    assert (expected[2] == 0xFFFFFFFF).all()  # no words, no shingles
    for i, text in enumerate(texts):
        assert (MinHasher().signatures([text])[0] == expected[i]).all()
    assert (MinHasher(chunk_shingles=7).signatures(texts) == expected).all()
    non_ascii = [t + " \u201cok\u201d" for t in texts]
    assert (MinHasher().signatures(non_ascii)[[0, 3]] == MinHasher().signatures([t + " ok" for t in texts])[[0, 3]]).all()


def test_word_hashing_in_pieces(monkeypatch: pytest.MonkeyPatch) -> None:
    texts = [synthetic_text(7, 1500), "x" * 300 + " tail words here and more"]
    expected = MinHasher().signatures(texts)
    monkeypatch.setattr(dedup, "_PIECE", 64)  # splits the batch at spaces; the long word spans pieces
    assert (MinHasher().signatures(texts) == expected).all()


def test_same_seed_same_signatures_other_seed_differs() -> None:
    text = [synthetic_text(1, 300)]
    assert (MinHasher(MinHashConfig(seed=5)).signatures(text) == MinHasher(MinHashConfig(seed=5)).signatures(text)).all()
    assert estimated_jaccard(MinHasher(MinHashConfig(seed=5)).signatures(text)[0], MinHasher().signatures(text)[0]) < 0.1


def test_estimates_agree_with_datasketch() -> None:
    datasketch = pytest.importorskip("datasketch", reason="datasketch is not a dependency; pip install datasketch to compare with it")
    hasher = MinHasher()
    base = random_words(11)
    for i, fraction in enumerate((0.05, 0.2, 0.5)):
        a, b = " ".join(base), " ".join(edited(base, fraction, seed=i))
        reference = []
        for text in (a, b):
            minhash = datasketch.MinHash(num_perm=112, seed=1)
            minhash.update_batch([" ".join(s).encode() for s in shingles(text)])
            reference.append(minhash)
        ours = hasher.signatures([a, b])
        truth = true_jaccard(a, b)
        assert abs(estimated_jaccard(ours[0], ours[1]) - truth) < 0.15
        assert abs(reference[0].jaccard(reference[1]) - truth) < 0.15


# ---- LSH, clusters and the step ------------------------------------------------------------------


def test_lsh_probability() -> None:
    assert lsh_probability(0.8, 14, 8) == pytest.approx(0.924, abs=1e-3)
    assert lsh_probability(0.7, 14, 8) == pytest.approx(0.564, abs=1e-3)
    assert lsh_probability(1.0, 14, 8) == 1.0 and lsh_probability(0.0, 14, 8) == 0.0


def test_clusters_are_transitive() -> None:
    rng = np.random.default_rng(0)
    a = rng.integers(0, 2**32 - 1, 112, dtype=np.uint32)
    b, c = a.copy(), a.copy()
    b[:24] = rng.integers(0, 2**32 - 1, 24)  # B agrees with A on 88 of 112 values (0.79)
    c[:24] = b[:24]
    c[88:] = rng.integers(0, 2**32 - 1, 24)  # C agrees with B on 88, with A on only 64 (0.57)
    unrelated = rng.integers(0, 2**32 - 1, (3, 112), dtype=np.uint32)
    config = MinHashConfig()
    assert estimated_jaccard(a, c) < config.threshold
    # A and C share bands 3-10, so they are candidates, but fail verification on their own...
    assert cluster_roots(np.stack([a, c]), config).tolist() == [0, 1]
    # ...and join through B.
    roots = cluster_roots(np.stack([unrelated[0], a, unrelated[1], b, c, unrelated[2]]), config)
    assert roots.tolist() == [0, 1, 2, 1, 1, 5]


def test_planted_near_duplicate_is_removed_and_order_kept() -> None:
    base = random_words(100)
    near = edited(base, 0.10, seed=100)  # 10% of the words rewritten in one passage
    assert sum(x != y for x, y in zip(base, near)) >= 25
    other = random_words(200)
    other_near = edited(other, 0.05, seed=200)
    documents = [
        Document("u0", synthetic_text(1, 300)),
        Document("base", " ".join(base), {"date": datetime.date(2024, 1, 2)}),
        Document("u1", synthetic_text(2, 300)),
        Document("near", " ".join(near).upper()),
        Document("other", " ".join(other)),
        Document("u2", synthetic_text(3, 300)),
        Document("other_near", " ".join(other_near)),
        Document("other_copy", " ".join(other) + "!"),
    ]
    assert 0.75 < true_jaccard(documents[1].text, documents[3].text) < 0.9
    for split in (False, True):
        step = MinHashDedup()
        removed = []
        if split:  # as the executors run it: keys per shard, one decision, drops per shard
            keys = np.concatenate([step.keys([d.text for d in documents[:3]]), step.keys([d.text for d in documents[3:]])])
            drop = DropStep(step.name, step.decide([d.id for d in documents], keys), step.removal_reason)
            drop.on_removed = lambda doc, reason: removed.append((doc.id, reason))
            kept = run_step(drop, documents)
            stats = drop.stats
        else:
            step.on_removed = lambda doc, reason: removed.append((doc.id, reason))
            kept = run_step(step, documents)
            stats = step.stats
        assert [d.id for d in kept] == ["u0", "base", "u1", "other", "u2"]
        assert kept[1].meta == {"date": datetime.date(2024, 1, 2)}
        assert step.duplicates == {"near": "base", "other_near": "other", "other_copy": "other"}
        assert step.clusters == [["base", "near"], ["other", "other_near", "other_copy"]]
        assert stats.removed == {"near_duplicate": 3} and stats.read == 8 and stats.kept == 5
        assert removed[0] == ("near", "minhash_dedup:near_duplicate")


def test_recall_on_planted_pairs_and_unrelated_texts_kept_apart() -> None:
    documents = []
    for i in range(30):
        base = random_words(1000 + i)
        documents.append(Document(f"base{i}", " ".join(base)))
        documents.append(Document(f"unrelated{i}", " ".join(random_words(2000 + i))))
        documents.append(Document(f"near{i}", " ".join(edited(base, 0.05, seed=i))))
    step = MinHashDedup()
    kept = {d.id for d in run_step(step, documents)}
    assert all(f"unrelated{i}" in kept and f"base{i}" in kept for i in range(30))
    found = sum(step.duplicates.get(f"near{i}") == f"base{i}" for i in range(30))
    assert found >= 29
    assert all(len(cluster) == 2 for cluster in step.clusters)


def test_short_and_empty_texts() -> None:
    documents = [Document(str(i), text) for i, text in enumerate(["", "Hello world", "...", "hello, WORLD", "hello there", ""])]
    step = MinHashDedup()
    kept = run_step(step, documents)
    assert [d.id for d in kept] == ["0", "1", "2", "4", "5"]  # texts without words are never duplicates
    assert step.duplicates == {"3": "1"}
    assert list(MinHashDedup().run([])) == []


def test_config_settings() -> None:
    config = from_dict(MinHashConfig, {"num_bands": 20, "rows_per_band": 5, "threshold": 0.5})
    assert config.num_perm == 100
    for cls in (MinHashConfig, ExactDedupConfig):
        assert set(field_docs(cls)) == set(cls.__dataclass_fields__)
    with pytest.raises(UserError, match="threshold"):
        MinHashConfig(threshold=0)
    with pytest.raises(UserError, match="at least 1"):
        MinHashConfig(rows_per_band=0)

