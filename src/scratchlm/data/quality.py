"""An optional fastText quality classifier: train it on good and bad examples, then filter by score.

This is the classifier-based filter of GPT-3 (Brown et al. 2020, Appendix A) and of many later
pipelines (CCNet, the "fastText classifier" of DCLM and FineWeb-Edu style filters): a linear
fastText model over word n-grams that scores how much a document looks like the positive
("high-quality") examples rather than the negative ones.

Training (`train_quality_classifier`) reads both sides with `read_documents` (text files,
directories, JSONL, Parquet), normalizes every document with `normalize_text` (the same function
the filter uses before predicting), holds out `validation_fraction` of each side, trains with
`fasttext.train_supervised` on labels `__label__hq` / `__label__lq`, and measures accuracy,
precision and recall of the hq class on the held-out documents from its own predictions
(P(hq) >= 0.5 counts as hq). It then quantizes the model (optional, on by default) and saves it
with a JSON sidecar holding the settings, the labels and the metrics.

Filtering (`QualityClassifierFilter`, step name "quality_classifier") writes
`meta["quality_score"]` = P(hq) rounded to 4 decimals and keeps a document either when the score
is at least `threshold` ("threshold" mode), or by GPT-3's stochastic rule ("pareto" mode): keep
it when `np.random.pareto(alpha) > 1 - score`, alpha = 9. The Pareto draw is made with a numpy
generator seeded from a hash of (seed, document id), so a document's fate depends only on its id,
its score and the seed: never on the order of documents, the shard they are in, or the process.

fastText is an optional dependency (`pip install scratchlm[data]`); without it, training and
filtering raise `UserError`. The model is loaded lazily, once per process and path, and the filter
pickles without it, so it travels cheaply to the workers of a process pool.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from scratchlm.data.documents import Document, ReadStats, read_documents
from scratchlm.data.fasttext_models import (
    LazyModel,
    forget,
    import_fasttext,
    load_fasttext,
)
from scratchlm.data.pipeline import Filter, batched
from scratchlm.errors import UserError

HQ_LABEL = "__label__hq"
"""The fastText label of the positive (high-quality) class."""
LQ_LABEL = "__label__lq"
"""The fastText label of the negative (low-quality) class."""
HISTOGRAM_BUCKETS = 10
"""How many equal-width score buckets `QualityClassifierFilter.details` reports over [0, 1]."""
BATCH_SIZE = 256
"""How many documents `QualityClassifierFilter.run` sends to fastText in one `predict` call."""



def normalize_text(text: str, max_chars: int = 0) -> str:
    """The text fastText sees, in training and in filtering alike.

    Keeps the first `max_chars` characters (0: all), lowercases, and collapses every run of
    whitespace (newlines included: fastText reads one example per line) into one space.
    Punctuation is kept: it is part of what separates prose from boilerplate.
    """
    if max_chars:
        text = text[:max_chars]
    return " ".join(text.lower().split())


@dataclass
class QualityTrainConfig:
    """How to train the fastText quality classifier (small, fast, reproducible defaults)."""

    epochs: int = 5
    """Passes over the training examples (fastText `epoch`)."""
    lr: float = 0.1
    """Learning rate (fastText `lr`)."""
    word_ngrams: int = 2
    """Longest word n-gram used as a feature (fastText `wordNgrams`; 2 = words and bigrams)."""
    dim: int = 64
    """Size of the word and n-gram vectors (fastText `dim`)."""
    bucket: int = 200_000
    """Hash buckets for n-gram features (fastText `bucket`; its default 2M makes a 500 MB .bin). Fewer buckets, smaller file."""
    min_count: int = 1
    """Drop words seen fewer times than this in the training data (fastText `minCount`)."""
    quantize: bool = True
    """Quantize the trained model (product quantization with `qnorm`, vocabulary cut to `cutoff`) and save a small .ftz; False saves the full .bin."""
    cutoff: int = 20_000
    """When quantizing, keep only the this many words and n-gram buckets with the largest vector norms (fastText `quantize(cutoff=...)`); 0 keeps all, which leaves the file large."""
    max_chars: int = 10_000
    """Use at most this many leading characters of each document (the filter predicts on the same prefix); 0 means the whole text."""
    seed: int | None = 0
    """Seed of the train/validation split, the example order and fastText. With a seed fastText trains on one thread, so a run is reproducible (as far as fastText allows); None trains on all cores, not reproducibly."""
    validation_fraction: float = 0.1
    """Fraction of each side held out to measure accuracy, precision and recall; 0 holds out nothing (no metrics)."""

    def __post_init__(self) -> None:
        for name in ("epochs", "dim", "bucket", "min_count", "word_ngrams"):
            if getattr(self, name) < 1:
                raise UserError(f"QualityTrainConfig.{name} is {getattr(self, name)}; set it to 1 or more.")
        if self.lr <= 0:
            raise UserError(f"QualityTrainConfig.lr is {self.lr}; set it above 0.")
        if self.cutoff < 0 or self.max_chars < 0:
            raise UserError("QualityTrainConfig.cutoff and max_chars must be 0 or more.")
        if not 0 <= self.validation_fraction < 1:
            raise UserError(
                f"QualityTrainConfig.validation_fraction is {self.validation_fraction}; set it within [0, 1)."
            )


Example = tuple[str, str]  # (label, normalized text)


def read_examples(
    paths: Sequence[str | Path], label: str, max_chars: int, text_field: str = "text"
) -> list[Example]:
    """The normalized, non-blank documents of `paths`, each with `label`."""
    stats = ReadStats()
    examples = []
    for document in read_documents(list(paths), stats, text_field=text_field):
        text = normalize_text(document.text, max_chars)
        if text:
            examples.append((label, text))
    return examples


def split_examples(
    positive: list[Example], negative: list[Example], config: QualityTrainConfig
) -> tuple[list[Example], list[Example]]:
    """(train, validation): `validation_fraction` of each side held out, both lists shuffled by the seed.

    Each side keeps at least one training example; deterministic for a given seed.
    """
    rng = random.Random(config.seed)
    train: list[Example] = []
    validation: list[Example] = []
    for side in (positive, negative):
        side = list(side)
        rng.shuffle(side)
        held = min(round(len(side) * config.validation_fraction), len(side) - 1)
        validation.extend(side[:held])
        train.extend(side[held:])
    rng.shuffle(train)
    rng.shuffle(validation)
    return train, validation


def hq_probabilities(model: Any, texts: list[str]) -> list[float]:
    """P(hq) of each (already normalized) text, in [0, 1]; 0.0 for blank text."""
    scores = [0.0] * len(texts)
    index = [i for i, text in enumerate(texts) if text]
    if not index:
        return scores
    labels, probs = model.predict([texts[i] for i in index], k=-1)
    for i, row_labels, row_probs in zip(index, labels, probs):
        for label, prob in zip(row_labels, row_probs):
            if label == HQ_LABEL:
                scores[i] = min(max(float(prob), 0.0), 1.0)  # fastText's softmax can round just above 1
                break
    return scores


def binary_metrics(labels: Sequence[str], scores: Sequence[float], threshold: float = 0.5) -> dict[str, Any]:
    """Accuracy and hq-class precision, recall and F1 of predicting hq when score >= threshold."""
    tp = fp = fn = tn = 0
    for label, score in zip(labels, scores):
        predicted_hq = score >= threshold
        if label == HQ_LABEL:
            tp, fn = (tp + 1, fn) if predicted_hq else (tp, fn + 1)
        else:
            fp, tn = (fp + 1, tn) if predicted_hq else (fp, tn + 1)
    total = tp + fp + fn + tn
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "examples": total,
        "accuracy": (tp + tn) / total if total else 0.0,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "confusion": {"tp": tp, "fp": fp, "fn": fn, "tn": tn},
    }


def train_quality_classifier(
    positive: Sequence[str | Path],
    negative: Sequence[str | Path],
    output: str | Path,
    config: QualityTrainConfig | None = None,
    text_field: str = "text",
) -> dict[str, Any]:
    """Train a fastText hq-vs-lq classifier, save it and its JSON sidecar, and return the metrics.

    `output`'s suffix is replaced by .ftz (quantized) or .bin; the sidecar is the model path plus
    ".json". The returned dict (also in the sidecar under "metrics") holds the example counts, the
    model path and size in bytes, and "validation": accuracy, precision, recall, F1 and the
    confusion counts of the saved model on the held-out documents (None when nothing is held out).
    """
    config = config or QualityTrainConfig()
    fasttext = import_fasttext("Training the quality classifier")
    if not positive or not negative:
        raise UserError("Training the quality classifier needs positive and negative example files; give both.")
    pos = read_examples(positive, HQ_LABEL, config.max_chars, text_field)
    neg = read_examples(negative, LQ_LABEL, config.max_chars, text_field)
    for name, side in (("positive", pos), ("negative", neg)):
        if not side:
            raise UserError(f"The {name} examples hold no non-blank documents; give files with text on that side.")
    train, validation = split_examples(pos, neg, config)
    output = Path(output).with_suffix(".ftz" if config.quantize else ".bin")
    output.parent.mkdir(parents=True, exist_ok=True)

    seeded = config.seed is not None
    args: dict[str, Any] = {
        "epoch": config.epochs, "lr": config.lr, "wordNgrams": config.word_ngrams, "dim": config.dim,
        "bucket": config.bucket, "minCount": config.min_count, "loss": "softmax", "verbose": 0,
    }
    if seeded:
        args.update(thread=1, seed=config.seed)
    with tempfile.TemporaryDirectory(prefix="scratchlm-quality-") as tmp:
        train_file = Path(tmp) / "train.txt"
        with train_file.open("w", encoding="utf-8") as handle:
            for label, text in train:
                handle.write(f"{label} {text}\n")
        model = fasttext.train_supervised(input=str(train_file), **args)
        if config.quantize:
            unquantized = _validate(model, validation)
            model.quantize(input=str(train_file), qnorm=True, cutoff=config.cutoff, retrain=False, **({"thread": 1} if seeded else {}))
    model.save_model(str(output))
    forget(output)  # a rewritten file must be reloaded

    metrics: dict[str, Any] = {
        "model_path": str(output),
        "model_bytes": output.stat().st_size,
        "quantized": config.quantize,
        "train_examples": {"hq": sum(label == HQ_LABEL for label, _ in train), "lq": sum(label == LQ_LABEL for label, _ in train)},
        "validation_examples": {"hq": sum(label == HQ_LABEL for label, _ in validation), "lq": sum(label == LQ_LABEL for label, _ in validation)},
        "validation": _validate(model, validation),
    }
    if config.quantize:
        metrics["validation_unquantized"] = unquantized
    sidecar = {
        "labels": {"positive": HQ_LABEL, "negative": LQ_LABEL},
        "normalization": "first max_chars characters, lowercased, whitespace runs collapsed to one space",
        "config": dataclasses.asdict(config),
        "positive_inputs": [str(p) for p in positive],
        "negative_inputs": [str(p) for p in negative],
        "text_field": text_field,
        "metrics": metrics,
    }
    Path(f"{output}.json").write_text(json.dumps(sidecar, indent=2) + "\n", encoding="utf-8")
    return metrics


def _validate(model: Any, validation: list[Example]) -> dict[str, Any] | None:
    if not validation:
        return None
    return binary_metrics([label for label, _ in validation], hq_probabilities(model, [text for _, text in validation]))


def load_model(model_path: str | Path) -> Any:
    """The fastText quality model at `model_path`, loaded once per process."""
    if not str(model_path):
        raise UserError("QualityClassifierConfig.model_path is empty; set it to a model trained with train_quality_classifier.")
    path = Path(model_path).expanduser()
    model = load_fasttext(path, "quality", "train one with `scratchlm data train-quality` or fix model_path.")
    if HQ_LABEL not in model.get_labels():
        raise UserError(f"The model {path} has no {HQ_LABEL} label; it is not a quality classifier from train_quality_classifier.")
    return model


@dataclass
class QualityClassifierConfig:
    """Filter documents by the score of a fastText quality classifier (GPT-3 style)."""

    model_path: str = ""
    """The model file written by `train_quality_classifier` (.ftz or .bin)."""
    threshold: float = 0.5
    """Threshold mode: keep documents whose P(hq) >= threshold ("low_quality_score" otherwise)."""
    mode: str = "threshold"
    """"threshold" keeps by `threshold`; "pareto" keeps a document when np.random.pareto(alpha) > 1 - P(hq) (GPT-3, Brown et al. 2020, Appendix A), which keeps most high-score and some low-score documents ("pareto_rejected" otherwise)."""
    alpha: float = 9.0
    """Shape of the Pareto draw in "pareto" mode; GPT-3 used 9. Larger alpha rejects low scores more strictly."""
    seed: int = 0
    """Seed of the Pareto draws; each document's draw comes from a generator seeded by a hash of (seed, document id), so it does not depend on order or process."""
    max_chars: int = 10_000
    """Predict on at most this many leading characters (use the training setting); 0 means the whole text."""

    def __post_init__(self) -> None:
        if self.mode not in ("threshold", "pareto"):
            raise UserError(f'QualityClassifierConfig.mode is "{self.mode}"; set it to "threshold" or "pareto".')
        if not 0 <= self.threshold <= 1:
            raise UserError(f"QualityClassifierConfig.threshold is {self.threshold}; set it within [0, 1].")
        if self.alpha <= 0:
            raise UserError(f"QualityClassifierConfig.alpha is {self.alpha}; set it above 0.")
        if self.max_chars < 0:
            raise UserError(f"QualityClassifierConfig.max_chars is {self.max_chars}; set it to 0 or more.")


def pareto_draw(document_id: str, seed: int, alpha: float) -> float:
    """The document's Pareto (Lomax) draw: numpy's `pareto(alpha)` from a generator seeded by (seed, id)."""
    digest = hashlib.blake2b(f"{seed}\x00{document_id}".encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return float(np.random.default_rng(int.from_bytes(digest, "little")).pareto(alpha))


class QualityClassifierFilter(LazyModel, Filter):
    """Scores every document with the quality classifier and keeps the high-quality ones.

    Writes `meta["quality_score"]` (P(hq), 4 decimals; blank documents score 0.0) and removes
    documents as "low_quality_score" (threshold mode) or "pareto_rejected" (pareto mode). The
    decision uses the unrounded score.
    """

    name: ClassVar[str] = "quality_classifier"

    def __init__(self, config: QualityClassifierConfig, batch_size: int = BATCH_SIZE) -> None:
        super().__init__()
        self.config = config
        self.batch_size = max(1, batch_size)
        self.histogram = [0] * HISTOGRAM_BUCKETS

    def load(self) -> Any:
        return load_model(self.config.model_path)

    def scores(self, texts: list[str]) -> list[float]:
        """P(hq) of each raw text, normalized as in training."""
        return hq_probabilities(self.model, [normalize_text(text, self.config.max_chars) for text in texts])

    def _decide(self, document: Document, score: float) -> str | None:
        document.meta["quality_score"] = round(score, 4)
        self.histogram[min(int(score * HISTOGRAM_BUCKETS), HISTOGRAM_BUCKETS - 1)] += 1
        if self.config.mode == "pareto":
            if pareto_draw(document.id, self.config.seed, self.config.alpha) > 1 - score:
                return None
            return "pareto_rejected"
        return None if score >= self.config.threshold else "low_quality_score"

    def reason(self, document: Document) -> str | None:
        (score,) = self.scores([document.text])
        return self._decide(document, score)

    def run(self, documents: Iterable[Document]) -> Iterator[Document]:
        for batch in batched(documents, self.batch_size):
            yield from self._run_batch(batch)

    def _run_batch(self, batch: list[Document]) -> Iterator[Document]:
        for document, score in zip(batch, self.scores([document.text for document in batch])):
            self.stats.read += 1
            why = self._decide(document, score)
            if why is None:
                self.stats.kept += 1
                yield document
            else:
                self.remove(document, why)

    def details(self) -> dict[str, Any]:
        edges = [round(i / HISTOGRAM_BUCKETS, 2) for i in range(HISTOGRAM_BUCKETS + 1)]
        return {
            "mode": self.config.mode,
            "threshold": self.config.threshold if self.config.mode == "threshold" else None,
            "alpha": self.config.alpha if self.config.mode == "pareto" else None,
            "score_histogram": {f"{lo:.1f}-{hi:.1f}": n for lo, hi, n in zip(edges, edges[1:], self.histogram)},
        }
