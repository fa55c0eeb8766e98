"""Prediction files as other tools write them, for ``vlm eval --score``: read, then matched to our questions.

Formats (detected from the content, or chosen with ``--format``):

- ``jsonl``: one JSON object per line with ``id`` and ``answer`` (ours, ``predictions.jsonl``) or
  ``question_id`` and ``text`` (LLaVA's ``model_vqa*.py`` answer files);
- ``json``: one JSON list of such objects (the official VQA results format,
  ``[{"question_id": 1, "answer": "yes"}]``, which LLaVA's ``convert_vqav2_for_submission.py`` writes);
- ``csv``: ``identifier,prediction`` lines, the predictions file of NLVR's ``metrics_images.py``
  (``dev-1373-0-1.png,true``).

(The MME eval tool's results folder holds its own questions and gold answers: see
:func:`eval.runner.score_mme_results`.)

A file's ids are then matched to the benchmark's questions: directly, or where a tool numbers them
its own way, through the benchmark's rule (:func:`match_answers`): LLaVA's TextVQA answers carry the
image id and the prompt, not the question id; NLVR's CSV names the PNG; MME's ids keep the image
suffix, which a results file without images cannot know.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from eval.loaders import Question

FORMATS = ("jsonl", "json", "csv")


def detect_format(path: Path) -> str:
    """``json`` for a file that is one JSON list, ``csv`` for ``identifier,label`` lines, else ``jsonl``."""
    with open(path, "rb") as handle:
        head = handle.read(4096).lstrip()
    if head.startswith(b"["):
        return "json"
    if head and not head.startswith(b"{") and re.match(rb"[^,\n]+,[^\n]*", head):
        return "csv"
    return "jsonl"


def _decode(raw: bytes, path: Path, where: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}{where}: not UTF-8 text (byte {err.start}); is this a predictions file?") from None


def _record(value: Any, path: Path, where: str) -> tuple[str, str, dict[str, Any]]:
    """(id, answer, record) from one parsed record, or a one-line error naming the file and the record."""
    if not isinstance(value, dict):
        raise ValueError(f"{path}{where}: expected a JSON object with an id and an answer, got {type(value).__name__}")
    question_id = value.get("id", value.get("question_id"))
    answer = value.get("answer", value.get("text"))
    if question_id is None or isinstance(question_id, (dict, list, bool)):
        raise ValueError(f"{path}{where}: needs an 'id' (or LLaVA's 'question_id'), got {json.dumps(value)[:200]}")
    if not isinstance(answer, str):
        raise ValueError(f"{path}{where}: needs a string 'answer' (or LLaVA's 'text'), got {json.dumps(value)[:200]}")
    return str(question_id), answer, value


def read_result_file(path: str | os.PathLike, fmt: str | None = None) -> tuple[dict[str, dict[str, Any]], str]:
    """``({id: record with "answer"}, format)`` of a predictions file; ValueError naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such predictions file")
    fmt = fmt or detect_format(path)
    if fmt not in FORMATS:
        raise ValueError(f"--format {fmt} is not one of {', '.join(FORMATS)}")
    text = _decode(path.read_bytes(), path, "")
    rows: list[tuple[str, str, dict[str, Any]]] = []
    if fmt == "json":
        try:
            values = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON ({err})") from None
        if not isinstance(values, list):
            raise ValueError(f"{path}: expected a JSON list of {{question_id, answer}} (the VQA results format)")
        rows = [_record(value, path, f" item {index}") for index, value in enumerate(values)]
    elif fmt == "csv":
        for number, line in enumerate(text.splitlines(), start=1):
            line = line.strip()  # as NLVR's metrics_images.py reads it: the line stripped, split on ","
            if not line:
                continue
            fields = line.split(",")
            if len(fields) < 2 or not fields[0]:
                raise ValueError(f"{path} line {number}: expected identifier,prediction, got {line[:200]!r}")
            rows.append((fields[0], fields[1], {"id": fields[0], "answer": fields[1]}))
    else:
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path} line {number}: not valid JSON ({err}); fix or delete that line") from None
            rows.append(_record(value, path, f" line {number}"))
    records: dict[str, dict[str, Any]] = {}
    for question_id, answer, record in rows:
        if question_id in records:
            raise ValueError(f"{path}: question {question_id!r} is answered twice")
        records[question_id] = {**record, "id": question_id, "answer": answer}
    return records, fmt


# ------------------------------------------------------------------------------ id matching


def _textvqa_key(record: dict[str, Any]) -> tuple[str, str] | None:
    """LLaVA's TextVQA answers: ``question_id`` is the image id, the question is the prompt's first line
    (llava/eval/eval_textvqa.py's ``prompt_processor``: "Reference OCR token:" lines skipped)."""
    prompt = record.get("prompt")
    if not isinstance(prompt, str):
        return None
    lines = [line for line in prompt.split("\n") if not line.startswith("Reference OCR token:")]
    match = re.search(r"Question: (.*?) Short answer:", prompt, re.DOTALL) if prompt.startswith("OCR tokens: ") else None
    question = match.group(1) if match else (lines[0] if lines else "")
    return str(record.get("question_id")), question.lower()


_IMAGE_SUFFIX = re.compile(r"\.(?:jpg|jpeg|png)(?=/|$)", re.IGNORECASE)


def _aliases(benchmark: str, question: Question) -> list[Any]:
    """Other keys a tool may give ``question`` (besides its id)."""
    if benchmark == "textvqa" and question.meta.get("image_id") is not None:
        return [(str(question.meta["image_id"]), question.text.lower())]
    if benchmark == "nlvr":  # metrics_images.py: "dev-1373-0-1.png"; the part after the split also names it
        return [f"{question.id}.png", question.id.split("-", 1)[1]]
    if benchmark == "mme":
        return [_IMAGE_SUFFIX.sub("", question.id)]
    return []


def match_answers(
    records: dict[str, dict[str, Any]], questions: Sequence[Question], benchmark: str, path: Path, what: str
) -> dict[str, str]:
    """``{question id: answer}`` for the records of a predictions file; ValueError if some match no question."""
    by_key: dict[Any, str] = {}
    for question in questions:
        by_key[question.id] = question.id
        for alias in _aliases(benchmark, question):
            by_key.setdefault(alias, question.id)
    answers: dict[str, str] = {}
    unknown = []
    for record_id, record in records.items():
        keys = [record_id]
        if benchmark == "mme":
            keys.append(_IMAGE_SUFFIX.sub("", record_id))
        if benchmark == "textvqa" and (key := _textvqa_key(record)) is not None:
            keys.append(key)
        question_id = next((by_key[k] for k in keys if k in by_key), None)
        if question_id is None:
            unknown.append(record_id)
        elif question_id in answers:
            raise ValueError(f"{path}: question {question_id!r} is answered twice (as {record_id!r})")
        else:
            answers[question_id] = record["answer"]
    if unknown:
        raise ValueError(
            f"{path}: {len(unknown)} of {len(records)} answers are to questions that are not in {what}, "
            f"e.g. {unknown[:5]}; the predictions belong to another benchmark or data file"
        )
    return answers
