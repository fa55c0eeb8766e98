"""MMBench circular evaluation with exact matching (no LLM judge), as VLMEvalKit does it.

Circular evaluation asks every question once per rotation of its options (a question with n
options is asked n times, the correct option shown under a different letter each time) and
counts the question right only if every rotation is answered right. Rotations follow LLaVA's
``llava/eval/model_vqa_mmbench.py --all-rounds`` (options shifted left by one per round); the
scoring follows VLMEvalKit's ``mcq_circular_eval`` with ``model=None`` (the ``exact_matching``
policy): an option is extracted from each answer with ``can_infer``; an answer from which no
option can be extracted makes the question wrong. Accuracies are percentages in [0, 100].
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypedDict

from typing_extensions import NotRequired  # typing.NotRequired needs Python 3.11

# llava/eval/model_vqa_mmbench.py `all_options`.
OPTION_LETTERS: tuple[str, ...] = ("A", "B", "C", "D")
# llava/eval/model_vqa_mmbench.py `--single-pred-prompt` suffix (English).
SINGLE_PRED_PROMPT = "Answer with the option's letter from the given choices directly."
# VLMEvalKit vlmeval/utils/matching_util.py can_infer_option: characters turned into spaces.
_OPTION_PUNCTUATION = ".()[],:;!*#{}"
# VLMEvalKit vlmeval/utils/matching_util.py can_infer_option `reject_to_answer`: answered as "Z".
_REFUSALS: tuple[str, ...] = (
    "Sorry, I can't help with images of people yet.",
    "I can't process this file.",
    "I'm sorry, but without the image provided",
    "Cannot determine the answer",
)
_API_FAILURE = "Failed to obtain answer via API"


class MMBenchRecord(TypedDict):
    """The model's answer to one rotation of one MMBench question."""

    question_id: int | str
    """The original question's index, shared by all its rotations."""
    prediction: str
    options: Sequence[str]
    """Option texts in the order shown to the model (under A, B, ...)."""
    answer: str
    """Letter under which the correct option was shown in this rotation."""
    category: str
    l2_category: NotRequired[str]


@dataclass(frozen=True)
class MMBenchRotation:
    """One round of circular evaluation: the options as shown and where the answer is."""

    round_index: int
    options: tuple[str, ...]
    """Option texts shown under A, B, ... in this round."""
    answer: str
    """Letter under which the correct option is shown."""
    original_letters: tuple[str, ...]
    """original_letters[j] is the original letter of the option shown under letter j
    (LLaVA's ``option_char``)."""

    def to_original(self, letter: str) -> str:
        """Map a letter as shown in this round back to the question's original letter."""
        return self.original_letters[OPTION_LETTERS.index(letter)]


@dataclass(frozen=True)
class MMBenchScore:
    """MMBench circular accuracy, overall and per ability."""

    overall: float
    per_category: dict[str, float]
    per_l2_category: dict[str, float]
    num_questions: int


def is_missing_option(value: Any) -> bool:
    """Whether an option cell of the MMBench TSV is empty (None, NaN, "nan" or "none")."""
    # llava/eval/model_vqa_mmbench.py is_none.
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and value.lower() in ("nan", "none")


def present_options(row: Mapping[str, Any]) -> list[str]:
    """Read the options of an MMBench row: columns A, B, C, D up to the first missing one."""
    # llava/eval/model_vqa_mmbench.py get_options.
    options = []
    for letter in OPTION_LETTERS:
        value = row.get(letter)
        if is_missing_option(value):
            break
        options.append(str(value))
    return options


def _check_num_options(options: Sequence[str]) -> int:
    if not 2 <= len(options) <= len(OPTION_LETTERS):
        raise ValueError(f"MMBench questions have 2 to {len(OPTION_LETTERS)} options, got {len(options)}")
    return len(options)


def circular_rotations(options: Sequence[str], answer: str) -> list[MMBenchRotation]:
    """Produce the n rotations of a question's n options, with the answer letter of each.

    Round k shows ``options[k:] + options[:k]``: the option shown under letter j is the original
    option ``(j + k) % n``, and the original answer letter a is shown under ``(a - k) % n``.
    """
    num_options = _check_num_options(options)
    letters = OPTION_LETTERS[:num_options]
    if answer not in letters:
        raise ValueError(f"answer {answer!r} is not one of the question's options {letters}")
    answer_index = letters.index(answer)
    rotations = []
    # llava/eval/model_vqa_mmbench.py: `options = options[1:] + options[:1]` after each round.
    for round_index in range(num_options):
        shown = tuple(options[round_index:]) + tuple(options[:round_index])
        original_letters = letters[round_index:] + letters[:round_index]
        rotations.append(
            MMBenchRotation(
                round_index=round_index,
                options=shown,
                answer=letters[(answer_index - round_index) % num_options],
                original_letters=original_letters,
            )
        )
    return rotations


def format_mmbench_question(
    question: str,
    options: Sequence[str],
    hint: str | None = None,
    image_token: str = "<image>",
    single_pred_prompt: bool = True,
) -> str:
    """Build LLaVA's MMBench prompt: image token, hint, question, then ``A. ...`` lines."""
    # llava/eval/model_vqa_mmbench.py eval_model.
    _check_num_options(options)
    text = question if is_missing_option(hint) else f"{hint}\n{question}"
    for letter, option in zip(OPTION_LETTERS, options, strict=False):
        text = f"{text}\n{letter}. {option}"
    text = f"{image_token}\n{text}"
    if single_pred_prompt:
        text = f"{text}\n{SINGLE_PRED_PROMPT}"
    return text


def _infer_option_letter(prediction: str, letters: Sequence[str]) -> str | None:
    # VLMEvalKit matching_util.can_infer_option, with VERBOSE unset (its default): the "A might be
    # a quantifier" guard only runs when the VERBOSE environment variable is set.
    if _API_FAILURE in prediction:
        return None
    if any(refusal in prediction for refusal in _REFUSALS):
        return "Z"
    text = prediction
    for char in _OPTION_PUNCTUATION:
        text = text.replace(char, " ")
    words = [word.strip() for word in text.split()]
    found = [letter for letter in letters if letter in words]
    if len(found) == 1:
        return found[0]
    if not found and "Z" in words:
        return "Z"
    return None


def _infer_option_text(prediction: str, choices: Mapping[str, str]) -> str | None:
    # VLMEvalKit matching_util.can_infer_text: exactly one option text (lowercased) is a
    # substring of the lowercased answer.
    answer = prediction.lower()
    found = [letter for letter, text in choices.items() if str(text).lower() in answer]
    return found[0] if len(found) == 1 else None


def extract_mmbench_option(prediction: str, options: Sequence[str]) -> str | None:
    """Extract the chosen option letter from an answer without an LLM judge.

    As VLMEvalKit's ``can_infer``: first a single option letter standing as a word once
    ``.()[],:;!*#{}`` are turned into spaces (``"B"``, ``"(C)"``, ``"The answer is D."``); failing
    that, the single option whose text appears in the answer (case-insensitive). Returns the
    letter, ``"Z"`` for a refusal or an explicit ``Z``, or None when nothing can be inferred.
    """
    _check_num_options(options)
    choices = dict(zip(OPTION_LETTERS, options, strict=False))
    # VLMEvalKit matching_util.can_infer: option letter first, then option text.
    return _infer_option_letter(prediction, list(choices)) or _infer_option_text(prediction, choices)


def _group_rotations(records: Iterable[MMBenchRecord]) -> dict[int | str, list[MMBenchRecord]]:
    groups: dict[int | str, list[MMBenchRecord]] = defaultdict(list)
    for record in records:
        groups[record["question_id"]].append(record)
    if not groups:
        raise ValueError("no MMBench records to score")
    for question_id, rotations in groups.items():
        num_options = len(rotations[0]["options"])
        if any(len(rotation["options"]) != num_options for rotation in rotations):
            raise ValueError(f"MMBench question {question_id!r}: rotations disagree on the number of options")
        if len(rotations) != num_options:
            raise ValueError(
                f"MMBench question {question_id!r}: {len(rotations)} rotations for {num_options} options; "
                "circular evaluation asks each question once per option (see circular_rotations)"
            )
    return groups


def _question_correct(rotations: Sequence[MMBenchRecord]) -> bool:
    # VLMEvalKit prefetch_circular_group / mcq_circular_eval(model=None): right only if the option
    # extracted from every rotation equals that rotation's answer.
    return all(
        extract_mmbench_option(rotation["prediction"], rotation["options"]) == rotation["answer"]
        for rotation in rotations
    )


def _percent_by(hits: dict[int | str, bool], labels: dict[int | str, str]) -> dict[str, float]:
    grouped: dict[str, list[bool]] = defaultdict(list)
    for question_id, label in labels.items():
        grouped[label].append(hits[question_id])
    return {label: 100.0 * sum(values) / len(values) for label, values in sorted(grouped.items())}


def mmbench_circular_score(records: Iterable[MMBenchRecord]) -> MMBenchScore:
    """Score MMBench with circular evaluation: overall, per category and per l2-category.

    ``records`` hold one answer per rotation; rotations of a question share its ``question_id``.
    """
    groups = _group_rotations(records)
    hits = {question_id: _question_correct(rotations) for question_id, rotations in groups.items()}
    categories = {question_id: rotations[0]["category"] for question_id, rotations in groups.items()}
    l2_categories = {
        question_id: rotations[0]["l2_category"]
        for question_id, rotations in groups.items()
        if "l2_category" in rotations[0]
    }
    # VLMEvalKit multiple_choice.report_acc: mean hit overall and per ability.
    return MMBenchScore(
        overall=100.0 * sum(hits.values()) / len(hits),
        per_category=_percent_by(hits, categories),
        per_l2_category=_percent_by(hits, l2_categories),
        num_questions=len(hits),
    )
