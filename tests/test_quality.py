"""The fastText quality classifier: trains on synthetic prose vs spam, then filters by score."""

from __future__ import annotations

import json
import pickle
import random
from pathlib import Path

import pytest

pytest.importorskip("fasttext")

from scratchlm.config import field_docs
from scratchlm.data.documents import Document
from scratchlm.data.quality import (
    HQ_LABEL,
    LQ_LABEL,
    QualityClassifierConfig,
    QualityClassifierFilter,
    QualityTrainConfig,
    binary_metrics,
    load_model,
    pareto_draw,
    read_examples,
    split_examples,
)
from scratchlm.errors import UserError

SUBJECTS = ["The old farmer", "A young teacher", "My neighbour", "The committee", "Her brother", "The scientist",
            "Our guide", "The small child", "A quiet student", "The doctor", "His grandmother", "The captain"]
VERBS = ["carefully examined", "quietly described", "finally repaired", "slowly painted", "happily visited",
         "patiently explained", "briefly mentioned", "proudly showed", "gently moved", "eagerly read"]
OBJECTS = ["the wooden bridge", "a letter from the city", "the history of the valley", "the broken clock",
           "a new garden behind the school", "the results of the experiment", "an old map of the river",
           "the plans for the harbour", "a story about the mountains", "the morning newspaper"]
TAILS = ["before the storm arrived", "during the long winter", "after lunch", "with great care",
         "while the others waited", "on a bright afternoon", "as the sun went down", "for the first time"]
SPAM = ["click", "here", "buy", "now", "free", "$$$", "login", "subscribe", "cheap", "deal", "win", "prize",
        "bonus", "casino", "discount", "offer", "limited", "!!!", "best", "price", "sale", "download", "viagra"]


def prose(rng: random.Random) -> str:
    sentences = []
    for _ in range(rng.randint(3, 6)):
        sentence = f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)} {rng.choice(TAILS)}"
        sentences.append(sentence + rng.choice([".", ".", ".", "!", "?"]))
    return " ".join(sentences)


def spam(rng: random.Random) -> str:
    kind = rng.randrange(3)
    if kind == 0:  # spammy call to action
        return " ".join(rng.choice(SPAM) for _ in range(rng.randint(8, 25)))
    if kind == 1:  # keyword list, one per line
        return "\n".join(rng.choice(SPAM).upper() for _ in range(rng.randint(5, 15)))
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789$%#@"
    return " ".join("".join(rng.choice(alphabet) for _ in range(rng.randint(3, 12))) for _ in range(rng.randint(5, 20)))


def write_jsonl(path: Path, texts: list[str], prefix: str) -> Path:
    path.write_text("".join(json.dumps({"id": f"{prefix}{i}", "text": t}) + "\n" for i, t in enumerate(texts)))
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("quality")
    rng = random.Random(1234)
    pos = write_jsonl(tmp / "pos.jsonl", [prose(rng) for _ in range(200)], "p")
    neg = write_jsonl(tmp / "neg.jsonl", [spam(rng) for _ in range(200)], "n")
    # More epochs than the default (tiny data converges slowly) and a small cutoff (quantizing is
    # k-means over the kept rows, so a small cutoff keeps the test fast and the file ~115 kB).
    config = QualityTrainConfig(seed=7, validation_fraction=0.2, epochs=25, cutoff=1000)
    metrics = train_quality_classifier_once(pos, neg, tmp / "model.bin", config)
    return {"pos": pos, "neg": neg, "config": config, "metrics": metrics, "tmp": tmp}


def train_quality_classifier_once(pos: Path, neg: Path, output: Path, config: QualityTrainConfig) -> dict:
    from scratchlm.data.quality import train_quality_classifier

    return train_quality_classifier([pos], [neg], output, config)


def test_config_fields_are_documented() -> None:
    for cls in (QualityTrainConfig, QualityClassifierConfig):
        docs = field_docs(cls)
        assert all(docs.get(f) for f in cls.__dataclass_fields__), cls


def test_training_separates_held_out_and_metrics_match_predictions(trained: dict) -> None:
    metrics = trained["metrics"]
    model_path = Path(metrics["model_path"])
    assert model_path.suffix == ".ftz" and model_path.is_file()
    assert metrics["train_examples"] == {"hq": 160, "lq": 160}
    assert metrics["validation_examples"] == {"hq": 40, "lq": 40}
    validation = metrics["validation"]
    assert validation["accuracy"] >= 0.9

    # Recompute from the model's own predictions on the same held-out split.
    config = trained["config"]
    pos = read_examples([trained["pos"]], HQ_LABEL, config.max_chars)
    neg = read_examples([trained["neg"]], LQ_LABEL, config.max_chars)
    _, held = split_examples(pos, neg, config)
    model = load_model(model_path)
    tp = fp = fn = tn = 0
    for label, text in held:
        labels, probs = model.predict(text, k=-1)
        p_hq = dict(zip(labels, probs)).get(HQ_LABEL, 0.0)
        hq = p_hq >= 0.5
        tp += hq and label == HQ_LABEL
        fp += hq and label == LQ_LABEL
        fn += (not hq) and label == HQ_LABEL
        tn += (not hq) and label == LQ_LABEL
    assert validation["confusion"] == {"tp": tp, "fp": fp, "fn": fn, "tn": tn}
    assert validation["accuracy"] == pytest.approx((tp + tn) / len(held))
    assert validation["precision"] == pytest.approx(tp / (tp + fp))
    assert validation["recall"] == pytest.approx(tp / (tp + fn))

    sidecar = json.loads(Path(f"{model_path}.json").read_text())
    assert sidecar["labels"] == {"positive": HQ_LABEL, "negative": LQ_LABEL}
    assert sidecar["config"]["seed"] == 7
    assert sidecar["metrics"]["validation"] == validation


def test_quantized_model_is_small(trained: dict) -> None:
    metrics = trained["metrics"]
    assert metrics["model_bytes"] == Path(metrics["model_path"]).stat().st_size
    assert metrics["model_bytes"] < 300_000  # ~115 kB here; the unquantized .bin would be ~51 MB


def test_training_is_deterministic_for_a_seed(trained: dict, tmp_path: Path) -> None:
    again = train_quality_classifier_once(trained["pos"], trained["neg"], tmp_path / "again", trained["config"])
    assert again["validation"] == trained["metrics"]["validation"]


def test_binary_metrics() -> None:
    m = binary_metrics([HQ_LABEL, HQ_LABEL, LQ_LABEL, LQ_LABEL], [0.9, 0.2, 0.6, 0.1])
    assert m["confusion"] == {"tp": 1, "fp": 1, "fn": 1, "tn": 1}
    assert (m["accuracy"], m["precision"], m["recall"]) == (0.5, 0.5, 0.5)


def _documents(n: int = 30, seed: int = 99) -> tuple[list[Document], list[Document]]:
    rng = random.Random(seed)
    good = [Document(id=f"good{i}", text=prose(rng)) for i in range(n)]
    bad = [Document(id=f"bad{i}", text=spam(rng)) for i in range(n)]
    return good, bad


def test_threshold_mode_keeps_prose_and_removes_spam(trained: dict) -> None:
    good, bad = _documents()
    step = QualityClassifierFilter(QualityClassifierConfig(model_path=trained["metrics"]["model_path"]))
    kept = list(step.run(good + bad))
    kept_ids = {d.id for d in kept}
    assert sum(d.id in kept_ids for d in good) >= 28
    assert sum(d.id in kept_ids for d in bad) <= 2
    assert step.stats.read == 60 == step.stats.kept + sum(step.stats.removed.values())
    assert set(step.stats.removed) == {"low_quality_score"}
    for doc in good + bad:
        score = doc.meta["quality_score"]
        assert 0 <= score <= 1 and score == round(score, 4)
        assert (doc.id in kept_ids) == (score >= 0.5) or abs(score - 0.5) < 1e-4
    histogram = step.details()["score_histogram"]
    assert len(histogram) == 10 and sum(histogram.values()) == 60
    # reason() agrees with run()
    single = QualityClassifierFilter(QualityClassifierConfig(model_path=trained["metrics"]["model_path"]))
    assert single.reason(Document(id="x", text=good[0].text)) is None


def test_pareto_mode_is_deterministic_and_keeps_high_scores(trained: dict) -> None:
    good, bad = _documents(n=100)
    config = QualityClassifierConfig(model_path=trained["metrics"]["model_path"], mode="pareto", seed=3)
    first = QualityClassifierFilter(config)
    kept_first = [d.id for d in first.run(good + bad)]
    second = QualityClassifierFilter(config)
    kept_second = [d.id for d in second.run(list(reversed(good + bad)))]  # order does not matter
    assert sorted(kept_first) == sorted(kept_second)
    assert first.stats.read == first.stats.kept + sum(first.stats.removed.values()) == 200
    assert set(first.stats.removed) <= {"pareto_rejected"}
    high = [d for d in good if d.meta["quality_score"] >= 0.9]
    assert len(high) >= 90
    assert sum(d.id in kept_first for d in high) >= 0.95 * len(high)
    assert sum(d.id in kept_first for d in bad) < 50  # most low scores rejected
    assert pareto_draw("doc", 1, 9.0) == pareto_draw("doc", 1, 9.0) != pareto_draw("doc", 2, 9.0)


def test_filter_pickles_without_its_model(trained: dict) -> None:
    step = QualityClassifierFilter(QualityClassifierConfig(model_path=trained["metrics"]["model_path"]))
    good, _ = _documents(n=2)
    list(step.run(good))
    assert step._model is not None
    clone = pickle.loads(pickle.dumps(step))
    assert clone._model is None
    assert clone.reason(Document(id="y", text=good[0].text)) is None


def test_missing_model_is_a_user_error(tmp_path: Path) -> None:
    step = QualityClassifierFilter(QualityClassifierConfig(model_path=str(tmp_path / "nope.ftz")))
    with pytest.raises(UserError, match="does not exist"):
        list(step.run([Document(id="a", text="hello there")]))
    with pytest.raises(UserError):
        load_model("")


def test_empty_negative_side_is_a_user_error(tmp_path: Path) -> None:
    from scratchlm.data.quality import train_quality_classifier

    pos = write_jsonl(tmp_path / "pos.jsonl", ["Some good prose here."], "p")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(UserError, match="negative"):
        train_quality_classifier([pos], [empty], tmp_path / "m", QualityTrainConfig())
    with pytest.raises(UserError):
        train_quality_classifier([pos], [], tmp_path / "m", QualityTrainConfig())


def test_bad_config_is_a_user_error() -> None:
    with pytest.raises(UserError):
        QualityClassifierConfig(mode="random")
    with pytest.raises(UserError):
        QualityTrainConfig(validation_fraction=1.0)


def test_cli_trains_and_prepare_runs_the_classifier_step(tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    from scratchlm.data.documents import ReadStats, read_documents
    from scratchlm.data.prepare import PrepareConfig, prepare

    rng = random.Random(3)
    pos = write_jsonl(tmp_path / "pos.jsonl", [prose(rng) for _ in range(150)], "p")
    neg = write_jsonl(tmp_path / "neg.jsonl", [spam(rng) for _ in range(150)], "n")
    cli = [sys.executable, "-c", "from scratchlm.cli import main; main()", "-q", "data", "train-quality"]
    result = subprocess.run([*cli, "--positive", str(pos), "--negative", str(neg), "--output", str(tmp_path / "q"), "--no-quantize", "--epochs", "25"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    metrics = json.loads(result.stdout)
    assert metrics["validation"]["accuracy"] >= 0.9 and not metrics["quantized"]

    held_out = write_jsonl(tmp_path / "mixed.jsonl", [prose(rng) for _ in range(10)] + [spam(rng) for _ in range(10)], "m")
    config = PrepareConfig(steps=["quality_classifier"], quality_classifier=QualityClassifierConfig(model_path=str(tmp_path / "q.bin")))
    manifest = prepare([held_out], tmp_path / "out", config)
    kept = list(read_documents([tmp_path / "out" / name for name in manifest["output"]["files"]], ReadStats()))
    assert manifest["accounted"] and all(d.id.startswith("m") for d in kept)
    assert sum(1 for d in kept if d.meta["quality_score"] >= 0.5) == len(kept) and 8 <= len(kept) <= 12
    with pytest.raises(UserError, match="model_path is empty"):
        PrepareConfig(steps=["quality_classifier"])
