"""POPE (object hallucination) metrics, as POPE's evaluate.py and LLaVA's eval_pope.py compute them.

Each answer is reduced to yes/no by the official parser, then accuracy, precision, recall and F1
of the "yes" class and the share of "yes" predictions are computed separately for each split
(random / popular / adversarial). All values are percentages in [0, 100] (the official scripts
print fractions; multiply back by 0.01 to compare with their output).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, TypedDict

PopeAnswer = Literal["yes", "no"]
POPE_SPLITS: tuple[str, ...] = ("random", "popular", "adversarial")


class PopeRecord(TypedDict):
    """One POPE question: the model's answer, the gold label and the split it belongs to."""

    prediction: str
    label: str
    """Gold answer, "yes" or "no" (the `label` field of coco_pope_<split>.json)."""
    split: str
    """Split name: random, popular or adversarial (LLaVA calls it `category`)."""


@dataclass(frozen=True)
class PopeMetrics:
    """POPE metrics of one split; rates are percentages in [0, 100]."""

    accuracy: float
    precision: float
    recall: float
    f1: float
    yes_ratio: float
    """Share of predictions parsed as "yes"."""
    true_positives: int
    false_positives: int
    true_negatives: int
    false_negatives: int


def parse_pope_answer(text: str) -> PopeAnswer:
    """Reduce a free-form answer to "yes" or "no" exactly as the official parser does.

    Only the text before the first ``.`` is kept, commas are removed, the rest is split on single
    spaces; the answer is "no" when one of the words is exactly ``No``, ``not`` or ``no``, and "yes"
    otherwise. The test is case sensitive, so ``"Not sure."`` and ``"NO"`` count as "yes", while
    ``"not sure"`` and ``"No, there is not."`` count as "no".
    """
    # AoiDragon/POPE evaluate.py and haotian-liu/LLaVA llava/eval/eval_pope.py (identical rule).
    if "." in text:
        text = text.split(".")[0]
    words = text.replace(",", "").split(" ")
    if "No" in words or "not" in words or "no" in words:
        return "no"
    return "yes"


def _ratio(numerator: int, denominator: int) -> float:
    # The official script divides unguarded (ZeroDivisionError when nothing is predicted "yes");
    # here an undefined ratio is 0, as sklearn's zero_division=0.
    return 100.0 * numerator / denominator if denominator else 0.0


def _check_label(label: str, index: int) -> bool:
    if label not in ("yes", "no"):
        raise ValueError(f"POPE record {index}: label must be 'yes' or 'no', got {label!r}")
    return label == "yes"


def pope_metrics(predictions: Sequence[str], labels: Sequence[str]) -> PopeMetrics:
    """Compute POPE metrics for one split from raw answers and their "yes"/"no" labels.

    Predictions are parsed with :func:`parse_pope_answer`; "yes" is the positive class.
    """
    if len(predictions) != len(labels):
        raise ValueError(f"{len(predictions)} predictions but {len(labels)} labels; they must pair up")
    if not predictions:
        raise ValueError("no POPE predictions to score")
    tp = fp = tn = fn = 0
    # AoiDragon/POPE evaluate.py: confusion matrix with "yes" = 1 as the positive class.
    for index, (prediction, label) in enumerate(zip(predictions, labels, strict=True)):
        predicted_yes = parse_pope_answer(prediction) == "yes"
        label_yes = _check_label(label, index)
        tp += int(predicted_yes and label_yes)
        fp += int(predicted_yes and not label_yes)
        tn += int(not predicted_yes and not label_yes)
        fn += int(not predicted_yes and label_yes)
    precision = _ratio(tp, tp + fp)
    recall = _ratio(tp, tp + fn)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return PopeMetrics(
        accuracy=_ratio(tp + tn, len(predictions)),
        precision=precision,
        recall=recall,
        f1=f1,
        yes_ratio=_ratio(tp + fp, len(predictions)),
        true_positives=tp,
        false_positives=fp,
        true_negatives=tn,
        false_negatives=fn,
    )


def pope_score(records: Iterable[PopeRecord]) -> dict[str, PopeMetrics]:
    """Compute POPE metrics per split, keyed by split name.

    Splits come out in the order random, popular, adversarial, then any other split name in
    order of first appearance. Each split is scored on its own, as LLaVA's eval_pope.py does.
    """
    predictions: dict[str, list[str]] = {}
    labels: dict[str, list[str]] = {}
    for record in records:
        split = record["split"]
        predictions.setdefault(split, []).append(record["prediction"])
        labels.setdefault(split, []).append(record["label"])
    if not predictions:
        raise ValueError("no POPE records to score")
    order = [s for s in POPE_SPLITS if s in predictions] + [s for s in predictions if s not in POPE_SPLITS]
    return {split: pope_metrics(predictions[split], labels[split]) for split in order}
