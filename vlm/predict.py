"""Batched answers: many questions about images, with left padding (the engine behind ``vlm predict``).

- ``generate_answers``: (images, question) pairs -> answers, one list per batch; greedy by
  default. The evaluation runner and ``predict_file`` both use it.
- ``predict_file``: a JSONL file of questions -> a JSONL file of answers that survives being
  killed: every finished batch is appended and fsynced, a rerun skips the ids already answered,
  and a last line torn by the kill is dropped first.

Question files have one JSON object per line: ``{"id": ..., "image": "a.png" | ["a.png", ...]
(optional), "question": "..."}``. Each answer line is the question's record plus ``"answer"``.
"""

from __future__ import annotations

import json
import os
import sys
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import torch
from PIL import Image
from torch import nn
from tqdm.auto import tqdm

from vision import load_image
from vlm.atomic import atomic_file, check_output_path
from vlm.chat import (
    ImageInput,
    as_image,
    check_prompt_length,
    check_text,
    context_length,
    generate,
    prompt_length,
    question_prompt,
)
from vlm.processing import VLMProcessor


def generate_answers(
    model: nn.Module,
    processor: VLMProcessor,
    requests: Iterable[tuple[Sequence[ImageInput], str]],
    batch_size: int = 8,
    system: str | None = None,
    max_new_tokens: int = 128,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int = 0,
) -> Iterator[list[str]]:
    """Answer ``(images, question)`` pairs ``batch_size`` at a time; yield each batch's answers in order.

    ``requests`` is consumed one batch at a time, so it may be a generator that loads images
    on the way. Images are paths or PIL images; ``<image>`` marks in a question place them,
    otherwise they go first. Greedy answers are the same as one at a time (left padding).
    Raises ``ContextLengthError`` for a question longer than the model's context.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    torch.manual_seed(seed)
    batch: list[tuple[Sequence[ImageInput], str]] = []
    for request in requests:
        batch.append(request)
        if len(batch) == batch_size:
            yield _answer_batch(model, processor, batch, system, max_new_tokens, temperature, top_p)
            batch = []
    if batch:
        yield _answer_batch(model, processor, batch, system, max_new_tokens, temperature, top_p)


def _answer_batch(model, processor, batch, system, max_new_tokens, temperature, top_p) -> list[str]:
    images = [[as_image(image) for image in group] for group, _ in batch]
    prompts = [question_prompt(processor, question, len(group), system) for group, (_, question) in zip(images, batch)]
    return generate(model, processor, prompts, images, max_new_tokens, temperature, top_p)


# --- question files -----------------------------------------------------------------------------


@dataclass
class Question:
    """One valid line of a question file."""

    line: int
    """1-based line number in the file."""
    record: dict[str, Any]
    """The record as read; the answer line is this plus ``"answer"``."""
    image_paths: list[Path]
    """The images, resolved against the image root."""


@dataclass
class PredictReport:
    """What ``predict_file`` did."""

    answered: int = 0
    """Questions answered (and appended) in this run."""
    already_answered: int = 0
    """Questions skipped because their id was already in the output file."""
    skipped: int = 0
    """Bad lines skipped: invalid JSON, missing fields, duplicate ids, bad images, too long."""

    def __str__(self) -> str:
        answered = f"{self.answered} question{'s' if self.answered != 1 else ''}"
        skipped = f"{self.skipped} bad line{'s' if self.skipped != 1 else ''}"
        return f"answered {answered}, {self.already_answered} already answered, skipped {skipped}"


class _BadLine(ValueError):
    pass


def _image_names(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(name, str) for name in value):
        return list(value)
    raise _BadLine(f"'image' must be a path or a list of paths, got {json.dumps(value)[:80]}")


def read_questions(
    path: str | os.PathLike, image_root: str | os.PathLike | None = None, log: TextIO | None = None
) -> tuple[list[Question], int]:
    """The valid questions of a JSONL file and the number of bad lines, each reported to ``log`` with its line number.

    A line is bad if it is not a JSON object, lacks a string/number ``id`` or a non-empty string
    ``question``, repeats an earlier id, or names an image file that does not exist. Relative
    image paths are resolved against ``image_root`` (default: the file's own folder).
    """
    path = Path(path)
    root = Path(image_root) if image_root is not None else path.parent
    log = log if log is not None else sys.stderr
    questions: list[Question] = []
    first_line: dict[Any, int] = {}
    bad = 0
    with open(path, "rb") as handle:  # bytes: a line of bad UTF-8 is one bad line, not a failed run
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                questions.append(_parse_question(raw, number, root, first_line))
            except _BadLine as err:
                bad += 1
                print(f"{path} line {number}: {err}; skipped", file=log)
    return questions, bad


def _parse_question(raw: bytes, number: int, root: Path, first_line: dict[Any, int]) -> Question:
    try:
        record = json.loads(raw)
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError
        raise _BadLine(f"invalid JSON ({err})") from None
    if not isinstance(record, dict):
        raise _BadLine(f"expected a JSON object, got {type(record).__name__}")
    record_id = record.get("id")
    if record_id is None or isinstance(record_id, bool) or not isinstance(record_id, (str, int)):
        raise _BadLine("no 'id' (a string or an integer)")
    if not isinstance(record.get("question"), str) or not record["question"].strip():
        raise _BadLine(f"id {record_id!r}: no 'question' (a non-empty string)")
    try:
        check_text(record["question"], "'question'")
    except ValueError as err:
        raise _BadLine(f"id {record_id!r}: {err}") from None
    if record_id in first_line:
        raise _BadLine(f"duplicate id {record_id!r} (first on line {first_line[record_id]})")
    paths = [root / name for name in _image_names(record.get("image"))]
    for image in paths:
        if not image.is_file():
            raise _BadLine(f"id {record_id!r}: no such image file {image}")
    first_line[record_id] = number
    return Question(number, record, paths)


def answered_ids(path: str | os.PathLike, log: TextIO | None = None) -> set[Any]:
    """Ids in an answers file, after dropping a last line torn by a killed run (rewriting the file atomically).

    A last line without its newline, or one that is not JSON, is torn; any other bad line is an error.
    """
    path = Path(path)
    if not path.exists():
        return set()
    ids: set[Any] = set()
    kept_bytes = 0  # the file's length up to the end of the last good line
    torn: str | None = None
    with open(path, "rb") as handle:
        lines = list(enumerate(handle, start=1))
    for number, raw in lines:
        try:
            if not raw.endswith(b"\n"):
                raise ValueError("no newline at its end")
            if raw.strip():
                ids.add(json.loads(raw)["id"])
        except (ValueError, KeyError, TypeError) as err:
            if number != len(lines):
                raise ValueError(
                    f"{path} line {number}: not an answer record ({err}); is this file the output of vlm predict?"
                ) from None
            torn = f"{path} line {number}: cut off by an interrupted run; dropped, its question is answered again"
            break
        kept_bytes += len(raw)
    if torn is not None:
        with open(path, "rb") as source, atomic_file(path, "wb") as target:
            target.write(source.read(kept_bytes))
        print(torn, file=log if log is not None else sys.stderr)
    return ids


def predict_file(
    model: nn.Module,
    processor: VLMProcessor,
    input_path: str | os.PathLike,
    output_path: str | os.PathLike,
    image_root: str | os.PathLike | None = None,
    batch_size: int = 8,
    system: str | None = None,
    max_new_tokens: int = 128,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int = 0,
    progress: bool = True,
    log: TextIO | None = None,
) -> PredictReport:
    """Answer every question of ``input_path`` not yet in ``output_path``, appending one batch at a time.

    Bad lines are reported to ``log`` (default stderr) with their line numbers and skipped.
    Each batch is flushed and fsynced, so a killed run loses at most the batch in flight;
    run it again to finish.
    """
    input_path, output_path = Path(input_path), Path(output_path)
    if input_path.absolute() == output_path.absolute():
        raise ValueError(f"the questions and the answers are the same file {input_path}; choose another output")
    check_output_path(output_path, "file")
    log = log if log is not None else sys.stderr
    questions, bad = read_questions(input_path, image_root, log)
    done = answered_ids(output_path, log)
    todo = [q for q in questions if q.record["id"] not in done]
    report = PredictReport(already_answered=len(questions) - len(todo), skipped=bad)
    limit = context_length(model)
    in_flight: deque[Question] = deque()  # handed to generate_answers, not yet answered
    bar = tqdm(total=len(todo), desc="answering", unit="question", file=log, disable=not progress, dynamic_ncols=True)

    def requests() -> Iterator[tuple[list[Image.Image], str]]:
        for question in todo:
            try:
                images = [load_image(image) for image in question.image_paths]
                for image in images:  # an image the preprocessing would blow up (40000x1) fails here, not mid-batch
                    processor.image_processor.check_image(image)
                prompt = question_prompt(processor, question.record["question"], len(images), system)
                check_prompt_length(prompt_length(processor, prompt), limit)
            except ValueError as err:  # ImageLoadError, ContextLengthError, <image> marks vs images
                report.skipped += 1
                bar.update(1)
                tqdm.write(f"{input_path} line {question.line}: id {question.record['id']!r}: {err}; skipped", file=log)
                continue
            in_flight.append(question)
            yield images, question.record["question"]

    output_path.parent.mkdir(parents=True, exist_ok=True)
    with open(output_path, "a", encoding="utf-8") as output:
        for answers in generate_answers(
            model, processor, requests(), batch_size, system, max_new_tokens, temperature, top_p, seed
        ):
            finished = [in_flight.popleft() for _ in answers]
            records = [{**question.record, "answer": answer} for question, answer in zip(finished, answers)]
            output.write("".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records))
            output.flush()
            os.fsync(output.fileno())
            report.answered += len(finished)
            bar.update(len(finished))
    bar.close()
    return report
