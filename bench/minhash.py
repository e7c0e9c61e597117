"""MinHash benchmark: scratchlm's vectorized signatures against datasketch's `MinHash.bulk`.

datasketch is not a dependency of scratchlm; install it for this benchmark only:

    pip install datasketch

Measured in one run, so every figure has its reference beside it:
- throughput: signatures per second for ~1 KB pieces of tinyshakespeare at 128 (and 112)
  permutations; ours from text to signatures (normalization, 5-word shingles, hashing), against
  datasketch's `MinHash.bulk` given the same shingles made beforehand, and against datasketch
  with making those shingles timed too. Contenders run alternately, each keeps its best round;
- quality: planted near-duplicates (copies of base pieces with 1-3% of their words changed at
  random places, true shingle Jaccard about 0.75-0.9) among unrelated pieces, clustered by the
  same LSH code (14 bands × 8 rows, verification at the threshold) from either implementation's
  112-value signatures. Recall is the share of planted pairs that land in one cluster (also
  given for pairs of true Jaccard ≥ 0.8, and as the S-curve predicts it); precision is the share
  of removed documents that are the planted copy of the kept one or have true Jaccard ≥ the
  threshold with it.

    python bench/minhash.py [--rounds 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import numpy as np
from racing import race  # bench/racing.py: python puts the script's folder on sys.path

from scratchlm.data.dedup import (
    MinHashConfig,
    MinHasher,
    cluster_roots,
    lsh_probability,
    normalize_text,
)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare.txt"


def pieces(text: str, size: int = 1000) -> list[str]:
    """The text cut into pieces of about `size` characters, at whitespace."""
    out, start = [], 0
    while start < len(text):
        end = min(start + size, len(text))
        while end < len(text) and not text[end].isspace():
            end += 1
        out.append(text[start:end])
        start = end
    return out


def shingles(text: str, n: int = 5) -> set[bytes]:
    """Word n-grams of the normalized text, the same ones scratchlm hashes (as bytes, for datasketch)."""
    words = normalize_text(text).split()
    if len(words) < n:
        return {" ".join(words).encode()} if words else set()
    return {" ".join(words[i : i + n]).encode() for i in range(len(words) - n + 1)}


def datasketch_signatures(texts: list[str], num_perm: int) -> np.ndarray:
    from datasketch import MinHash

    minhashes = MinHash.bulk([shingles(t) for t in texts], num_perm=num_perm)
    return np.stack([m.hashvalues for m in minhashes])


def change_words(text: str, fraction: float, rng: random.Random, vocabulary: list[str]) -> str:
    words = text.split()
    for i in rng.sample(range(len(words)), max(1, round(fraction * len(words)))):
        words[i] = rng.choice(vocabulary)
    return " ".join(words)


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a | b else 1.0


def quality(roots: np.ndarray, texts: list[str], planted: list[tuple[int, int]], config: MinHashConfig) -> dict:
    """Recall over planted pairs and precision over removed documents."""
    truths = [jaccard(shingles(texts[i]), shingles(texts[j])) for i, j in planted]
    found = [roots[i] == roots[j] for i, j in planted]
    high = [f for f, t in zip(found, truths) if t >= 0.8]
    partner = {j: i for i, j in planted}
    removed = np.flatnonzero(roots != np.arange(len(roots)))
    correct = sum(partner.get(int(r)) == roots[r] or jaccard(shingles(texts[r]), shingles(texts[roots[r]])) >= config.threshold for r in removed)
    return {
        "recall": float(np.mean(found)),
        "recall_jaccard_ge_0.8": float(np.mean(high)) if high else float("nan"),
        "pairs_jaccard_ge_0.8": len(high),
        "removed": len(removed),
        "precision": correct / len(removed) if len(removed) else 1.0,
        "_truths": truths,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--planted", type=int, default=500, help="Base documents that get a near-duplicate copy.")
    parser.add_argument("--json", help="Also write the figures to this file.")
    args = parser.parse_args()
    try:
        import datasketch  # noqa: F401
    except ImportError:
        sys.exit("bench/minhash.py compares against datasketch, which is not installed: pip install datasketch")
    if not DATA.exists():
        sys.exit(f"{DATA} is absent (the shared data sits beside the repository as ../shared/data)")

    texts = pieces(DATA.read_text(encoding="utf-8"))
    size = sum(len(t.encode()) for t in texts) / len(texts)
    print(f"{len(texts)} documents of {size:.0f} bytes on average from {DATA.name}")

    # Throughput, from text to signatures for scratchlm; for datasketch both `MinHash.bulk` alone on
    # shingles made beforehand (the conservative comparison) and with making the shingles timed too.
    from datasketch import MinHash

    ready = [shingles(t) for t in texts]
    print(f"\n{'perms':>6} {'ours docs/s':>12} {'datasketch bulk':>16} {'ratio':>7} {'ds + shingling':>15} {'ratio':>7}")
    throughput = []
    for num_perm in (128, 112):
        hasher = MinHasher(MinHashConfig(num_bands=num_perm // 8, rows_per_band=8))
        hasher.signatures(texts[:10])  # warm up the tables
        ours_s, ours, bulk_s, bulk = race(lambda: hasher.signatures(texts), lambda: MinHash.bulk(ready, num_perm=num_perm), args.rounds)
        ours_s2, _, full_s, _ = race(lambda: hasher.signatures(texts), lambda: datasketch_signatures(texts, num_perm), args.rounds)
        assert ours.shape == (len(texts), num_perm) and len(bulk) == len(texts)
        ours_s = min(ours_s, ours_s2)
        row = {
            "num_perm": num_perm,
            "documents": len(texts),
            "ours_docs_s": len(texts) / ours_s,
            "datasketch_bulk_docs_s": len(texts) / bulk_s,
            "ratio_bulk": bulk_s / ours_s,
            "datasketch_with_shingling_docs_s": len(texts) / full_s,
            "ratio_with_shingling": full_s / ours_s,
        }
        throughput.append(row)
        print(
            f"{num_perm:>6} {row['ours_docs_s']:>12,.0f} {row['datasketch_bulk_docs_s']:>16,.0f} {row['ratio_bulk']:>6.2f}x "
            f"{row['datasketch_with_shingling_docs_s']:>15,.0f} {row['ratio_with_shingling']:>6.2f}x"
        )

    # Quality on planted near-duplicates, with the default 14 × 8 banding for both.
    config = MinHashConfig()
    rng = random.Random(0)
    vocabulary = sorted({w for t in texts for w in t.split()})
    bases = texts[: args.planted]
    unrelated = texts[args.planted :]
    copies = [change_words(t, rng.choice((0.01, 0.02, 0.03)), rng, vocabulary) for t in bases]
    corpus = bases + unrelated + copies
    planted = [(i, len(bases) + len(unrelated) + i) for i in range(len(bases))]
    results = {}
    for label, compute in (("ours", lambda: MinHasher(config).signatures(corpus)), ("datasketch", lambda: datasketch_signatures(corpus, config.num_perm))):
        signatures = compute()
        started = time.perf_counter()
        roots = cluster_roots(signatures, config)
        results[label] = quality(roots, corpus, planted, config) | {"cluster_s": time.perf_counter() - started}
    truths = results["ours"].pop("_truths")
    results["datasketch"].pop("_truths")
    expected = float(np.mean([lsh_probability(t, config.num_bands, config.rows_per_band) for t in truths]))
    print(
        f"\n{len(corpus)} documents: {len(bases)} planted pairs (true Jaccard {min(truths):.2f}-{max(truths):.2f}, "
        f"mean {np.mean(truths):.2f}; S-curve expects recall {expected:.3f}), {len(unrelated)} unrelated; "
        f"{config.num_bands} bands × {config.rows_per_band} rows, threshold {config.threshold}"
    )
    print(f"{'':>11} {'recall':>7} {'recall J≥0.8':>13} {'precision':>10} {'removed':>8} {'cluster s':>10}")
    for label, r in results.items():
        print(f"{label:>11} {r['recall']:>7.3f} {r['recall_jaccard_ge_0.8']:>13.3f} {r['precision']:>10.3f} {r['removed']:>8} {r['cluster_s']:>10.3f}")

    if args.json:
        with open(args.json, "w") as f:
            json.dump({"throughput": throughput, "quality": results, "expected_recall": expected}, f, indent=2)


if __name__ == "__main__":
    main()
