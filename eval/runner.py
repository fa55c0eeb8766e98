"""The evaluation runner behind ``vlm eval``: ask a model a benchmark's questions, resumably, and score them.

``run_eval`` writes into one output folder:

- ``predictions.jsonl``: one ``{"id", "prompt", "answer", "reference"}`` per question, appended
  (flush + fsync) as each batch finishes. A rerun into the same folder asks only the questions
  not answered yet; a torn last line (a crash mid-write) is dropped and asked again.
- ``metrics.json`` (written atomically): what was run and the benchmark's official metrics.
- ``report.md``: the same as a short markdown table.

``score_predictions`` is the metric step alone, on answers made elsewhere.
"""

from __future__ import annotations

import binascii
import contextlib
import dataclasses
import io
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from tqdm import tqdm

from eval.benchmarks import IMAGE_TOKEN, Benchmark, get_benchmark
from eval.loaders import EmbeddedImage, ImageSource, Question
from eval.metrics.mme import mme_score, read_mme_results_dir
from eval.result_files import match_answers, read_result_file
from vision import ImageLoadError, load_image, to_rgb
from vlm.atomic import atomic_write_json, atomic_write_text, check_output_path, explained_write_errors, output_lock
from vlm.chat import context_length, generate, load_for_chat, prompt_length

PREDICTIONS_FILE = "predictions.jsonl"
METRICS_FILE = "metrics.json"
REPORT_FILE = "report.md"
DEFAULT_BATCH_SIZE = 8
IMAGE_MODES = ("given", "blank", "none")
"""``run_eval(images=...)``: the benchmark's images, black images of the same sizes, or none."""


@dataclass(frozen=True)
class EvalResult:
    """What one ``run_eval`` / ``score_predictions`` call produced."""

    output_dir: Path
    summary: dict[str, Any]
    """The content of metrics.json: run details, counts and ``metrics``."""
    num_generated: int
    """Questions the model answered in this call (0 when everything was answered before)."""

    @property
    def metrics(self) -> dict[str, Any]:
        return self.summary["metrics"]


# --------------------------------------------------------------------------------- generation


def generate_answers(
    model: Any, processor: Any, prompts: Sequence[str], images: Sequence[Sequence[Image.Image]], max_new_tokens: int,
    share_prefix: bool = True,
) -> list[str]:
    """Greedy replies to a batch of user prompts (``<image>`` marks, one image list per prompt).

    Each prompt becomes one user turn of the processor's chat template; generation is
    ``vlm.chat.generate`` (left-padded batch, context-length checks, the prefix that questions
    about one image share run once unless ``share_prefix`` is off). Answers are stripped.
    """
    texts = [processor.apply_chat_template([{"role": "user", "content": prompt}]) for prompt in prompts]
    with torch.inference_mode():
        answers = generate(model, processor, texts, images, max_new_tokens=max_new_tokens, share_prefix=share_prefix)
    return [answer.strip() for answer in answers]


def open_image(source: ImageSource, question_id: str) -> Image.Image:
    """An RGB image from a file or from an annotation file's embedded base64."""
    if not isinstance(source, EmbeddedImage):
        return load_image(source)
    try:
        with Image.open(io.BytesIO(source.to_bytes())) as image:
            image.load()
            return to_rgb(image)
    except (OSError, ValueError, binascii.Error) as err:
        raise ImageLoadError(f"{source.name} (question {question_id}): not a readable base64 image ({err})") from err


# ------------------------------------------------------------------------- predictions file


def read_predictions(path: str | os.PathLike, repair: bool = False) -> dict[str, dict[str, Any]]:
    """Read a predictions file into ``{id: record}``, in file order.

    Lines are JSON objects with ``id`` and ``answer`` (LLaVA's ``question_id`` and ``text`` are
    accepted too). A last line that lacks its newline and does not parse is a torn write (a
    crash mid-append) and is dropped; with ``repair`` the file is also fixed up so appending
    continues on a clean line.
    """
    path = Path(path)
    if not path.exists():
        return {}
    raw = path.read_bytes()
    end = raw.rfind(b"\n") + 1
    lines = raw[:end].decode("utf-8").splitlines()
    tail = raw[end:]
    if tail.strip():
        try:
            json.loads(tail)
            lines.append(tail.decode("utf-8"))
            fix = b"\n"  # complete, only its newline is missing
        except (json.JSONDecodeError, UnicodeDecodeError):
            fix = None  # torn: cut it, the question is asked again
        if repair:
            with open(path, "r+b") as handle:
                if fix is None:
                    handle.truncate(end)
                else:
                    handle.seek(0, os.SEEK_END)
                    handle.write(fix)
                handle.flush()
                os.fsync(handle.fileno())
    records: dict[str, dict[str, Any]] = {}
    for line_number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} line {line_number}: not valid JSON ({err}); fix or delete that line") from err
        question_id = record.get("id", record.get("question_id"))
        answer = record.get("answer", record.get("text"))
        if question_id is None or not isinstance(answer, str):
            raise ValueError(f"{path} line {line_number}: needs an 'id' and a string 'answer', got {line[:200]!r}")
        question_id = str(question_id)
        if question_id in records:
            raise ValueError(f"{path} line {line_number}: question {question_id!r} is answered twice")
        records[question_id] = {**record, "id": question_id, "answer": answer}
    return records


def _append_predictions(handle: Any, records: Sequence[dict[str, Any]]) -> None:
    """Append whole lines to an unbuffered binary ``handle``, or nothing: a failed write (disk full) is cut back."""
    data = memoryview("".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records).encode("utf-8"))
    start = os.lseek(handle.fileno(), 0, os.SEEK_END)
    try:
        while data:
            data = data[handle.write(data):]
        os.fsync(handle.fileno())  # a finished batch survives a crash of the next one
    except OSError:
        with contextlib.suppress(OSError):
            os.ftruncate(handle.fileno(), start)
        raise


# ------------------------------------------------------------------------------------ helpers


def select_questions(questions: Sequence[Question], limit: int | None) -> list[Question]:
    """The first ``limit`` items in file order; an item is a question, or a group of questions
    asked together (MMBench's rotations, MME's two questions of an image)."""
    if limit is None:
        return list(questions)
    if limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    chosen: set[str] = set()
    for question in questions:
        if len(chosen) == limit:
            break
        chosen.add(question.group_key)
    return [question for question in questions if question.group_key in chosen]


def check_images(benchmark: Benchmark, questions: Sequence[Question]) -> None:
    """Raise ``FileNotFoundError`` naming the missing image files before any model is loaded."""
    files: dict[Path, Question] = {}  # each file once, with the first question that shows it
    for question in questions:
        for source in question.images:
            if isinstance(source, Path):
                files.setdefault(source, question)
    missing = [(question, path) for path, question in files.items() if not path.is_file()]
    if missing:
        question, path = missing[0]
        raise FileNotFoundError(
            f"{benchmark.name}: {len(missing)} of {len(files)} image files are missing, e.g. {path} "
            f"(question {question.id}); looked in {path.parent}. Pass --image-root with the folder that holds "
            f"them. The {benchmark.name} data is published at {benchmark.url}"
        )


def _flatten(metrics: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    rows = []
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            rows.extend(_flatten(value, f"{name}/"))
        elif isinstance(value, (list, tuple)):
            rows.append((name, ", ".join(map(str, value)) or "-"))
        else:
            rows.append((name, value))
    return rows


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.2f}" if abs(value) >= 1 else f"{value:.4f}"
    return str(value).replace("|", "\\|")


def render_report(summary: dict[str, Any]) -> str:
    """The markdown report: what was evaluated, the counts, and every metric in one table."""
    counts = f"{summary['num_answered']} answered of {summary['num_questions']}"
    if summary.get("limit") is not None:
        counts += f" (--limit {summary['limit']}; {summary['num_total']} in the benchmark)"
    if summary.get("num_skipped"):
        counts += f"; {summary['num_skipped']} records skipped (listed in metrics.json)"
    details = [
        ("benchmark", summary["benchmark"]),
        ("model", summary.get("model") or "-"),
        ("predictions", summary["predictions"]),
        ("data", summary["data"]),
        ("questions", counts),
    ]
    if summary.get("max_new_tokens") is not None:
        details.append(("decoding", f"greedy, max {summary['max_new_tokens']} new tokens"))
    lines = [f"# {summary['benchmark']} evaluation", "", "| | |", "|---|---|"]
    lines += [f"| {label} | {_format(value)} |" for label, value in details]
    lines += ["", "## Metrics", "", "| metric | value |", "|---|---|"]
    lines += [f"| {name} | {_format(value)} |" for name, value in _flatten(summary["metrics"])]
    return "\n".join(lines) + "\n"


def _write_outputs(output_dir: Path, summary: dict[str, Any]) -> None:
    atomic_write_json(output_dir / METRICS_FILE, summary)
    atomic_write_text(output_dir / REPORT_FILE, render_report(summary))


def _score(benchmark: Benchmark, questions: Sequence[Question], answers: dict[str, str]) -> tuple[list[Question], dict]:
    answered = [question for question in questions if question.id in answers]
    if not answered:
        raise ValueError(f"none of the {len(questions)} {benchmark.name} questions has an answer to score")
    metrics = benchmark.score(answered, [answers[question.id] for question in answered])
    return answered, json.loads(json.dumps(metrics))  # as metrics.json holds them (tuples -> lists)


def _check_belongs(records: dict[str, dict[str, Any]], questions: Sequence[Question], path: Path, what: str) -> None:
    known = {question.id for question in questions}
    unknown = [question_id for question_id in records if question_id not in known]
    if unknown:
        raise ValueError(
            f"{path}: {len(unknown)} of {len(records)} answers are to questions that are not in {what}, "
            f"e.g. {unknown[:5]}; the predictions belong to another benchmark or data file"
        )


# ------------------------------------------------------------------------------------ the runs


def run_eval(
    model: str | os.PathLike | tuple[Any, Any],
    benchmark: str,
    data: str | os.PathLike,
    output: str | os.PathLike | None = None,
    *,
    image_root: str | os.PathLike | None = None,
    limit: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_new_tokens: int | None = None,
    device: str | None = None,
    dtype: str | None = None,
    images: str = "given",
    progress: bool = True,
    share_prefix: bool = True,
) -> EvalResult:
    """Answer a benchmark's questions with a model (greedy, batched), resumably, and score them.

    Args:
        model: a saved/merged VLM folder, a LoRA training output or checkpoint, a run folder
            (see :func:`vlm.loading.load_model`), or an already loaded ``(model, processor)``.
        benchmark: a name in :data:`eval.benchmarks.BENCHMARKS`.
        data: the benchmark's released file or folder (see its loader in :mod:`eval.loaders`).
        output: the output folder; default ``MODEL/eval/{benchmark}-{data name}`` (plus
            ``-{images}-images`` for an ablation). Answers
            already in its predictions.jsonl are not asked again.
        image_root: the folder holding the images, where the benchmark's default does not fit.
        limit: evaluate only the first ``limit`` items (deterministic: file order).
        batch_size: prompts per ``generate`` call.
        max_new_tokens: reply length limit; default the benchmark's.
        device, dtype: as ``vlm chat`` (default cuda if available, else cpu; bf16 weights where that device
            multiplies bf16 fast, a GPU with bf16 or a CPU with AMX, else fp32: ``vlm.precision``).
        images: ``"given"`` (the benchmark's images), or an ablation that shows how much the
            answers depend on them: ``"blank"`` (each image replaced by a black one of the same
            size) or ``"none"`` (no image at all: the image marks are removed from the prompts).
        progress: show a tqdm bar on stderr.
        share_prefix: run the prompt prefix that a batch's questions about one image share
            (system text, image tokens, the user turn's opening) once, through the KV cache
            (``vlm.shared_prefix``); off, every question runs whole (the same answers, slower).

    Raises:
        FileNotFoundError: a data file or image is missing (the message says where the
            benchmark publishes its data).
        ValueError: malformed data, or an output folder holding another evaluation's answers.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if images not in IMAGE_MODES:
        raise ValueError(f"images must be one of {', '.join(IMAGE_MODES)}, got {images!r}")
    bench = get_benchmark(benchmark)
    in_memory = isinstance(model, tuple)
    if output is None:
        if in_memory:
            raise ValueError("give an output folder when evaluating an in-memory model")
        suffix = "" if images == "given" else f"-{images}-images"
        output = Path(model) / "eval" / f"{bench.name}-{Path(data).stem}{suffix}"
    output_dir = Path(output)
    check_output_path(output_dir, "folder")
    max_new_tokens = max_new_tokens or bench.max_new_tokens

    all_questions = bench.load_questions(data, image_root)
    questions = select_questions(all_questions, limit)
    check_images(bench, questions)
    prompts = {question.id: _ablate_prompt(bench.prompt(question), images) for question in questions}

    with explained_write_errors(output_dir / PREDICTIONS_FILE):
        output_dir.mkdir(parents=True, exist_ok=True)
    # One writer per folder: two evals into it would both append every answer.
    with output_lock(output_dir, "vlm eval"):
        predictions_path = output_dir / PREDICTIONS_FILE
        done = read_predictions(predictions_path, repair=True)
        _check_belongs(done, all_questions, predictions_path, f"{bench.name} {data}")
        for question_id, record in done.items():
            if record.get("images", "given") != images:
                raise ValueError(
                    f"{predictions_path}: question {question_id} was answered with images={record.get('images', 'given')}, "
                    f"this run has images={images}; use a new output folder for this evaluation"
                )
        for question in questions:
            earlier = done.get(question.id, {}).get("prompt")
            if earlier is not None and earlier != prompts[question.id]:
                raise ValueError(
                    f"{predictions_path}: question {question.id} was asked with another prompt ({earlier!r}, now "
                    f"{prompts[question.id]!r}); use a new output folder for this evaluation"
                )
        answers = {question_id: record["answer"] for question_id, record in done.items()}
        todo = [question for question in questions if question.id not in answers]

        skipped = list(all_questions.skipped)
        if todo:
            vlm_model, processor = model if in_memory else load_for_chat(model, device=device, dtype=dtype)
            too_long = _too_long(todo, prompts, vlm_model, processor)
            skipped += [f"question {question_id}: {why}" for question_id, why in too_long.items()]
            todo = [question for question in todo if question.id not in too_long]
            questions = [question for question in questions if question.id not in too_long]
            bar = tqdm(
                total=len(questions), initial=len(questions) - len(todo), desc=bench.name, unit="q",
                file=sys.stderr, disable=not progress,
            )
            with bar, explained_write_errors(predictions_path), open(predictions_path, "ab", buffering=0) as handle:
                for start in range(0, len(todo), batch_size):
                    batch = todo[start : start + batch_size]
                    replies = _answer_batch(batch, prompts, vlm_model, processor, max_new_tokens, images, share_prefix)
                    records = [
                        {"id": question.id, "prompt": prompts[question.id], "answer": reply, "reference": question.reference}
                        | ({} if images == "given" else {"images": images})
                        for question, reply in zip(batch, replies, strict=True)
                    ]
                    _append_predictions(handle, records)
                    answers.update((question.id, reply) for question, reply in zip(batch, replies, strict=True))
                    bar.update(len(batch))
        answered, metrics = _score(bench, questions, answers)
        summary = {
            "benchmark": bench.name,
            "model": "(in-memory model)" if in_memory else str(Path(model).resolve()),
            "predictions": str(predictions_path.resolve()),
            "data": str(Path(data).resolve()),
            "image_root": None if image_root is None else str(Path(image_root).resolve()),
            "limit": limit,
            "max_new_tokens": max_new_tokens,
            "images": images,
            "num_questions": len(questions),
            "num_answered": len(answered),
            "num_total": len(all_questions),
            "num_skipped": len(skipped),
            "skipped": skipped[:MAX_SKIPPED_LISTED],
            "metrics": metrics,
        }
        _write_outputs(output_dir, summary)
        return EvalResult(output_dir, summary, num_generated=len(todo))


MAX_SKIPPED_LISTED = 100
"""metrics.json lists the first this many skipped records (``num_skipped`` counts them all)."""


def _too_long(questions: Sequence[Question], prompts: dict[str, str], model: Any, processor: Any) -> dict[str, str]:
    """Id -> why, for the questions whose chat prompt (each image as its placeholder tokens) leaves the model no room to answer."""
    limit = context_length(model)
    if limit is None:
        return {}
    result = {}
    for question in questions:
        content = prompts[question.id].replace(IMAGE_TOKEN, processor.image_token)
        text = processor.apply_chat_template([{"role": "user", "content": content}])
        tokens = prompt_length(processor, text)
        if tokens >= limit:
            result[question.id] = f"the prompt is {tokens} tokens, the model's context {limit}"
    return result


def _ablate_prompt(prompt: str, images: str) -> str:
    """The prompt without its image marks (and the line breaks after them) when images="none"."""
    if images != "none":
        return prompt
    return prompt.replace(IMAGE_TOKEN + "\n", "").replace(IMAGE_TOKEN, "").strip()


def _answer_batch(
    batch: Sequence[Question], prompts: dict[str, str], model: Any, processor: Any, max_new_tokens: int,
    images: str = "given", share_prefix: bool = True,
) -> list[str]:
    # Benchmarks write "<image>"; a processor may use another mark.
    texts = [prompts[question.id].replace(IMAGE_TOKEN, processor.image_token) for question in batch]
    if images == "none":
        pictures: list[list[Image.Image]] = [[] for _ in batch]
    else:
        pictures = [[open_image(source, question.id) for source in question.images] for question in batch]
    if images == "blank":
        pictures = [[Image.new("RGB", picture.size) for picture in row] for row in pictures]
    return generate_answers(model, processor, texts, pictures, max_new_tokens, share_prefix)


def score_predictions(
    predictions: str | os.PathLike,
    benchmark: str,
    data: str | os.PathLike | None,
    output: str | os.PathLike | None = None,
    *,
    image_root: str | os.PathLike | None = None,
    limit: int | None = None,
    fmt: str | None = None,
) -> EvalResult:
    """Score a predictions file against a benchmark's released data, as the file is.

    ``predictions``: our predictions.jsonl, LLaVA's answer files (``question_id`` / ``text``), the
    official VQA results list or NLVR's CSV (see :mod:`eval.result_files`; ``fmt`` chooses the format
    instead of detecting it), or for MME the eval tool's results folder (then ``data`` may be None).
    Writes metrics.json and report.md into ``output`` (default: the predictions file's folder).
    Questions without an answer are left out of the metrics and counted in the report; an answer
    to a question that is not in the data is an error. Images are not needed.
    """
    bench = get_benchmark(benchmark)
    predictions_path = Path(predictions)
    if predictions_path.is_dir():
        if bench.name != "mme":
            raise ValueError(f"{predictions_path} is a folder; only MME's eval-tool results folder is scored as one")
        return score_mme_results(predictions_path, output)
    if not predictions_path.is_file():
        raise FileNotFoundError(f"{predictions_path}: no such predictions file")
    if data is None:
        raise ValueError(f"{bench.name}: give --data, the benchmark's released file or folder, to score against")
    output_dir = Path(output) if output is not None else predictions_path.parent
    all_questions = bench.load_questions(data, image_root, need_images=False)
    questions = select_questions(all_questions, limit)
    records, found_format = read_result_file(predictions_path, fmt)
    answers = match_answers(records, all_questions, bench.name, predictions_path, f"{bench.name} {data}")
    answered, metrics = _score(bench, questions, answers)
    summary = {
        "benchmark": bench.name,
        "model": None,
        "predictions": str(predictions_path.resolve()),
        "format": found_format,
        "data": str(Path(data).resolve()),
        "image_root": None if image_root is None else str(Path(image_root).resolve()),
        "limit": limit,
        "max_new_tokens": None,
        "num_questions": len(questions),
        "num_answered": len(answered),
        "num_total": len(all_questions),
        "num_skipped": len(all_questions.skipped),
        "skipped": all_questions.skipped[:MAX_SKIPPED_LISTED],
        "metrics": metrics,
    }
    with explained_write_errors(output_dir / METRICS_FILE):
        output_dir.mkdir(parents=True, exist_ok=True)
    _write_outputs(output_dir, summary)
    return EvalResult(output_dir, summary, num_generated=0)


def score_mme_results(results_dir: str | os.PathLike, output: str | os.PathLike | None = None) -> EvalResult:
    """Score the MME eval tool's results folder (``<subtask>.txt``: image, question, gold, prediction per line)
    with the official metric; it holds its own questions and answers, so no data and no images are needed."""
    results_dir = Path(results_dir)
    questions = read_mme_results_dir(results_dir)
    unanswered = [q for q in questions if q.prediction is None]
    if unanswered:
        q = unanswered[0]
        raise ValueError(
            f"{results_dir / (q.subtask + '.txt')}: {len(unanswered)} lines have no prediction (4th field), e.g. "
            f"{q.image_name} {q.question!r}; is this the eval tool's Your_Results folder after answering?"
        )
    metrics = json.loads(json.dumps(dataclasses.asdict(mme_score(questions))))
    output_dir = Path(output) if output is not None else results_dir
    summary = {
        "benchmark": "mme", "model": None, "predictions": str(results_dir.resolve()), "format": "mme-results",
        "data": str(results_dir.resolve()), "image_root": None, "limit": None, "max_new_tokens": None,
        "num_questions": len(questions), "num_answered": len(questions), "num_total": len(questions), "metrics": metrics,
    }
    with explained_write_errors(output_dir / METRICS_FILE):
        output_dir.mkdir(parents=True, exist_ok=True)
    _write_outputs(output_dir, summary)
    return EvalResult(output_dir, summary, num_generated=0)
