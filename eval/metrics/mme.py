"""MME scores, as the benchmark's eval_tool/calculation.py computes them, and readers for its files.

Every MME image comes with two yes/no questions. Per subtask:
``acc`` is the share of questions answered right, ``acc+`` the share of images whose two questions
are both right, and the subtask score is ``100 * acc + 100 * acc+`` (max 200). Perception sums its
10 subtasks (max 2000), cognition its 4 (max 800).

Files this module reads:

- the released benchmark, ``MME_Benchmark_release_version/<subtask>/``: either ``images/`` plus
  ``questions_answers_YN/<stem>.txt`` (artwork, celebrity, landmark, posters, scene) or the image
  and ``<stem>.txt`` side by side (the other subtasks); each ``.txt`` holds lines
  ``question<TAB>answer``;
- the eval tool's ``Your_Results/<subtask>.txt`` (lines ``image_name<TAB>question<TAB>answer``)
  and the same files once a model's answers are appended as a fourth column, which is what
  calculation.py reads.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

MMEAnswer = Literal["yes", "no", "other"]

# BradyFU/Awesome-Multimodal-Large-Language-Models eval_tool/calculation.py `eval_type_dict`.
PERCEPTION_SUBTASKS: tuple[str, ...] = (
    "existence", "count", "position", "color", "posters",
    "celebrity", "scene", "landmark", "artwork", "OCR",
)
COGNITION_SUBTASKS: tuple[str, ...] = (
    "commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning",
)
MME_SUBTASKS: tuple[str, ...] = PERCEPTION_SUBTASKS + COGNITION_SUBTASKS
_IMAGE_SUFFIXES: tuple[str, ...] = (".jpg", ".png", ".jpeg", ".JPG", ".PNG", ".JPEG")


@dataclass(frozen=True)
class MMEQuestion:
    """One MME question, optionally with the model's answer."""

    subtask: str
    image_name: str
    question: str
    answer: str
    """Gold answer, "Yes" or "No" as released (compared lowercased)."""
    prediction: str | None = None
    """The model's raw answer; required for scoring."""


@dataclass(frozen=True)
class MMESubtaskScore:
    """Scores of one MME subtask."""

    accuracy: float
    """Share of questions answered right, as a fraction in [0, 1]."""
    accuracy_plus: float
    """Share of images with both questions right, as a fraction in [0, 1]."""
    score: float
    """100 * accuracy + 100 * accuracy_plus, in [0, 200]."""
    num_questions: int
    num_images: int
    num_other: int
    """Answers that were neither yes nor no (they count as wrong)."""


@dataclass(frozen=True)
class MMEScore:
    """MME totals and per-subtask scores."""

    perception: float
    """Sum of the perception subtask scores present (max 2000 with all 10)."""
    cognition: float
    """Sum of the cognition subtask scores present (max 800 with all 4)."""
    subtasks: dict[str, MMESubtaskScore]
    missing_subtasks: tuple[str, ...]
    """Subtasks with no questions; totals match published numbers only when this is empty."""


def parse_mme_answer(prediction: str) -> MMEAnswer:
    """Reduce a model answer to "yes", "no" or "other" as calculation.py does.

    The answer is lowercased; it is "yes"/"no" when equal to it, otherwise "yes" when its first
    4 characters contain "yes", else "no" when they contain "no", else "other". So
    ``"Yes, it is"`` -> yes, ``"Not really"`` -> no (``"not "`` contains "no"),
    ``"I think yes"`` -> other.
    """
    # BradyFU eval_tool/calculation.py parse_pred_ans (the line's text is lowercased, not stripped).
    answer = prediction.lower()
    if answer == "yes":
        return "yes"
    if answer == "no":
        return "no"
    prefix = answer[:4]
    if "yes" in prefix:
        return "yes"
    if "no" in prefix:
        return "no"
    return "other"


def _gold_answer(question: MMEQuestion) -> str:
    gold = question.answer.strip().lower()
    if gold not in ("yes", "no"):
        raise ValueError(
            f"MME {question.subtask}/{question.image_name}: gold answer must be yes or no, "
            f"got {question.answer!r}"
        )
    return gold


def _image_pairs(questions: Sequence[MMEQuestion]) -> list[tuple[int, int]]:
    # calculation.py pairs consecutive lines ("one image corresponds to two questions"); grouping
    # by image name first gives the same pairs on the released files and does not depend on order.
    by_image: dict[str, list[int]] = {}
    for index, question in enumerate(questions):
        by_image.setdefault(question.image_name, []).append(index)
    pairs = []
    for image_name, indices in by_image.items():
        if len(indices) % 2:
            raise ValueError(
                f"MME {questions[indices[0]].subtask}/{image_name}: {len(indices)} questions, "
                "but MME asks two per image and acc+ needs both"
            )
        pairs.extend(zip(indices[0::2], indices[1::2], strict=True))
    return pairs


def _is_correct(question: MMEQuestion) -> bool:
    if question.prediction is None:
        raise ValueError(
            f"MME {question.subtask}/{question.image_name}: no prediction for "
            f"{question.question!r}; fill MMEQuestion.prediction before scoring"
        )
    return parse_mme_answer(question.prediction) == _gold_answer(question)


def mme_subtask_score(questions: Sequence[MMEQuestion]) -> MMESubtaskScore:
    """Score the questions of one subtask (acc, acc+, score)."""
    if not questions:
        raise ValueError("no MME questions to score")
    correct = [_is_correct(question) for question in questions]
    pairs = _image_pairs(questions)
    # BradyFU eval_tool/calculation.py: acc over questions, acc+ over images, score = 100 * (acc + acc+).
    accuracy = sum(correct) / len(questions)
    accuracy_plus = sum(correct[first] and correct[second] for first, second in pairs) / len(pairs)
    num_other = sum(parse_mme_answer(question.prediction or "") == "other" for question in questions)
    return MMESubtaskScore(
        accuracy=accuracy,
        accuracy_plus=accuracy_plus,
        score=100.0 * accuracy + 100.0 * accuracy_plus,
        num_questions=len(questions),
        num_images=len(pairs),
        num_other=num_other,
    )


def mme_score(questions: Iterable[MMEQuestion]) -> MMEScore:
    """Score MME questions of any subtasks: per-subtask scores and perception/cognition totals."""
    by_subtask: dict[str, list[MMEQuestion]] = {}
    for question in questions:
        if question.subtask not in MME_SUBTASKS:
            raise ValueError(f"unknown MME subtask {question.subtask!r}; expected one of {MME_SUBTASKS}")
        by_subtask.setdefault(question.subtask, []).append(question)
    if not by_subtask:
        raise ValueError("no MME questions to score")
    subtasks = {name: mme_subtask_score(by_subtask[name]) for name in MME_SUBTASKS if name in by_subtask}
    return MMEScore(
        perception=sum(subtasks[name].score for name in PERCEPTION_SUBTASKS if name in subtasks),
        cognition=sum(subtasks[name].score for name in COGNITION_SUBTASKS if name in subtasks),
        subtasks=subtasks,
        missing_subtasks=tuple(name for name in MME_SUBTASKS if name not in subtasks),
    )


def _split_line(line: str, path: Path, line_number: int, num_fields: Sequence[int]) -> list[str]:
    fields = line.rstrip("\n").rstrip("\r").split("\t")
    if len(fields) not in num_fields:
        expected = " or ".join(str(n) for n in num_fields)
        raise ValueError(
            f"{path}:{line_number}: expected {expected} tab-separated fields, got {len(fields)}: {line!r}"
        )
    return fields


def read_mme_results_file(path: str | Path, subtask: str | None = None) -> list[MMEQuestion]:
    """Read one eval-tool file: lines ``image<TAB>question<TAB>answer[<TAB>prediction]``.

    ``subtask`` defaults to the file name without ``.txt`` (``Your_Results/OCR.txt`` -> ``OCR``).
    """
    path = Path(path)
    subtask = subtask or path.stem
    questions = []
    with path.open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            fields = _split_line(line, path, line_number, (3, 4))
            prediction = fields[3] if len(fields) == 4 else None
            questions.append(MMEQuestion(subtask, fields[0], fields[1], fields[2], prediction))
    return questions


def read_mme_results_dir(results_dir: str | Path) -> list[MMEQuestion]:
    """Read every ``<subtask>.txt`` of an eval-tool folder (``Your_Results`` or a model's answers)."""
    results_dir = Path(results_dir)
    paths = [results_dir / f"{name}.txt" for name in MME_SUBTASKS if (results_dir / f"{name}.txt").is_file()]
    if not paths:
        raise FileNotFoundError(
            f"no MME subtask files in {results_dir}; expected files named like "
            f"{MME_SUBTASKS[0]}.txt (the eval_tool/Your_Results layout)"
        )
    return [question for path in paths for question in read_mme_results_file(path)]


def _find_image(image_dir: Path, stem: str, qa_path: Path, require: bool = True) -> str:
    for suffix in _IMAGE_SUFFIXES:
        if (image_dir / f"{stem}{suffix}").is_file():
            return f"{stem}{suffix}"
    if not require:
        return stem  # scoring reads no pixels; ids are then matched without the image's suffix
    raise FileNotFoundError(f"no image named {stem}.jpg/.png in {image_dir} for questions file {qa_path}")


def read_mme_benchmark(benchmark_dir: str | Path, require_images: bool = True) -> list[MMEQuestion]:
    """Read the released ``MME_Benchmark_release_version`` folder (questions and gold answers).

    Subtask folders with an ``images/`` subfolder keep their questions in
    ``questions_answers_YN/``; the others keep each image's ``.txt`` next to it (the rule of
    LLaVA's ``convert_answer_to_mme.py``). Subtasks come out in the official order. Without
    ``require_images`` (scoring), an absent image is named by its stem alone.
    """
    benchmark_dir = Path(benchmark_dir)
    questions = []
    for subtask in MME_SUBTASKS:
        subtask_dir = benchmark_dir / subtask
        if not subtask_dir.is_dir():
            continue
        if (subtask_dir / "images").is_dir():
            image_dir, qa_dir = subtask_dir / "images", subtask_dir / "questions_answers_YN"
        else:
            image_dir = qa_dir = subtask_dir
        for qa_path in sorted(qa_dir.glob("*.txt")):
            image_name = _find_image(image_dir, qa_path.stem, qa_path, require_images)
            with qa_path.open(encoding="utf-8") as handle:
                for line_number, line in enumerate(handle, start=1):
                    if not line.strip():
                        continue
                    question, answer = _split_line(line, qa_path, line_number, (2,))
                    questions.append(MMEQuestion(subtask, image_name, question, answer))
    if not questions:
        raise FileNotFoundError(
            f"no MME subtask folders in {benchmark_dir}; expected e.g. {benchmark_dir / 'existence'}"
        )
    return questions
