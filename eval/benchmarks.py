"""The benchmark registry: name -> loader, prompt, default reply length, scorer.

Adding a benchmark is one :class:`Benchmark` entry in :data:`BENCHMARKS`: a loader from
:mod:`eval.loaders` (its released files -> questions), a prompt function (question -> the text
the model sees, with ``<image>`` marks), and a scorer (questions + answers -> metrics, through
the official metric in :mod:`eval.metrics`).

Prompts are LLaVA-1.5's (``docs/Evaluation.md`` and the question files its
``scripts/v1_5/eval/*.sh`` run), unless said otherwise next to the prompt.
"""

from __future__ import annotations

import dataclasses
import os
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eval import loaders
from eval.loaders import Question, Questions
from eval.metrics import (
    GQARecord,
    MMBenchRecord,
    MMEQuestion,
    PopeRecord,
    ScienceQARecord,
    VQARecord,
    build_scienceqa_prompt,
    caption_scores,
    format_mmbench_question,
    gqa_score,
    mmbench_circular_score,
    mme_score,
    parse_nlvr_answer,
    parse_nlvr_official,
    pope_score,
    scienceqa_score,
    score_nlvr,
    score_shapes,
    vqa_score,
)
from eval.nlvr import build_nlvr_prompt
from vlm.chat import check_text

IMAGE_TOKEN = "<image>"
"""The image mark in benchmark prompts; the runner swaps in the processor's own if it differs."""

SHORT_ANSWER_PROMPT = "Answer the question using a single word or phrase."
"""LLaVA-1.5's short-answer instruction (docs/Evaluation.md; llava_vqav2/gqa/textvqa/pope question files)."""

VIZWIZ_UNANSWERABLE_PROMPT = "When the provided information is insufficient, respond with 'Unanswerable'."
"""LLaVA-1.5's extra VizWiz instruction (its paper's response-format prompts; llava_vizwiz test.json)."""

CAPTION_PROMPT = "Provide a one-sentence caption for the provided image."
"""LLaVA-1.5's short-caption instruction (its training mix); lmms-eval's and InternVL's COCO caption prompt."""

YES_NO_TOKENS = 10
LETTER_TOKENS = 10
SHORT_ANSWER_TOKENS = 16
CAPTION_TOKENS = 64

Metrics = dict[str, Any]


# ------------------------------------------------------------------------------------ prompts


def short_answer_prompt(question: Question) -> str:
    """``<image>\\n{question}\\nAnswer the question using a single word or phrase.``"""
    return f"{IMAGE_TOKEN}\n{question.text}\n{SHORT_ANSWER_PROMPT}"


def vizwiz_prompt(question: Question) -> str:
    """The short-answer prompt with VizWiz's "respond with 'Unanswerable'" line before the instruction."""
    return f"{IMAGE_TOKEN}\n{question.text}\n{VIZWIZ_UNANSWERABLE_PROMPT}\n{SHORT_ANSWER_PROMPT}"


def as_released_prompt(question: Question) -> str:
    """``<image>\\n{question}``: the question text as the benchmark releases it (MME's ends with
    "Please answer yes or no."; the shapes questions are asked so in training)."""
    return f"{IMAGE_TOKEN}\n{question.text}"


def scienceqa_prompt(question: Question) -> str:
    """LLaVA-1.5's ScienceQA prompt (context, question, lettered choices, letter instruction; the image
    mark only where the problem has an image)."""
    meta = question.meta
    return build_scienceqa_prompt(
        question.text, meta["choices"], meta["hint"], has_image=meta.get("has_image", True), image_token=IMAGE_TOKEN
    )


def mmbench_prompt(question: Question) -> str:
    """LLaVA-1.5's MMBench prompt (hint, question, this rotation's options, letter instruction)."""
    meta = question.meta
    return format_mmbench_question(question.text, meta["options"], meta["hint"], image_token=IMAGE_TOKEN)


def caption_prompt(question: Question) -> str:
    """``<image>\\nProvide a one-sentence caption for the provided image.``"""
    return f"{IMAGE_TOKEN}\n{CAPTION_PROMPT}"


def nlvr_prompt(question: Question) -> str:
    """``<image>\\n`` + :data:`eval.nlvr.NLVR_PROMPT_TEMPLATE` (the question our NLVR training data asks)."""
    return f"{IMAGE_TOKEN}\n{build_nlvr_prompt(question.text)}"


# ------------------------------------------------------------------------------------ scorers


def _as_dict(result: Any) -> Metrics:
    return dataclasses.asdict(result)


def _vqa_scorer(mode: str) -> Callable[[Sequence[Question], Sequence[str]], Metrics]:
    def score(questions: Sequence[Question], answers: Sequence[str]) -> Metrics:
        records = []
        for question, answer in zip(questions, answers, strict=True):
            record = VQARecord(question_id=question.id, prediction=answer, answers=question.reference)
            if question.meta.get("answer_type") is not None:
                record["answer_type"] = question.meta["answer_type"]
            records.append(record)
        return _as_dict(vqa_score(records, mode=mode))

    score.__doc__ = f"VQA accuracy ({mode} normalisation), overall and per answer type, in percent."
    return score


def score_pope(questions: Sequence[Question], answers: Sequence[str]) -> Metrics:
    """POPE per split, and the mean accuracy and F1 over the splits (LLaVA-1.5 reports the mean F1)."""
    records = [
        PopeRecord(prediction=answer, label=question.reference, split=question.meta["split"])
        for question, answer in zip(questions, answers, strict=True)
    ]
    per_split = {split: _as_dict(metrics) for split, metrics in pope_score(records).items()}
    mean = {key: sum(m[key] for m in per_split.values()) / len(per_split) for key in ("accuracy", "f1")}
    return {**per_split, "mean": mean}


def _complete_groups(
    questions: Sequence[Question], answers: Sequence[str], size: Callable[[Question], int]
) -> tuple[list[tuple[Question, str]], int]:
    """Pairs of the groups that hold all their ``size(q)`` questions, and the number left out."""
    groups: dict[str, list[tuple[Question, str]]] = defaultdict(list)
    for question, answer in zip(questions, answers, strict=True):
        groups[question.group_key].append((question, answer))
    kept = [pair for group in groups.values() if len(group) == size(group[0][0]) for pair in group]
    return kept, len(questions) - len(kept)


def score_mme(questions: Sequence[Question], answers: Sequence[str]) -> Metrics:
    """MME perception/cognition totals and per-subtask acc, acc+, score. Images with one of their
    two questions unanswered (a partial predictions file) are left out and counted."""
    kept, skipped = _complete_groups(questions, answers, size=lambda q: 2)
    if not kept:
        raise ValueError(f"none of the {len(questions)} MME answers has its image's second question answered; acc+ needs both")
    result = mme_score(
        MMEQuestion(q.meta["subtask"], q.meta["image_name"], q.text, q.reference, prediction=answer) for q, answer in kept
    )
    return {**_as_dict(result), "unpaired_questions_skipped": skipped}


def score_scienceqa(questions: Sequence[Question], answers: Sequence[str]) -> Metrics:
    """ScienceQA accuracy over all questions and over the image ones (``image_accuracy``, IMG)."""
    return _as_dict(
        scienceqa_score(
            ScienceQARecord(
                question_id=question.id,
                prediction=answer,
                choices=question.meta["choices"],
                answer=question.meta["answer"],
                has_image=question.meta.get("has_image", True),
            )
            for question, answer in zip(questions, answers, strict=True)
        )
    )


def score_mmbench(questions: Sequence[Question], answers: Sequence[str]) -> Metrics:
    """MMBench circular accuracy, overall, per category and per l2-category. Questions with a
    rotation unanswered (a partial predictions file) are left out and counted."""
    kept, skipped = _complete_groups(questions, answers, size=lambda q: len(q.meta["options"]))
    if not kept:
        raise ValueError(f"no MMBench question has all its rotations answered among {len(questions)} answers")
    records = []
    for question, answer in kept:
        record = MMBenchRecord(
            question_id=question.meta["index"],
            prediction=answer,
            options=question.meta["options"],
            answer=question.reference,
            category=question.meta["category"],
        )
        if question.meta.get("l2_category") is not None:
            record["l2_category"] = question.meta["l2_category"]
        records.append(record)
    return {**_as_dict(mmbench_circular_score(records)), "incomplete_rotations_skipped": skipped}


def score_gqa(questions: Sequence[Question], answers: Sequence[str]) -> Metrics:
    """GQA exact-match accuracy over the balanced questions."""
    return _as_dict(
        gqa_score(
            GQARecord(question_id=q.id, prediction=a, answer=q.reference, is_balanced=q.meta["is_balanced"])
            for q, a in zip(questions, answers, strict=True)
        )
    )


def score_captions(questions: Sequence[Question], answers: Sequence[str]) -> Metrics:
    """BLEU-1..4 and CIDEr-D (pycocoevalcap), raw values."""
    references = {q.id: q.reference for q in questions}
    candidates = {q.id: a for q, a in zip(questions, answers, strict=True)}
    return _as_dict(caption_scores(references, candidates))


def score_nlvr_answers(questions: Sequence[Question], answers: Sequence[str]) -> Metrics:
    """NLVR accuracy over images and consistency over sentences as `nlvr/metrics_images.py` computes
    them (a reply counts only when it is the label token, any case: ``unparseable`` counts the others),
    and under ``lenient`` the same with our reading of free text (:func:`eval.nlvr.parse_nlvr_answer`:
    "False.", "no", ...)."""
    examples = [q.meta["example"] for q in questions]
    official = _as_dict(score_nlvr(zip(examples, map(parse_nlvr_official, answers), strict=True)))
    lenient = _as_dict(score_nlvr(zip(examples, map(parse_nlvr_answer, answers), strict=True)))
    return {**official, "lenient": {k: lenient[k] for k in ("accuracy", "consistency", "unparseable")}}


def score_shapes_answers(questions: Sequence[Question], answers: Sequence[str]) -> Metrics:
    """Exact match after light normalisation, overall and per task."""
    return score_shapes(
        {"id": q.id, "prediction": a, "answer": q.reference, "task": q.meta["task"]}
        for q, a in zip(questions, answers, strict=True)
    )


# ----------------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class Benchmark:
    """One benchmark: how to read it, ask it and score it."""

    name: str
    load: Callable[[Path, Path | None], list[Question]]
    """Released files (``--data``) and image folder (``--image-root`` or None) -> questions."""
    prompt: Callable[[Question], str]
    """Question -> the user turn the model sees, with ``<image>`` marks."""
    max_new_tokens: int
    """Default reply length: short for yes/no and letters, longer for captions."""
    score: Callable[[Sequence[Question], Sequence[str]], Metrics]
    """Questions and their answers (same order) -> JSON-ready metrics."""
    url: str
    """Where the benchmark publishes its data; named in every missing-file error."""
    uses_image_root: bool = True
    """False where the images live inside the released files (MME, MMBench, NLVR)."""
    loader_checks_images: bool = False
    """True where the loader needs the image files to read the data (MME, NLVR), unless told not to."""

    def load_questions(
        self, data: str | os.PathLike, image_root: str | os.PathLike | None = None, need_images: bool = True
    ) -> Questions:
        """Run the loader, with the publishing URL added to any missing-file error. ``need_images=False``
        (scoring) reads the annotations alone.

        A question that cannot be asked is skipped and counted in the result's ``skipped``: text
        that is not text, that holds an ``<image>`` mark (the prompt places the images), or that is
        longer than ``MAX_QUESTION_CHARS``."""
        if image_root is not None and not self.uses_image_root:
            raise ValueError(f"{self.name} keeps its images in its released files; drop --image-root")
        extra = {"need_images": need_images} if self.loader_checks_images else {}
        try:
            loaded = self.load(Path(data), None if image_root is None else Path(image_root), **extra)
        except FileNotFoundError as err:
            if "published at" in str(err) or self.url in str(err):
                raise
            message = str(err).rstrip()
            separator = " " if message.endswith(".") else ". "
            raise FileNotFoundError(f"{message}{separator}The {self.name} data is published at {self.url}") from err
        questions = Questions(skipped=getattr(loaded, "skipped", ()))
        for question in loaded:
            problem = question_problem(question)
            if problem is None:
                questions.append(question)
            else:
                questions.skipped.append(f"{Path(data).name} question {question.id}: {problem}")
        if not questions:
            reason = f"; all {len(questions.skipped)} were skipped, e.g. {questions.skipped[0]}" if questions.skipped else ""
            raise ValueError(f"{self.name}: {data} holds no questions{reason}")
        counts = Counter(q.id for q in questions)
        if len(counts) != len(questions):
            duplicates = sorted(i for i, n in counts.items() if n > 1)[:5]
            raise ValueError(f"{self.name}: {data} repeats question ids, e.g. {duplicates}")
        return questions


MAX_QUESTION_CHARS = 4000
"""Longer question texts are skipped: no benchmark here asks one, and a prompt that long is a broken record."""


def question_problem(question: Question) -> str | None:
    """Why ``question`` cannot be asked, or None."""
    if not isinstance(question.text, str):
        return f"the question is {'null' if question.text is None else 'a ' + type(question.text).__name__}, not text"
    if IMAGE_TOKEN in question.text:
        return f"the question text holds {IMAGE_TOKEN}; the prompt places the images itself, so leave the mark out"
    if len(question.text) > MAX_QUESTION_CHARS:
        return f"the question is {len(question.text)} characters long (at most {MAX_QUESTION_CHARS})"
    try:
        check_text(question.text, "the question")
    except ValueError as err:
        return str(err)
    return None


_VQA_DATA = f"{loaders.VQAV2_URL} (images: COCO val2014, {loaders.COCO_VAL2014_IMAGES_URL})"

BENCHMARKS: dict[str, Benchmark] = {
    b.name: b
    for b in (
        Benchmark("vqav2", loaders.load_vqa, short_answer_prompt, SHORT_ANSWER_TOKENS, _vqa_scorer("vqav2"), _VQA_DATA),
        Benchmark("okvqa", loaders.load_okvqa, short_answer_prompt, SHORT_ANSWER_TOKENS, _vqa_scorer("vqav2"), loaders.OKVQA_URL),
        Benchmark("vizwiz", loaders.load_vizwiz, vizwiz_prompt, SHORT_ANSWER_TOKENS, _vqa_scorer("vqav2"), loaders.VIZWIZ_URL),
        Benchmark("textvqa", loaders.load_textvqa, short_answer_prompt, SHORT_ANSWER_TOKENS, _vqa_scorer("m4c"), loaders.TEXTVQA_URL),
        Benchmark(
            "pope", loaders.load_pope, short_answer_prompt, YES_NO_TOKENS, score_pope,
            f"{loaders.POPE_URL} (images: COCO val2014, {loaders.COCO_VAL2014_IMAGES_URL})",
        ),
        Benchmark("mme", loaders.load_mme, as_released_prompt, YES_NO_TOKENS, score_mme, loaders.MME_URL, uses_image_root=False,
                  loader_checks_images=True),
        Benchmark("scienceqa", loaders.load_scienceqa, scienceqa_prompt, LETTER_TOKENS, score_scienceqa, loaders.SCIENCEQA_URL),
        Benchmark("mmbench", loaders.load_mmbench, mmbench_prompt, LETTER_TOKENS, score_mmbench, loaders.MMBENCH_URL, uses_image_root=False),
        Benchmark("gqa", loaders.load_gqa, short_answer_prompt, SHORT_ANSWER_TOKENS, score_gqa, loaders.GQA_URL),
        Benchmark(
            "coco_caption", loaders.load_coco_captions, caption_prompt, CAPTION_TOKENS, score_captions,
            f"{loaders.COCO_URL} (captions_val2014.json in annotations_trainval2014.zip; images {loaders.COCO_VAL2014_IMAGES_URL})",
        ),
        Benchmark("nlvr", loaders.load_nlvr, nlvr_prompt, YES_NO_TOKENS, score_nlvr_answers, loaders.NLVR_URL, uses_image_root=False,
                  loader_checks_images=True),
        Benchmark("shapes", loaders.load_shapes, as_released_prompt, SHORT_ANSWER_TOKENS, score_shapes_answers, loaders.SHAPES_HOW),
    )
}


def get_benchmark(name: str) -> Benchmark:
    """The registry entry for ``name``, or a ValueError listing the known names."""
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; choose one of {', '.join(BENCHMARKS)}")
    return BENCHMARKS[name]
