"""The shapes benchmark's scorer: exact match after a light normalisation, overall and per task."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from eval.shapes.vocabulary import NUMBER_WORDS, TASKS

_ARTICLES = {"a", "an", "the"}
_QUANTIFIERS = {"only", "just", "exactly"}
_DIGITS = {word: str(i) for i, word in enumerate(NUMBER_WORDS)}
_SPELLINGS = {"centre": "center", "middle": "center", "colour": "color", "grey": "gray"}
_TRAILING_PUNCTUATION = ".!?,;:"
_QUOTES = "\"'`"


def normalize_shapes_answer(text: str) -> str:
    """Lightly normalise a short answer so that equivalent spellings compare equal.

    Lowercase; drop surrounding quotes and trailing punctuation; hyphens become spaces
    ("top-left" == "top left"); collapse whitespace; drop a leading article ("The red one");
    drop "only/just/exactly" before a number; a trailing "one" after another word is the pronoun
    and is dropped ("the red one" -> "red"); number words zero-ten become digits ("Three." -> "3");
    British spellings become the dataset's ("centre" -> "center"). Nothing else is forgiven:
    "yes, there is" stays different from "yes".
    """
    if not isinstance(text, str):
        raise TypeError(f"normalize_shapes_answer expects a str, got {type(text).__name__} {text!r}")
    s = text.lower().strip().strip(_QUOTES).strip()
    s = s.rstrip(_TRAILING_PUNCTUATION + _QUOTES + " ").replace("-", " ")
    tokens = s.split()
    if len(tokens) > 1 and tokens[0] in _ARTICLES:
        tokens = tokens[1:]
    if len(tokens) > 1 and tokens[0] in _QUANTIFIERS and (tokens[1] in _DIGITS or tokens[1].isdigit()):
        tokens = tokens[1:]
    if len(tokens) > 1 and tokens[-1] == "one":
        tokens = tokens[:-1]
    tokens = [_SPELLINGS.get(t, _DIGITS.get(t, t)) for t in tokens]
    return " ".join(tokens)


def score_shapes(predictions: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Exact-match accuracy (x100) after `normalize_shapes_answer`, overall and per task.

    Args:
        predictions: records with "prediction" (the model's text), "answer" (the reference) and
            "task"; an eval.json record plus a "prediction" field is exactly this.

    Returns:
        {"accuracy": float, "correct": int, "total": int,
         "per_task": {task: {"accuracy": float, "correct": int, "total": int}}},
        per_task in TASKS order, then any other task names sorted.
    """
    per_task: dict[str, list[int]] = {}  # task -> [correct, total]
    for i, record in enumerate(predictions):
        missing = [key for key in ("prediction", "answer", "task") if key not in record]
        if missing:
            raise ValueError(f"prediction {i} (id {record.get('id', '?')!r}) lacks keys {missing}")
        hit = normalize_shapes_answer(str(record["prediction"])) == normalize_shapes_answer(str(record["answer"]))
        tally = per_task.setdefault(str(record["task"]), [0, 0])
        tally[0] += hit
        tally[1] += 1
    if not per_task:
        raise ValueError("score_shapes got no predictions")
    order = [t for t in TASKS if t in per_task] + sorted(t for t in per_task if t not in TASKS)
    correct = sum(c for c, _ in per_task.values())
    total = sum(t for _, t in per_task.values())
    return {
        "accuracy": 100.0 * correct / total,
        "correct": correct,
        "total": total,
        "per_task": {
            t: {"accuracy": 100.0 * per_task[t][0] / per_task[t][1], "correct": per_task[t][0],
                "total": per_task[t][1]}
            for t in order
        },
    }
