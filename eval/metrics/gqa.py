"""GQA accuracy as LLaVA evaluates testdev-balanced: its answer cleanup, then the official exact match.

LLaVA's ``scripts/convert_gqa_for_eval.py`` turns each answer into ``text.rstrip('.').lower()``
(every trailing period goes, nothing else: no whitespace strip, no article or punctuation
rule), and GQA's official ``eval.py`` counts a question right when that string equals the gold
answer exactly, over the questions marked ``isBalanced``. Accuracy is a percentage in [0, 100].
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TypedDict

from typing_extensions import NotRequired  # typing.NotRequired needs Python 3.11

from eval.metrics.records import each_question_once


class GQARecord(TypedDict):
    """One GQA question with the model's answer."""

    question_id: str
    prediction: str
    answer: str
    """Gold answer as released (lowercase words, e.g. "no", "traffic light")."""
    is_balanced: NotRequired[bool]
    """GQA's `isBalanced`; unbalanced questions are left out of the accuracy (default True)."""


@dataclass(frozen=True)
class GQAScore:
    """GQA accuracy over the balanced questions."""

    accuracy: float
    num_questions: int
    num_correct: int


def normalize_gqa_prediction(text: str) -> str:
    """Clean an answer as LLaVA's convert_gqa_for_eval.py does: drop trailing periods, lowercase."""
    # haotian-liu/LLaVA scripts/convert_gqa_for_eval.py: res['text'].rstrip('.').lower()
    return text.rstrip(".").lower()


def gqa_score(records: Iterable[GQARecord]) -> GQAScore:
    """Score GQA answers by exact match after :func:`normalize_gqa_prediction`."""
    num_questions = num_correct = 0
    for record in each_question_once(records, "GQA"):
        # GQA eval.py: only balanced questions enter "accuracy".
        if not record.get("is_balanced", True):
            continue
        num_questions += 1
        # GQA eval.py: correct = (predicted == gold)
        num_correct += int(normalize_gqa_prediction(record["prediction"]) == record["answer"])
    if not num_questions:
        raise ValueError("no balanced GQA records to score")
    return GQAScore(
        accuracy=100.0 * num_correct / num_questions,
        num_questions=num_questions,
        num_correct=num_correct,
    )
