"""Evaluation on text: every token scored exactly once, by sliding windows where texts are long."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import make_data, synthetic_text

from scratchlm.errors import UserError
from scratchlm.eval.perplexity import ShardEvaluator, token_byte_lengths
from scratchlm.eval.text import (
    document_windows,
    evaluate_path,
    evaluate_texts,
    evaluate_tokens,
)
from scratchlm.model.gpt import GPT, GPTConfig
from scratchlm.tokenizer.tokenizer import Tokenizer
from scratchlm.tokenizer.train import TokenizerTrainConfig, train_from_texts

CONTEXT = 16


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return train_from_texts([synthetic_text(s, 800) for s in range(3)], TokenizerTrainConfig(vocab_size=300, workers=1))


def tiny_model(vocab_size: int, context: int = CONTEXT, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=vocab_size, block_size=context, n_layer=2, n_head=2, n_embd=32, tie_embeddings=False)).eval()


def uniform_model(vocab_size: int) -> GPT:
    model = tiny_model(vocab_size)
    with torch.no_grad():
        model.lm_head.weight.zero_()  # every logit 0: uniform over the model's vocabulary
    return model


def texts() -> list[str]:
    # Lengths from a few tokens to several contexts, so windows of many sizes share batches.
    return [synthetic_text(10 + i, n) for i, n in enumerate([3, 40, 7, 120, 1, 25])]


def encoded(tokenizer: Tokenizer, text: str) -> list[int]:
    return [tokenizer.eot_id, *tokenizer.encode_ordinary(text)]


def nats_by_hand(model: GPT, ids: list[int], context: int, left: int) -> tuple[float, int]:
    """Score ids[1:] one token at a time, each from its last `left` predecessors (at most) — no windows."""
    total, count = 0.0, 0
    with torch.no_grad():
        for t in range(1, len(ids)):
            x = torch.tensor([ids[max(0, t - left) : t]])
            logits, _ = model(x)
            total += float(F.cross_entropy(logits[0, -1:].double(), torch.tensor([ids[t]])))
            count += 1
    return total, count


def test_uniform_model_has_perplexity_v_and_log2_v_bits_per_token(tokenizer: Tokenizer) -> None:
    vocab = 320
    result = evaluate_texts(uniform_model(vocab), tokenizer, texts(), stride=5, batch_size=3)
    assert result["perplexity"] == pytest.approx(vocab, rel=1e-6)
    assert result["loss"] == pytest.approx(math.log(vocab), rel=1e-6)
    expected_tokens = sum(len(tokenizer.encode_ordinary(t)) for t in texts())
    expected_bytes = sum(len(t.encode("utf-8")) for t in texts())
    assert (result["tokens"], result["bytes"]) == (expected_tokens, expected_bytes)
    assert result["bits_per_byte"] == pytest.approx(expected_tokens * math.log2(vocab) / expected_bytes, rel=1e-6)


def test_windows_score_every_token_exactly_once() -> None:
    for n in [2, 5, CONTEXT, CONTEXT + 1, CONTEXT + 2, 3 * CONTEXT + 7, 100]:
        for stride in [1, 3, 7, CONTEXT - 1, CONTEXT]:
            ids = np.arange(n) + 1000
            x, y = document_windows(ids, CONTEXT, stride)
            scored = np.sort(y[y >= 0])
            np.testing.assert_array_equal(scored, ids[1:])  # each target once, none missing
            starts = x[:, 0] - 1000
            np.testing.assert_array_equal(starts, np.arange(len(x)) * stride)
            # Each scored target's input is the token before it (x and y are aligned).
            np.testing.assert_array_equal(x[y >= 0] + 1, y[y >= 0])
            if len(x) > 1:  # later windows score only their last `stride` positions
                assert (y[1:, : CONTEXT - stride] == -100).all()


def test_stride_equal_to_context_is_chunked_evaluation(tokenizer: Tokenizer) -> None:
    model = tiny_model(320)
    result = evaluate_texts(model, tokenizer, texts(), stride=CONTEXT, batch_size=4)
    total, count = 0.0, 0
    with torch.no_grad():
        for text in texts():
            ids = encoded(tokenizer, text)
            for start in range(0, len(ids) - 1, CONTEXT):
                chunk = ids[start : start + CONTEXT + 1]
                logits, _ = model(torch.tensor([chunk[:-1]]))
                total += float(F.cross_entropy(logits[0].double(), torch.tensor(chunk[1:]), reduction="sum"))
                count += len(chunk) - 1
    assert result["tokens"] == count
    assert result["loss"] == pytest.approx(total / count, rel=1e-5)


@pytest.mark.parametrize("stride", [1, 4])
def test_sliding_windows_equal_scoring_each_token_by_hand(tokenizer: Tokenizer, stride: int) -> None:
    model = tiny_model(320, seed=1)
    text = synthetic_text(3, 30)
    ids = encoded(tokenizer, text)
    assert len(ids) > 3 * CONTEXT
    result = evaluate_texts(model, tokenizer, [text], stride=stride, batch_size=5)
    # With stride s, the token at t (beyond the first window) is predicted from the window
    # holding it at one of its last s positions: exactly by hand with stride 1 (full context);
    # with s > 1 by hand too, window by window.
    if stride == 1:
        total, count = nats_by_hand(model, ids, CONTEXT, CONTEXT)
    else:
        total, count = 0.0, 0
        with torch.no_grad():
            for t in range(1, len(ids)):
                if t <= CONTEXT:
                    start = 0
                else:
                    start = -(-(t - CONTEXT) // stride) * stride  # the window whose last `stride` positions hold t
                x = torch.tensor([ids[start:t]])
                logits, _ = model(x)
                total += float(F.cross_entropy(logits[0, -1:].double(), torch.tensor([ids[t]])))
                count += 1
    assert result["tokens"] == count == len(ids) - 1
    assert result["loss"] == pytest.approx(total / count, rel=1e-5)


def test_batching_does_not_change_the_figures(tokenizer: Tokenizer) -> None:
    model = tiny_model(320, seed=2)
    one = evaluate_texts(model, tokenizer, texts(), stride=6, batch_size=1)
    many = evaluate_texts(model, tokenizer, texts(), stride=6, batch_size=7)
    for key in ("tokens", "bytes", "windows", "documents"):
        assert one[key] == many[key]
    for key in ("loss", "perplexity", "bits_per_byte"):
        assert one[key] == pytest.approx(many[key], rel=1e-5)


def test_progress_counts_every_scored_token(tokenizer: Tokenizer) -> None:
    counted: list[int] = []
    result = evaluate_texts(tiny_model(320), tokenizer, texts(), stride=5, batch_size=3, progress=counted.append)
    assert sum(counted) == result["tokens"]


def test_text_jsonl_and_shards_agree(tokenizer: Tokenizer, tmp_path: Path) -> None:
    corpus = [synthetic_text(20 + i, 200) for i in range(3)]
    shards = make_data(tmp_path / "data", corpus)
    trained = Tokenizer.load(tmp_path / "data" / "tokenizer")
    model = tiny_model(320, seed=3)
    (tmp_path / "val.txt").write_text(corpus[-1], encoding="utf-8")
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in corpus[:-1]), encoding="utf-8")

    from_txt = evaluate_path(model, trained, tmp_path / "val.txt", stride=CONTEXT, batch_size=4)["val.txt"]
    from_shards = evaluate_path(model, trained, shards, "val", stride=CONTEXT, batch_size=4)["val"]
    from_jsonl = evaluate_path(model, trained, tmp_path / "docs.jsonl", stride=CONTEXT, batch_size=4)["docs.jsonl"]
    train = evaluate_path(model, trained, shards, "train", stride=CONTEXT, batch_size=4)["train"]
    for a, b in [(from_txt, from_shards), (from_jsonl, train)]:
        assert (a["tokens"], a["bytes"]) == (b["tokens"], b["bytes"])
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-6)

    # Without a stride, shards are scored as training evaluates them.
    every = evaluate_path(model, trained, shards, batch_size=4)
    assert set(every) == {"train", "val"}
    byte_lengths = token_byte_lengths(trained, 320)
    expected = ShardEvaluator(shards, "val", 4, CONTEXT, byte_lengths)(model)
    assert every["val"]["tokens"] == expected["tokens"]
    assert every["val"]["loss"] == pytest.approx(expected["loss"], rel=1e-6)
    assert every["val"]["bits_per_byte"] == pytest.approx(expected["bpb"], rel=1e-6)


def test_a_documents_directory_reads_its_files(tokenizer: Tokenizer, tmp_path: Path) -> None:
    corpus = texts()
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text(corpus[0], encoding="utf-8")
    (tmp_path / "docs" / "b.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in corpus[1:]), encoding="utf-8")
    (tmp_path / "docs" / "notes.md").write_text("not read", encoding="utf-8")
    model = tiny_model(320)
    result = evaluate_path(model, tokenizer, tmp_path / "docs", stride=8)["docs"]
    assert result == evaluate_texts(model, tokenizer, corpus, stride=8)


def test_without_end_of_text_the_first_token_is_context(tokenizer: Tokenizer) -> None:
    model = tiny_model(320)
    ids = [tokenizer.encode_ordinary(t) for t in texts()]
    plain = dataclasses.replace(tokenizer, special_tokens={})
    assert plain.eot_id is None
    result = evaluate_tokens(model, plain, ids, stride=CONTEXT)
    assert result["tokens"] == sum(len(i) - 1 for i in ids)


def test_bad_inputs_are_user_errors(tokenizer: Tokenizer, tmp_path: Path) -> None:
    model = tiny_model(320)
    (tmp_path / "empty.txt").write_text("", encoding="utf-8")
    (tmp_path / "empty").mkdir()
    cases = [
        lambda: evaluate_path(model, tokenizer, tmp_path / "missing.txt"),
        lambda: evaluate_path(model, tokenizer, tmp_path / "empty.txt"),
        lambda: evaluate_path(model, tokenizer, tmp_path / "empty"),
        lambda: evaluate_texts(model, tokenizer, ["some text"], stride=0),
        lambda: evaluate_texts(model, tokenizer, ["some text"], stride=CONTEXT + 1),
        lambda: evaluate_texts(model, tokenizer, ["some text"], batch_size=0),
        lambda: evaluate_texts(model, tokenizer, []),
        lambda: evaluate_path(model, tokenizer, tmp_path / "empty.txt", split="val"),
    ]
    for case in cases:
        with pytest.raises(UserError) as error:
            case()
        message = str(error.value)
        assert message.endswith(".") and message.count(". ") == 0, message


def test_eval_text_prints_a_table_or_json(tokenizer: Tokenizer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import scratchlm.checkpoints
    from scratchlm.eval.text import eval_text

    model = uniform_model(320)
    monkeypatch.setattr(scratchlm.checkpoints, "load_model", lambda path, device, dtype: (model, tokenizer, {}))
    (tmp_path / "a.txt").write_text(texts()[3], encoding="utf-8")
    results = eval_text(tmp_path / "run", tmp_path / "a.txt", stride=8, device="cpu")
    table = capsys.readouterr().out
    assert "a.txt" in table and f"{results['a.txt']['perplexity']:.3f}" in table
    eval_text(tmp_path / "run", tmp_path / "a.txt", device="cpu", as_json=True)
    printed = json.loads(capsys.readouterr().out)
    assert printed["a.txt"]["perplexity"] == pytest.approx(320)
