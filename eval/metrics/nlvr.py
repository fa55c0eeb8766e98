"""NLVR (v1) scoring: the reply parser, the released metrics (accuracy over images, consistency
over sentences, as the official ``nlvr/metrics_images.py`` computes them) and the majority-class baseline."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from eval.nlvr import NLVRExample

# A reply that echoes the question ("true or false") must not count as an answer.
_ECHO_RE = re.compile(r"\b(?:true\s+or\s+false|false\s+or\s+true)\b", re.IGNORECASE)
_TRUE_FALSE_RE = re.compile(r"(\bnot\s+|n['’]t\s+)?\b(true|false|untrue)\b", re.IGNORECASE)
_YES_NO_RE = re.compile(r"\b(yes|no)\b", re.IGNORECASE)


def parse_nlvr_answer(reply: str) -> bool | None:
    """Map a model's reply to True, False or None (unparseable).

    The first "true"/"false" word decides ("untrue" is false; "not true" and "isn't true" are
    negated). Only when neither appears, the first "yes"/"no" word decides, so "There is no
    black square, so it is true" is True. An echoed "true or false" is ignored. None when no
    such word is found.
    """
    text = _ECHO_RE.sub(" ", reply)
    match = _TRUE_FALSE_RE.search(text)
    if match:
        value = match.group(2).lower() == "true"
        return not value if match.group(1) else value
    match = _YES_NO_RE.search(text)
    if match:
        return match.group(1).lower() == "yes"
    return None


def parse_nlvr_official(reply: str) -> bool | None:
    """The reply as `nlvr/metrics_images.py` reads a prediction: the label token itself, any case.

    Only "true" / "false" count (trailing whitespace aside, which the script's line strip removes);
    " false", "false.", '"true"' and "no" are wrong answers there, so None here. Our lenient
    reading of free text is :func:`parse_nlvr_answer`, reported as a separate figure.
    """
    token = reply.rstrip().lower()
    return token == "true" if token in ("true", "false") else None


@dataclass(frozen=True)
class NLVRScore:
    """The released NLVR metrics. Percentages are in 0..100."""

    accuracy: float
    """Percent of images (PNGs) predicted correctly; the official script calls it precision."""
    consistency: float
    """Percent of sentences whose every image, over all its scenes, is predicted correctly."""
    unparseable: float
    """Percent of images whose reply could not be parsed (they count as wrong)."""
    num_images: int
    num_correct: int
    num_sentences: int
    num_consistent: int
    num_unparseable: int


def score_nlvr(
    predictions: Iterable[tuple[NLVRExample, bool | None]],
    *,
    examples: Sequence[NLVRExample] | None = None,
) -> NLVRScore:
    """Score (example, predicted label) pairs as the official `nlvr/metrics_images.py` does.

    Accuracy is over images; consistency groups images by sentence (the identifier's prefix
    n, across all of its scenes and renderings) and counts a sentence only when all of them are
    correct. A None prediction (unparseable reply, see `parse_nlvr_answer`) counts as wrong.

    Args:
        predictions: one pair per image; the official numbers need every image of the split.
        examples: the whole split, if given; like the official script, a missing prediction is
            then an error instead of a silently smaller denominator.

    Raises:
        ValueError: no predictions, an image predicted twice, or (with `examples`) missing
            predictions or predictions for images outside `examples`.
    """
    pairs = list(predictions)
    if not pairs:
        raise ValueError("score_nlvr got no predictions.")
    counts = Counter(example.image_id for example, _ in pairs)
    duplicates = sorted(image_id for image_id, n in counts.items() if n > 1)
    if duplicates:
        raise ValueError(
            f"{len(duplicates)} images are predicted more than once, e.g. {duplicates[:5]}; "
            "give exactly one prediction per image."
        )
    if examples is not None:
        expected = {example.image_id for example in examples}
        missing = sorted(expected - counts.keys())
        extra = sorted(counts.keys() - expected)
        if missing or extra:
            raise ValueError(
                f"predictions do not cover the split: {len(missing)} of {len(expected)} images "
                f"missing (e.g. {missing[:5]}), {len(extra)} not in the split (e.g. {extra[:5]})."
            )

    num_correct = 0
    num_unparseable = 0
    sentence_consistent: dict[tuple[str, str], bool] = {}
    for example, predicted in pairs:
        key = (example.split, example.sentence_id)
        correct = predicted is not None and predicted == example.label
        num_correct += correct
        num_unparseable += predicted is None
        sentence_consistent[key] = sentence_consistent.get(key, True) and correct
    num_images = len(pairs)
    num_consistent = sum(sentence_consistent.values())
    return NLVRScore(
        accuracy=100.0 * num_correct / num_images,
        consistency=100.0 * num_consistent / len(sentence_consistent),
        unparseable=100.0 * num_unparseable / num_images,
        num_images=num_images,
        num_correct=num_correct,
        num_sentences=len(sentence_consistent),
        num_consistent=num_consistent,
        num_unparseable=num_unparseable,
    )


def majority_class_baseline(examples: Sequence[NLVRExample]) -> tuple[bool, float]:
    """The majority label of a split and its share in percent (the accuracy of always
    answering it). Ties go to True. For its consistency, score the constant prediction:
    `score_nlvr([(e, label) for e in examples])`."""
    if not examples:
        raise ValueError("majority_class_baseline got no examples.")
    num_true = sum(example.label for example in examples)
    majority = num_true * 2 >= len(examples)
    num_majority = num_true if majority else len(examples) - num_true
    return majority, 100.0 * num_majority / len(examples)
