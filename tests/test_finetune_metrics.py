"""Fine-tuning metrics: hand-computed cases always, scikit-learn and rouge-score where installed."""

from __future__ import annotations

import random

import pytest

from scratchlm.errors import UserError
from scratchlm.finetune.metrics import (
    classification_report,
    confusion_matrix,
    exact_match,
    generation_scores,
    majority_baseline,
    majority_label,
    render_confusion,
    rouge_l,
)

TRUE = [0, 0, 0, 1, 1, 2]
PREDICTED = [0, 0, 1, 1, 2, 2]


def test_a_hand_computed_report() -> None:
    report = classification_report(TRUE, PREDICTED, 3)
    assert report["confusion"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]  # rows are true labels
    # class 0: TP 2 FP 0 FN 1; class 1: TP 1 FP 1 FN 1; class 2: TP 1 FP 1 FN 0
    want = [(1.0, 2 / 3, 0.8, 3), (0.5, 0.5, 0.5, 2), (0.5, 1.0, 2 / 3, 1)]
    for scores, (p, r, f1, support) in zip(report["per_class"], want):
        assert scores["precision"] == pytest.approx(p) and scores["recall"] == pytest.approx(r)
        assert scores["f1"] == pytest.approx(f1) and scores["support"] == support
    assert report["count"] == 6 and report["accuracy"] == pytest.approx(4 / 6)
    assert report["macro_precision"] == pytest.approx(2 / 3)
    assert report["macro_recall"] == pytest.approx(13 / 18)
    assert report["macro_f1"] == pytest.approx(59 / 90)  # the mean of the F1s, not the F1 of the means


def test_a_class_never_predicted_has_precision_zero_and_an_absent_class_is_left_out() -> None:
    report = classification_report([0, 0, 1, 1], [0, 0, 0, 0], 4)
    assert report["per_class"][1] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 2}
    assert report["per_class"][0]["precision"] == 0.5 and report["per_class"][0]["recall"] == 1.0
    assert report["per_class"][3] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    # classes 2 and 3 occur nowhere, so the macro averages are over classes 0 and 1
    assert report["macro_precision"] == pytest.approx(0.25) and report["macro_recall"] == pytest.approx(0.5)
    assert report["macro_f1"] == pytest.approx((2 / 3) / 2)


def test_bad_label_lists_are_refused() -> None:
    with pytest.raises(ValueError, match="3 true labels but 2 predictions"):
        classification_report([0, 1, 1], [0, 1], 2)
    with pytest.raises(ValueError, match="label 2 is outside 0..1"):
        confusion_matrix([0, 1], [0, 2], 2)
    with pytest.raises(UserError, match="There are no examples to score"):
        classification_report([], [], 2)


def test_majority_baseline_predicts_the_most_common_training_label() -> None:
    assert majority_label([2, 1, 2, 0, 1, 2]) == 2
    assert majority_label([1, 0, 1, 0]) == 0  # a tie goes to the smallest id
    assert majority_baseline([2, 1, 2, 0], [2, 2, 1, 0, 2]) == pytest.approx(3 / 5)
    with pytest.raises(UserError, match="There are no training labels"):
        majority_baseline([], [1])
    with pytest.raises(UserError, match="There are no examples to score"):
        majority_baseline([1], [])


def test_render_confusion_is_an_aligned_table() -> None:
    table = render_confusion([[1200, 3], [45, 7]], ["negative", "pos"])
    assert table == (
        "true \\ predicted  negative  pos\n"
        "negative             1,200    3\n"
        "pos                     45    7"
    )
    with pytest.raises(ValueError, match="needs 2 rows of 2 counts"):
        render_confusion([[1, 2]], ["a", "b"])


def test_against_scikit_learn() -> None:
    metrics = pytest.importorskip("sklearn.metrics", reason="scikit-learn is not installed; the hand-computed cases still run")
    rng = random.Random(0)
    for trial in range(30):
        k = rng.randint(2, 6)
        n = rng.randint(1, 40)
        true = [rng.randrange(k) for _ in range(n)]
        predicted = [rng.randrange(k - trial % 2) for _ in range(n)]  # odd trials never predict the last class
        report = classification_report(true, predicted, k)
        p, r, f1, _ = metrics.precision_recall_fscore_support(true, predicted, average="macro", zero_division=0)
        assert (report["macro_precision"], report["macro_recall"], report["macro_f1"]) == pytest.approx((p, r, f1))
        p, r, f1, support = metrics.precision_recall_fscore_support(true, predicted, labels=list(range(k)), average=None, zero_division=0)
        assert [c["precision"] for c in report["per_class"]] == pytest.approx(list(p))
        assert [c["recall"] for c in report["per_class"]] == pytest.approx(list(r))
        assert [c["f1"] for c in report["per_class"]] == pytest.approx(list(f1))
        assert [c["support"] for c in report["per_class"]] == list(support)
        assert report["accuracy"] == pytest.approx(metrics.accuracy_score(true, predicted))
        assert report["confusion"] == metrics.confusion_matrix(true, predicted, labels=list(range(k))).tolist()


# ---- generated text -------------------------------------------------------------------------


def test_exact_match_strips_and_case_folds() -> None:
    assert exact_match("  Paris\n", "paris") == 1.0
    assert exact_match("STRASSE", "straße") == 1.0  # case-folding, not just lower-casing
    assert exact_match("Paris.", "Paris") == 0.0
    assert exact_match("new  york", "new york") == 0.0  # inner whitespace is kept


@pytest.mark.parametrize(
    "prediction, reference, score",
    [
        ("police kill the gunman", "police killed the gunman", 3 / 4),  # Lin 2004's example: LCS "police the gunman"
        ("the gunman kill police", "police killed the gunman", 2 / 4),  # LCS "the gunman"
        ("the cat", "the cat sat down", 2 / 3),  # P = 1, R = 1/2
        ("The Cat on the mat sat", "the cat sat on the mat", 5 / 6),  # lower-cased; LCS "the cat on the mat"
        ("a b c", "a b c", 1.0),
        ("x y", "a b", 0.0),
        ("", "a b", 0.0),
        ("a b", "   ", 0.0),
    ],
)
def test_rouge_l_hand_computed(prediction: str, reference: str, score: float) -> None:
    assert rouge_l(prediction, reference) == pytest.approx(score)


def test_rouge_l_against_rouge_score() -> None:
    rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer", reason="rouge-score is not installed; the hand-computed cases still run")
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    rng = random.Random(1)
    words = ["the", "a", "cat", "dog", "sat", "on", "mat", "ran", "fast", "42"]
    for _ in range(50):  # lower-case alphanumeric words, where both tokenize the same way
        prediction = " ".join(rng.choice(words) for _ in range(rng.randint(1, 12)))
        reference = " ".join(rng.choice(words) for _ in range(rng.randint(1, 12)))
        assert rouge_l(prediction, reference) == pytest.approx(scorer.score(reference, prediction)["rougeL"].fmeasure)


def test_generation_scores_average_the_pairs() -> None:
    scores = generation_scores(["Paris", "the cat"], ["paris", "the cat sat down"])
    assert scores == pytest.approx({"count": 2, "exact_match": 0.5, "rouge_l": (1 + 2 / 3) / 2})
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        generation_scores(["a", "b"], ["a"])
    with pytest.raises(UserError, match="There are no generated responses to score"):
        generation_scores([], [])
