"""VQA accuracy (VQAv2, VizWiz, OK-VQA) and its TextVQA/m4c variant, as the official scripts compute it.

A prediction is scored against the 10 human answers of its question: for each of the 10
leave-one-out subsets of 9 answers, ``min(1, matches / 3)``; the question's accuracy is the mean
of those 10 numbers. The two modes differ only in how strings are normalised before matching:

- ``"vqav2"`` follows GT-Vision-Lab/VQA ``vqaEval.py`` (master): newlines/tabs become spaces and
  both sides are stripped; the punctuation / number-word / article / contraction normalisation is
  applied to the prediction *and* the answers **only when the 10 answers are not all identical**.
  So against ten identical ``"yes"`` the prediction ``"Yes"`` scores 0 (the maintainers confirm
  the rule in GT-Vision-Lab/VQA issue #14: answers all annotators agree on, e.g. OCR text, are
  left untouched).
- ``"m4c"`` follows ``EvalAIAnswerProcessor`` / ``TextVQAAccuracyEvaluator`` (facebookresearch/mmf,
  copied into LLaVA ``llava/eval/m4c_evaluator.py``): prediction and answers are always
  lowercased and normalised. LLaVA's TextVQA numbers use it. LLaVA also runs its VQAv2 and
  VizWiz predictions through the same processor before uploading them to the EvalAI server
  (``scripts/convert_vqav2_for_submission.py``); to reproduce that pipeline, score
  ``normalize_m4c_answer(text)`` in ``"vqav2"`` mode.

Scores are fractions in [0, 1] per question and percentages in [0, 100] in the aggregate.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, TypedDict

from typing_extensions import NotRequired  # typing.NotRequired needs Python 3.11

from eval.metrics.records import each_question_once

VQAMode = Literal["vqav2", "m4c"]
VQA_MODES: tuple[VQAMode, ...] = ("vqav2", "m4c")
NUM_HUMAN_ANSWERS = 10

# GT-Vision-Lab/VQA vqaEval.py `self.contractions` (same table as mmf's EvalAIAnswerProcessor.CONTRACTIONS).
# Kept verbatim, including entries that can never match after lowercasing ("Im", "Ive", ...) and
# the reversed "somebody'd" -> "somebodyd".
CONTRACTIONS: dict[str, str] = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've",
    "couldnt": "couldn't", "couldn'tve": "couldn't've", "couldnt've": "couldn't've",
    "didnt": "didn't", "doesnt": "doesn't", "dont": "don't", "hadnt": "hadn't",
    "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't", "havent": "haven't",
    "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd",
    "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm",
    "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've",
    "itll": "it'll", "let's": "let's", "maam": "ma'am", "mightnt": "mightn't",
    "mightnt've": "mightn't've", "mightn'tve": "mightn't've", "mightve": "might've",
    "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've",
    "she's": "she's", "shouldve": "should've", "shouldnt": "shouldn't",
    "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd",
    "someoned've": "someone'd've", "someone'dve": "someone'd've", "someonell": "someone'll",
    "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's",
    "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've",
    "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've",
    "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've",
    "weve": "we've", "werent": "weren't", "whatll": "what'll", "whatre": "what're",
    "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've",
    "whyll": "why'll", "whyre": "why're", "whys": "why's", "wont": "won't",
    "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll",
    "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll",
    "youre": "you're", "youve": "you've",
}

# GT-Vision-Lab/VQA vqaEval.py `self.manualMap`: number words to digits ("none" counts as 0).
NUMBER_WORDS: dict[str, str] = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
    "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}

# GT-Vision-Lab/VQA vqaEval.py `self.articles`.
ARTICLES: frozenset[str] = frozenset({"a", "an", "the"})

# GT-Vision-Lab/VQA vqaEval.py `self.punct` (master; identical to mmf's PUNCTUATIONS). Note that
# "'" and ":" are not in it, so "don't" and "10:30" keep them.
PUNCTUATION: tuple[str, ...] = (
    ";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-",
    ">", "<", "@", "`", ",", "?", "!",
)

# GT-Vision-Lab/VQA vqaEval.py `self.periodStrip`. "(?!<=\d)" is a (buggy) negative lookahead for
# the literal "<=" followed by a digit, always true before ".", so the rule removes every period
# that is not followed by a digit: "3.5" keeps its period, "end." and "5." lose theirs.
PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
# GT-Vision-Lab/VQA vqaEval.py `self.commaStrip`: a comma between two digits ("3,000").
VQAV2_COMMA_STRIP = re.compile(r"(\d)(\,)(\d)")
# mmf EvalAIAnswerProcessor.COMMA_STRIP (never matches in m4c: its word_tokenize drops commas first).
M4C_COMMA_STRIP = re.compile(r"(?<=\d)(\,)+(?=\d)")
# Both official scripts call `PERIOD_STRIP.sub("", text, re.UNICODE)`: re.UNICODE (== 32) lands in
# the `count` parameter, so at most 32 periods are removed.
_PERIOD_STRIP_COUNT = int(re.UNICODE)


class VQARecord(TypedDict):
    """One question to score: the model's answer and the 10 human answers."""

    question_id: int | str
    prediction: str
    answers: Sequence[str]
    answer_type: NotRequired[str]
    """Answer type for the per-type breakdown (VQAv2: yes/no, number, other); optional."""


@dataclass(frozen=True)
class VQAScore:
    """Aggregate VQA accuracy over a set of questions."""

    overall: float
    """Mean per-question accuracy, as a percentage in [0, 100], not rounded."""
    per_answer_type: dict[str, float]
    """Mean accuracy (percentage) per answer type, over the records that carry one."""
    num_questions: int


def _clean_whitespace(text: str) -> str:
    # GT-Vision-Lab/VQA vqaEval.py evaluate(): applied to every answer and prediction.
    return text.replace("\n", " ").replace("\t", " ").strip()


def _process_punctuation(text: str, comma_strip: re.Pattern[str]) -> str:
    # GT-Vision-Lab/VQA vqaEval.py processPunctuation: a mark touching a space (or any mark, when
    # the text has a digit-comma-digit) is deleted; otherwise it becomes a space. The tests look at
    # the original text, not at the text being rewritten.
    delete_all = comma_strip.search(text) is not None
    out = text
    for mark in PUNCTUATION:
        if delete_all or f"{mark} " in text or f" {mark}" in text:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return PERIOD_STRIP.sub("", out, count=_PERIOD_STRIP_COUNT)


def _process_digit_article(text: str) -> str:
    # GT-Vision-Lab/VQA vqaEval.py processDigitArticle: lowercase, number words -> digits,
    # drop articles, then expand contractions word by word.
    words = [NUMBER_WORDS.get(word, word) for word in text.lower().split()]
    words = [word for word in words if word not in ARTICLES]
    return " ".join(CONTRACTIONS.get(word, word) for word in words)


def normalize_vqa_answer(text: str) -> str:
    """Apply the full VQAv2 answer normalisation (whitespace, punctuation, digits, articles).

    This is what ``vqaEval.py`` does to the prediction and the answers of a question whose 10
    answers are not all identical. For example ``"3,000"`` -> ``"3000"``, ``"two dogs."`` ->
    ``"2 dogs"``, ``"The Cat"`` -> ``"cat"``, ``"dont"`` -> ``"don't"``, ``"don't"`` stays.
    """
    return _process_digit_article(_process_punctuation(_clean_whitespace(text), VQAV2_COMMA_STRIP))


def normalize_m4c_answer(text: str) -> str:
    """Apply the TextVQA/m4c answer normalisation (mmf ``EvalAIAnswerProcessor.__call__``).

    Lowercases, deletes ``,`` and ``?``, splits ``'s`` into its own word, then applies the same
    punctuation / digit / article / contraction rules as VQAv2.
    """
    # mmf EvalAIAnswerProcessor.word_tokenize, then __call__.
    text = text.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    text = _clean_whitespace(text)
    return _process_digit_article(_process_punctuation(text, M4C_COMMA_STRIP))


def _leave_one_out_accuracy(prediction: str, answers: Sequence[str]) -> float:
    # GT-Vision-Lab/VQA vqaEval.py: each human answer is left out once; against the other 9,
    # min(1, matches / 3); the question scores the mean of the 10 values.
    accuracies = []
    for left_out in range(len(answers)):
        matches = sum(
            1 for index, answer in enumerate(answers) if index != left_out and answer == prediction
        )
        accuracies.append(min(1.0, matches / 3))
    return sum(accuracies) / len(accuracies)


def _check_answers(answers: Sequence[str], question_id: int | str | None) -> None:
    where = "" if question_id is None else f"question {question_id!r}: "
    if isinstance(answers, str):
        raise TypeError(f"{where}answers must be a list of {NUM_HUMAN_ANSWERS} strings, got one string")
    if len(answers) != NUM_HUMAN_ANSWERS:
        raise ValueError(
            f"{where}expected {NUM_HUMAN_ANSWERS} human answers, got {len(answers)}; VQA accuracy "
            f"is defined over the {NUM_HUMAN_ANSWERS} answers that VQAv2, VizWiz, OK-VQA and "
            "TextVQA release per question (pass the 'answer' field of each of them)"
        )


def vqa_accuracy(
    prediction: str,
    answers: Sequence[str],
    mode: VQAMode = "vqav2",
    question_id: int | str | None = None,
) -> float:
    """Score one prediction against its 10 human answers, as a fraction in [0, 1].

    Args:
        prediction: the model's answer text.
        answers: the 10 human answers of the question, raw as released.
        mode: ``"vqav2"`` (VQAv2 / VizWiz / OK-VQA official script) or ``"m4c"`` (TextVQA).
        question_id: only used to name the question in error messages.

    With k of the 10 (normalised) answers equal to the prediction the result is
    ``(k * min(1, (k-1)/3) + (10-k) * min(1, k/3)) / 10``, e.g. 0.9 for k = 3.
    """
    _check_answers(answers, question_id)
    if mode == "vqav2":
        cleaned_answers = [_clean_whitespace(answer) for answer in answers]
        cleaned_prediction = _clean_whitespace(prediction)
        # GT-Vision-Lab/VQA vqaEval.py: normalise only when the humans disagree (len(set(gt)) > 1).
        if len(set(cleaned_answers)) > 1:
            cleaned_answers = [normalize_vqa_answer(answer) for answer in cleaned_answers]
            cleaned_prediction = normalize_vqa_answer(cleaned_prediction)
        return _leave_one_out_accuracy(cleaned_prediction, cleaned_answers)
    if mode == "m4c":
        # mmf TextVQAAccuracyEvaluator: prediction and answers always go through the processor.
        processed_answers = [normalize_m4c_answer(answer) for answer in answers]
        return _leave_one_out_accuracy(normalize_m4c_answer(prediction), processed_answers)
    raise ValueError(f"unknown VQA mode {mode!r}; use one of {VQA_MODES}")


def vqa_score(records: Iterable[VQARecord], mode: VQAMode = "vqav2") -> VQAScore:
    """Aggregate VQA accuracy over records, overall and per answer type, as percentages.

    The official script rounds to 2 decimals at the very end (``round(100 * mean, 2)``); this
    returns the unrounded means so the report decides how to round.
    Raises ``ValueError`` on an empty input, a repeated question id or a question without
    exactly 10 answers.
    """
    per_question: list[float] = []
    per_type: dict[str, list[float]] = defaultdict(list)
    for record in each_question_once(records, answer="prediction"):
        question_id = record["question_id"]
        accuracy = vqa_accuracy(record["prediction"], record["answers"], mode, question_id)
        per_question.append(accuracy)
        answer_type = record.get("answer_type")
        if answer_type is not None:
            per_type[answer_type].append(accuracy)
    if not per_question:
        raise ValueError("no VQA records to score")
    return VQAScore(
        overall=100.0 * sum(per_question) / len(per_question),
        per_answer_type={name: 100.0 * sum(values) / len(values) for name, values in per_type.items()},
        num_questions=len(per_question),
    )
