"""Scores for fine-tuning: classification reports, and first-look scores for generated text.

Classification follows scikit-learn's conventions, so numbers can be compared with papers and
notebooks: per class, precision = TP / (TP + FP), recall = TP / (TP + FN) and
F1 = 2·TP / (2·TP + FP + FN), each 0 when its denominator is 0 (sklearn's zero_division=0: a class
never predicted has precision 0). Macro averages are the plain means of the per-class values
(macro F1 is the mean of the F1s, not the F1 of the macro precision and recall) over the classes
that occur in the true or the predicted labels, as sklearn does when it is not given the labels; a
class absent from both says nothing about the model and does not pull the average down.

Generated text gets two quick scores, meant as a first look beside reading the outputs:
exact match after stripping and case-folding, and ROUGE-L (Lin 2004) over lower-cased whitespace
tokens.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from scratchlm.errors import UserError


def confusion_matrix(true: Sequence[int], predicted: Sequence[int], num_classes: int) -> list[list[int]]:
    """counts[t][p]: how many examples of true class t were predicted as p (rows are true)."""
    _check_labels(true, predicted, num_classes)
    matrix = [[0] * num_classes for _ in range(num_classes)]
    for t, p in zip(true, predicted):
        matrix[t][p] += 1
    return matrix


def classification_report(true: Sequence[int], predicted: Sequence[int], num_classes: int) -> dict[str, Any]:
    """Accuracy, macro precision/recall/F1, per-class scores and support, and the confusion matrix.

    Returns {"count", "accuracy", "macro_precision", "macro_recall", "macro_f1",
    "per_class": [{"precision", "recall", "f1", "support"} for each class id], "confusion"};
    see the module docstring for the conventions.
    """
    matrix = confusion_matrix(true, predicted, num_classes)
    per_class = [_class_scores(matrix, k) for k in range(num_classes)]
    occurring = [k for k in range(num_classes) if per_class[k]["support"] or _column_sum(matrix, k)]
    correct = sum(matrix[k][k] for k in range(num_classes))
    return {
        "count": len(true),
        "accuracy": correct / len(true),
        **{f"macro_{name}": _mean([per_class[k][name] for k in occurring]) for name in ("precision", "recall", "f1")},
        "per_class": per_class,
        "confusion": matrix,
    }


def majority_label(train_labels: Sequence[int]) -> int:
    """The most common training label; a tie goes to the smallest id, so it does not depend on order."""
    if not train_labels:
        raise UserError("There are no training labels to find the most common one in; check the training data.")
    counts = Counter(train_labels)
    return min(counts, key=lambda label: (-counts[label], label))


def majority_baseline(train_labels: Sequence[int], eval_labels: Sequence[int]) -> float:
    """The accuracy on `eval_labels` of always predicting the training split's most common label:
    what a model must beat to have learned more than the class balance."""
    if not eval_labels:
        raise UserError("There are no examples to score; check the evaluation data.")
    label = majority_label(train_labels)
    return sum(1 for t in eval_labels if t == label) / len(eval_labels)


def render_confusion(matrix: Sequence[Sequence[int]], names: Sequence[str]) -> str:
    """The confusion matrix as a text table: a row per true label, a column per predicted label."""
    if len(matrix) != len(names) or any(len(row) != len(names) for row in matrix):
        raise ValueError(f"a {len(names)}-class confusion matrix needs {len(names)} rows of {len(names)} counts")
    corner = "true \\ predicted"
    first = max(len(corner), *(len(name) for name in names))
    widths = [max(len(name), *(len(f"{row[k]:,}") for row in matrix)) for k, name in enumerate(names)]
    lines = ["  ".join([corner.ljust(first), *(name.rjust(w) for name, w in zip(names, widths))]).rstrip()]
    for name, row in zip(names, matrix):
        lines.append("  ".join([name.ljust(first), *(f"{count:,}".rjust(w) for count, w in zip(row, widths))]))
    return "\n".join(lines)


def _check_labels(true: Sequence[int], predicted: Sequence[int], num_classes: int) -> None:
    if len(true) != len(predicted):
        raise ValueError(f"{len(true)} true labels but {len(predicted)} predictions")
    if not true:
        raise UserError("There are no examples to score; check the evaluation data.")
    if num_classes < 1:
        raise ValueError(f"num_classes must be at least 1, not {num_classes}")
    outside = [label for label in (*true, *predicted) if not 0 <= label < num_classes]
    if outside:
        raise ValueError(f"label {outside[0]} is outside 0..{num_classes - 1}")


def _class_scores(matrix: list[list[int]], k: int) -> dict[str, float | int]:
    tp = matrix[k][k]
    support = sum(matrix[k])
    predicted = _column_sum(matrix, k)
    fp, fn = predicted - tp, support - tp
    return {
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "support": support,
    }


def _column_sum(matrix: list[list[int]], k: int) -> int:
    return sum(row[k] for row in matrix)


def _ratio(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else 0.0


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


# ---- generated text ---------------------------------------------------------------------------


def exact_match(prediction: str, reference: str) -> float:
    """1.0 if the texts are equal after stripping surrounding whitespace and case-folding, else 0.0."""
    return float(prediction.strip().casefold() == reference.strip().casefold())


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure (Lin 2004, β = 1) over lower-cased whitespace-separated tokens.

    With L the length of the longest common subsequence, P = L / len(prediction) and
    R = L / len(reference), the score is 2PR / (P + R); 0.0 when either text has no tokens.
    (The rouge-score package also drops punctuation and can stem; this keeps tokens as written.)
    """
    predicted, wanted = prediction.lower().split(), reference.lower().split()
    common = _lcs_length(predicted, wanted)
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(wanted)
    return 2 * precision * recall / (precision + recall)


def _lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence, by dynamic programming in O(len(a)·len(b)) time
    and O(len(b)) memory."""
    previous = [0] * (len(b) + 1)
    for token in a:
        current = [0]
        for j, other in enumerate(b):
            current.append(previous[j] + 1 if token == other else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def generation_scores(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Mean exact match and ROUGE-L over pairs, and their count."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    if not predictions:
        raise UserError("There are no generated responses to score; check the evaluation data.")
    n = len(predictions)
    return {
        "count": n,
        "exact_match": sum(map(exact_match, predictions, references)) / n,
        "rouge_l": sum(map(rouge_l, predictions, references)) / n,
    }
