"""The lm-evaluation-harness adapter, offline: a local YAML multiple-choice task over a local
JSONL file gives lm-eval the accuracy our own task scorer gives, through the same log-likelihoods."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from conftest import synthetic_text

lm_eval = pytest.importorskip("lm_eval", reason="lm-eval is not installed (pip install 'scratchlm[eval]')")

from scratchlm.checkpoints import load_model  # noqa: E402
from scratchlm.eval.harness import ScratchLM  # noqa: E402
from scratchlm.eval.tasks import evaluate_task, load_task, score_continuations  # noqa: E402
from scratchlm.model.gpt import GPT, GPTConfig  # noqa: E402
from scratchlm.tokenizer.train import TokenizerTrainConfig, train_from_texts  # noqa: E402
from scratchlm.train.checkpoint import save_checkpoint  # noqa: E402

WORDS = "the of and to in was he that it for on with".split()


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    directory = tmp_path_factory.mktemp("harness")
    tokenizer = train_from_texts([synthetic_text(0)], TokenizerTrainConfig(vocab_size=300, workers=1))
    torch.manual_seed(0)
    checkpoint = save_checkpoint(directory / "run", 1, GPT(GPTConfig(vocab_size=320, block_size=64, n_layer=2, n_head=2, n_embd=32)), tokenizer, meta={})
    items = [{"context": f"{WORDS[i % 12]} {WORDS[(i * 5) % 12]} was", "choices": [f" {w}" for w in WORDS[i % 4 : i % 4 + 4]], "label": i % 4} for i in range(24)]
    data = directory / "items.jsonl"
    data.write_text("".join(json.dumps(item) + "\n" for item in items))
    tasks = directory / "tasks"
    tasks.mkdir()
    (tasks / "tiny_mc.yaml").write_text(
        "task: tiny_mc\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        "doc_to_text: '{{context}}'\n"
        "doc_to_choice: '{{choices}}'\n"
        "doc_to_target: '{{label}}'\n"
        "target_delimiter: ''\n"
        "metric_list:\n  - metric: acc\n"
    )
    return checkpoint, data, tasks


def test_lm_eval_scores_a_local_task_as_our_scorer_does(setup: tuple[Path, Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    from lm_eval.tasks import TaskManager

    checkpoint, data, tasks = setup
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    adapter = ScratchLM(checkpoint=str(checkpoint), batch_size=8)
    results = lm_eval.simple_evaluate(model=adapter, tasks=["tiny_mc"], task_manager=TaskManager(include_path=str(tasks)), limit=None)
    theirs = results["results"]["tiny_mc"]["acc,none"]
    model, tokenizer, _ = load_model(checkpoint)
    ours = evaluate_task(model, tokenizer, load_task(data))
    assert theirs == pytest.approx(ours["accuracy"])
    assert os.environ["HF_DATASETS_OFFLINE"] == "1"


def test_the_adapters_requests_run_on_our_code(setup: tuple[Path, Path, Path]) -> None:
    from lm_eval.api.instance import Instance

    checkpoint, _, _ = setup
    adapter = ScratchLM(checkpoint=str(checkpoint), batch_size=4)
    pairs = [("the word", " was"), ("", " of the"), ("he said that", " it")]
    requests = [Instance(request_type="loglikelihood", doc={}, arguments=pair, idx=i) for i, pair in enumerate(pairs)]
    assert adapter.loglikelihood(requests) == score_continuations(adapter.model, adapter.tokenizer, pairs, 4)
    # Rolling: the sum of every token's log-probability after <|endoftext|>, by hand.
    text = "the word was here"
    ids = [adapter.tokenizer.eot_id, *adapter.tokenizer.encode_ordinary(text)]
    with torch.no_grad():
        log_probs = adapter.model(torch.tensor([ids[:-1]]))[0][0].log_softmax(-1)
    want = sum(float(log_probs[i, t]) for i, t in enumerate(ids[1:]))
    [got] = adapter.loglikelihood_rolling([Instance(request_type="loglikelihood_rolling", doc={}, arguments=(text,), idx=0)])
    assert got == pytest.approx(want, rel=1e-5)
    [generated] = adapter.generate_until([Instance(request_type="generate_until", doc={}, arguments=("the word", {"until": ["\n"], "max_gen_toks": 5}), idx=0)])
    assert isinstance(generated, str) and "\n" not in generated
