"""`finetune classify` end to end on a tiny model: a separable task is learnt in seconds, the head
reads the last real token (or the mean), LoRA trains adapters and head only, the report stands
beside the majority baseline, and `scratchlm classify` labels new texts."""

from __future__ import annotations

import csv
import json
import random
import sys
from pathlib import Path

import pytest
import torch
from conftest import synthetic_text

from scratchlm.checkpoints import find_checkpoint, load_classifier
from scratchlm.config import load_config
from scratchlm.finetune.classify import finetune_classify, label_texts
from scratchlm.finetune.settings import ClassifyConfig
from scratchlm.model.gpt import GPT, GPTConfig
from scratchlm.tokenizer.train import TokenizerTrainConfig, train_from_texts
from scratchlm.train.checkpoint import save_checkpoint

torch.set_num_threads(1)
SEA = "ship sail wave tide anchor harbour storm salt".split()
LAND = "field plough wheat barn hedge meadow stone hill".split()


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("classify")
    tokenizer = train_from_texts([synthetic_text(0) + " ".join(SEA + LAND) * 20], TokenizerTrainConfig(vocab_size=320, workers=1))
    torch.manual_seed(0)
    save_checkpoint(directory / "base", 10, GPT(GPTConfig(vocab_size=384, block_size=64, n_layer=2, n_head=2, n_embd=48)), tokenizer, meta={"tokens_seen": 0})
    rng = random.Random(0)
    with (directory / "rows.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        for i in range(240):
            label = "sea" if i % 3 else "land"  # 2:1, so the majority baseline is 0.67
            words = SEA if label == "sea" else LAND
            writer.writerow([" ".join(rng.choice(words) for _ in range(rng.randint(3, 12))), label])
    return directory


def config(base: Path, out: Path, *overrides: str) -> ClassifyConfig:
    settings = [
        f"data.train={base / 'rows.csv'}",
        "data.batch_size=16",
        "data.train_blocks=-1",
        f"train.init_from={base / 'base'}",
        f"train.out_dir={out}",
        "train.micro_batch_size=8",
        "train.max_steps=40",
        "train.eval_every=20",
        "train.dtype=float32",
        "optim.lr=2e-3",
        "optim.warmup_steps=2",
        *overrides,
    ]
    return load_config(ClassifyConfig, None, settings)


@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_a_separable_task_is_learnt_and_reported_beside_the_baseline(base: Path, tmp_path: Path, pooling: str) -> None:
    result = finetune_classify(config(base, tmp_path / "run", f"data.pooling={pooling}"))
    assert result["test"]["accuracy"] >= 0.95
    assert result["test"]["majority_baseline"] == pytest.approx(2 / 3, abs=0.05)
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["labels"] == ["land", "sea"] and len(report["test"]["confusion"]) == 2
    checkpoint = find_checkpoint(tmp_path / "run")
    assert checkpoint.meta["labels"] == ["land", "sea"] and checkpoint.meta["pooling"] == pooling
    model, tokenizer, meta = load_classifier(tmp_path / "run")
    labelled = label_texts(model, tokenizer, meta["labels"], ["ship wave storm sail", "wheat barn meadow"])
    assert [r["label"] for r in labelled] == ["sea", "land"]
    assert all(abs(sum(r["probabilities"].values()) - 1) < 1e-5 for r in labelled)


def test_lora_trains_adapters_and_head_only(base: Path, tmp_path: Path) -> None:
    result = finetune_classify(config(base, tmp_path / "lora", "lora.rank=4", "optim.lr=1e-2", "train.max_steps=60"))
    assert result["test"]["accuracy"] >= 0.9
    assert find_checkpoint(tmp_path / "lora").meta["lora"]["rank"] == 4


def test_only_the_last_blocks_train_by_default(base: Path, tmp_path: Path) -> None:
    from scratchlm.finetune import classify

    seen = {}
    original = classify._choose_trainable

    def spy(model, train_blocks, lora):  # type: ignore[no-untyped-def]
        original(model, train_blocks, lora)
        seen.update({name: p.requires_grad for name, p in model.named_parameters()})

    classify._choose_trainable = spy
    try:
        finetune_classify(config(base, tmp_path / "frozen", "data.train_blocks=1", "train.max_steps=2"))
    finally:
        classify._choose_trainable = original
    assert seen["classifier.weight"] and seen["transformer.h.1.attn.c_q.weight"] and seen["transformer.ln_f.weight"]
    assert not seen["transformer.h.0.attn.c_q.weight"] and not seen["transformer.wte.weight"]


def test_cli_classify_labels_texts_and_files(base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from scratchlm.cli import main

    finetune_classify(config(base, tmp_path / "run"))
    (tmp_path / "new.jsonl").write_text(json.dumps({"text": "tide anchor salt"}) + "\n" + json.dumps({"text": ""}) + "\n")

    def run(*args: str) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", ["scratchlm", *args])
        with pytest.raises(SystemExit) as exit:
            main()
        captured = capsys.readouterr()
        return exit.value.code or 0, captured.out, captured.err

    code, out, _ = run("classify", str(tmp_path / "run"), "--text", "hedge stone hill")
    assert code == 0 and out.startswith("land\t")
    code, out, err = run("classify", str(tmp_path / "run"), "--input", str(tmp_path / "new.jsonl"))
    assert code == 0 and json.loads(out)["label"] == "sea" and len(out.splitlines()) == 1 and "skipped 1 empty text" in err
    code, _, err = run("classify", str(tmp_path / "run"))
    assert code == 2 and "--text TEXT (repeatable) or --input FILE" in err
    code, _, err = run("classify", str(base / "base"), "--text", "x")
    assert code == 2 and "is not a classifier" in err


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["data.label_column=labl"], "no label column 'labl'"),
        (["data.labels=[\"sea\", \"sky\"]"], "not one of the labels"),
        (["data.split=[0.5, 0.2, 0.2, 0.1]"], "data.split has 4 numbers"),
        (["data.pooling=max"], "data.pooling is 'max'"),
        (["data.batch_size=12"], "not a multiple of train.micro_batch_size 8"),
    ],
)
def test_bad_jobs_are_one_sentence(base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], overrides: list[str], message: str) -> None:
    from scratchlm.cli import main

    settings = [f"data.train={base / 'rows.csv'}", f"train.init_from={base / 'base'}", f"train.out_dir={tmp_path / 'out'}", "train.micro_batch_size=8", *overrides]
    monkeypatch.setattr(sys, "argv", ["scratchlm", "finetune", "classify", *[f"--set={s}" for s in settings]])
    with pytest.raises(SystemExit) as exit:
        main()
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert exit.value.code == 2 and len(errors) == 1 and message in errors[0], err
