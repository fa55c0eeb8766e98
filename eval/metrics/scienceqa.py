"""ScienceQA(-IMG): LLaVA-1.5's multiple-choice prompt and its answer extraction and accuracy.

The prompt is the ``llava_test_CQM-A.json`` format that LLaVA-1.5 evaluates with
(``scripts/v1_5/eval/sqa.sh``: ``model_vqa_science --single-pred-prompt``)::

    <image>
    Context: <hint>
    <question>
    A. <choice 0>
    B. <choice 1>
    Answer with the option's letter from the given choices directly.

(no ``<image>`` line for text-only questions, no ``Context:`` line when the hint is empty).

Answers are extracted as LLaVA's ``llava/eval/eval_science_qa.py`` does. One deliberate
difference: where the official script replaces an unparsable answer by a *random* option
(``get_pred_idx`` -> ``random.choice``), this module scores it wrong and counts it as failed, so
results are deterministic (and slightly lower than a lucky official run).
Accuracies are percentages in [0, 100].
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TypedDict

from eval.metrics.records import each_question_once

# llava/eval/eval_science_qa.py `--options` default: ScienceQA has at most 5 choices.
OPTION_LETTERS: tuple[str, ...] = ("A", "B", "C", "D", "E")
# llava/eval/model_vqa_science.py `--single-pred-prompt` suffix.
SINGLE_PRED_PROMPT = "Answer with the option's letter from the given choices directly."
# llava/eval/eval_science_qa.py: the "." is a regex wildcard, so some character must follow the
# letter ("The answer is A" at the very end does not match; "The answer is B," does).
_ANSWER_IS = re.compile(r"The answer is ([A-Z]).")


class ScienceQARecord(TypedDict):
    """One ScienceQA problem with the model's answer (fields as in problems.json)."""

    question_id: str
    prediction: str
    choices: Sequence[str]
    answer: int
    """Index of the correct choice (problems.json `answer`)."""
    has_image: bool
    """Whether the problem has an image (counted in the IMG accuracy)."""


@dataclass(frozen=True)
class ScienceQAScore:
    """ScienceQA accuracy overall and on the questions that have an image."""

    accuracy: float
    """Percentage of all questions answered right, in [0, 100]."""
    image_accuracy: float
    """Percentage of questions with an image answered right (ScienceQA-IMG); 0 when there is none."""
    num_questions: int
    num_image_questions: int
    num_correct: int
    num_failed: int
    """Answers from which no valid option letter could be extracted (scored wrong)."""


def build_scienceqa_prompt(
    question: str,
    choices: Sequence[str],
    hint: str = "",
    has_image: bool = False,
    image_token: str = "<image>",
    single_pred_prompt: bool = True,
) -> str:
    """Build LLaVA-1.5's ScienceQA prompt: image token, context, question, lettered options.

    Args:
        question: the problem's question.
        choices: the answer choices, in order (2 to 5).
        hint: the problem's context (``hint`` in problems.json); omitted when empty.
        has_image: put ``image_token`` on the first line.
        image_token: the placeholder the processor expands into image tokens.
        single_pred_prompt: append LLaVA's "Answer with the option's letter ..." instruction.
    """
    if not 2 <= len(choices) <= len(OPTION_LETTERS):
        raise ValueError(f"ScienceQA questions have 2 to {len(OPTION_LETTERS)} choices, got {len(choices)}")
    # llava_test_CQM-A.json human turn: "Context: {hint}\n{question}\nA. {choice}\nB. ..."
    lines = [f"Context: {hint}"] if hint else []
    lines.append(question)
    lines.extend(f"{letter}. {choice}" for letter, choice in zip(OPTION_LETTERS, choices, strict=False))
    text = "\n".join(lines).strip()
    # llava/eval/model_vqa_science.py: image token in front, instruction appended.
    if has_image:
        text = f"{image_token}\n{text}"
    if single_pred_prompt:
        text = f"{text}\n{SINGLE_PRED_PROMPT}"
    return text


def parse_scienceqa_answer(prediction: str, num_choices: int) -> str | None:
    """Extract the option letter from an answer, or None when extraction fails.

    In order (llava/eval/eval_science_qa.py): the whole answer is a letter A-E; or it starts with
    a letter and ``". "`` (``"B. glass"``); or ``The answer is X.`` occurs exactly once. The letter
    must also name one of the ``num_choices`` options (the official script guesses at random
    otherwise). Matching is exact: ``" A"``, ``"a"`` and ``"A)"`` fail.
    """
    # llava/eval/eval_science_qa.py main loop.
    if prediction in OPTION_LETTERS:
        letter = prediction
    elif len(prediction) >= 3 and prediction[0] in OPTION_LETTERS and prediction[1:3] == ". ":
        letter = prediction[0]
    else:
        matches = _ANSWER_IS.findall(prediction)
        if len(matches) != 1:
            return None
        letter = matches[0]
    # llava/eval/eval_science_qa.py get_pred_idx: only options[:len(choices)] are valid.
    return letter if letter in OPTION_LETTERS[:num_choices] else None


def scienceqa_score(records: Iterable[ScienceQARecord]) -> ScienceQAScore:
    """Score ScienceQA answers: accuracy overall and on image questions (IMG), as percentages."""
    num_questions = num_correct = num_failed = num_image = num_image_correct = 0
    for record in each_question_once(records, "ScienceQA"):
        question_id = record["question_id"]
        num_choices = len(record["choices"])
        if num_choices > len(OPTION_LETTERS):
            raise ValueError(
                f"ScienceQA question {question_id!r}: {num_choices} choices, at most "
                f"{len(OPTION_LETTERS)} ({'/'.join(OPTION_LETTERS)}) are supported"
            )
        if not 0 <= record["answer"] < num_choices:
            raise ValueError(
                f"ScienceQA question {question_id!r}: answer index {record['answer']} "
                f"outside its {num_choices} choices"
            )
        letter = parse_scienceqa_answer(record["prediction"], num_choices)
        correct = letter == OPTION_LETTERS[record["answer"]]
        num_questions += 1
        num_correct += int(correct)
        num_failed += int(letter is None)
        if record["has_image"]:
            num_image += 1
            num_image_correct += int(correct)
    if not num_questions:
        raise ValueError("no ScienceQA records to score")
    return ScienceQAScore(
        accuracy=100.0 * num_correct / num_questions,
        image_accuracy=100.0 * num_image_correct / num_image if num_image else 0.0,
        num_questions=num_questions,
        num_image_questions=num_image,
        num_correct=num_correct,
        num_failed=num_failed,
    )
