"""Tokenizer benchmark on the default corpus: scratchlm against HF `tokenizers` and tiktoken.

Every figure is a ratio against a reference measured in the same run, because shared machines
are noisy:
- training time at each vocabulary size, against HF's ByteLevel BPE trainer on the same texts;
- encoding throughput (MB/s) with 1 and 2 workers, against tiktoken's own encoder built from
  the same ranks;
- bytes per token on held-out plays, against HF's tokenizer trained on the same training plays.

The held-out plays are whole works (both spellings), so no held-out text was seen in training.

    python bench/tokenizer.py [--vocab 8192 32768] [--repeats 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile

import tiktoken
from racing import race  # bench/racing.py: python puts the script's folder on sys.path

from scratchlm.console import set_quiet
from scratchlm.data.corpus import corpus_documents
from scratchlm.tokenizer.tokenizer import Tokenizer
from scratchlm.tokenizer.train import TokenizerTrainConfig, train_from_texts

HELD_OUT_WORKS = ("hamlet_gut", "tempest_gut", "sonnets_gut", "julius_caesar_gut")


def train_hf(texts: list[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=["<|endoftext|>"],
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    return tokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocab", type=int, nargs="+", default=[8192, 32768])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", help="Also write the figures to this file.")
    args = parser.parse_args()
    set_quiet(True)

    documents = list(corpus_documents("shakespeare"))
    train_texts = [d.text for d in documents if d.meta["work"] not in HELD_OUT_WORKS]
    held_out = [d.text for d in documents if d.meta["work"] in HELD_OUT_WORKS]
    all_texts = [d.text for d in documents]
    mb = lambda texts: sum(len(t.encode()) for t in texts) / 1e6  # noqa: E731
    print(f"corpus: {len(documents)} documents, {mb(all_texts):.2f} MB; training on {mb(train_texts):.2f} MB, held out {len(held_out)} documents ({mb(held_out):.2f} MB)")

    rows: list[dict] = []
    print(f"\n{'vocab':>7} {'ours s':>8} {'HF s':>8} {'ratio':>7} {'ours B/tok':>11} {'HF B/tok':>9} {'diff':>7}")
    tokenizers_by_vocab = {}
    for vocab_size in args.vocab:
        ours_s, ours, hf_s, hf = race(
            lambda: train_from_texts(train_texts, TokenizerTrainConfig(vocab_size=vocab_size)),
            lambda: train_hf(train_texts, vocab_size),
            args.repeats,
        )
        held_bytes = sum(len(t.encode()) for t in held_out)
        ours_bpt = held_bytes / sum(len(ids) for ids in ours.encode_batch(held_out))
        hf_bpt = held_bytes / sum(len(e.ids) for e in hf.encode_batch(held_out))
        row = {"vocab": vocab_size, "ours_train_s": ours_s, "hf_train_s": hf_s, "train_ratio": ours_s / hf_s, "ours_bytes_per_token": ours_bpt, "hf_bytes_per_token": hf_bpt}
        rows.append(row)
        tokenizers_by_vocab[vocab_size] = ours
        print(f"{vocab_size:>7} {ours_s:>8.2f} {hf_s:>8.2f} {ours_s / hf_s:>6.2f}x {ours_bpt:>11.3f} {hf_bpt:>9.3f} {ours_bpt / hf_bpt - 1:>+7.2%}")

    # Encoding throughput over the whole corpus, as one batch of documents, with the tokenizer
    # loaded from disk as a user would.
    with tempfile.TemporaryDirectory() as directory:
        tokenizer = Tokenizer.load(tokenizers_by_vocab[args.vocab[0]].save(directory))
    reference = tiktoken.Encoding("reference", pat_str=tokenizer.pattern, mergeable_ranks={t: r for r, t in enumerate(tokenizer.ranks)}, special_tokens=tokenizer.special_tokens)
    size = mb(all_texts)
    encode_rows = []
    print(f"\n{'workers':>7} {'ours MB/s':>10} {'tiktoken MB/s':>14} {'ratio':>7}")
    for workers in (1, 2):
        ours_s, ours_ids, ref_s, ref_ids = race(
            lambda: tokenizer.encode_batch(all_texts, num_threads=workers),
            lambda: reference.encode_ordinary_batch(all_texts, num_threads=workers),
            2 * args.repeats + 1,
        )
        assert ours_ids == ref_ids, "scratchlm and tiktoken disagree on the corpus"
        encode_rows.append({"workers": workers, "ours_mb_s": size / ours_s, "tiktoken_mb_s": size / ref_s, "ratio": ref_s / ours_s})
        print(f"{workers:>7} {size / ours_s:>10.2f} {size / ref_s:>14.2f} {ref_s / ours_s:>6.2f}x")
    print(f"scaling 1 -> 2 workers: {encode_rows[1]['ours_mb_s'] / encode_rows[0]['ours_mb_s']:.2f}x")

    if args.json:
        with open(args.json, "w") as f:
            json.dump({"training": rows, "encoding": encode_rows}, f, indent=2)


if __name__ == "__main__":
    main()
