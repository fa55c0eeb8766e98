"""VQAv2, OK-VQA, VizWiz and TextVQA: open-ended questions with ten human answers each."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from eval.loaders.common import (
    OKVQA_URL,
    TEXTVQA_URL,
    VIZWIZ_URL,
    VQAV2_URL,
    Question,
    find_image_root,
    missing_file,
    read_json,
    require_fields,
)


def _answers(raw: Sequence[Any]) -> list[str]:
    # VQAv2 / OK-VQA / VizWiz answers are {"answer": ..., "answer_confidence": ...}; TextVQA's are strings.
    return [item["answer"] if isinstance(item, Mapping) else str(item) for item in raw]


def _find_one(folder: Path, patterns: Sequence[str], subfolders: Sequence[str]) -> list[Path]:
    found: list[Path] = []
    for sub in ("", *subfolders):
        for pattern in patterns:
            found.extend(sorted((folder / sub).glob(pattern)))
    return list(dict.fromkeys(found))


def _vqa_files(data: Path, url: str) -> tuple[Path, Path]:
    """The questions file and its annotations file from a folder or a questions file."""
    if data.is_file():
        questions = data
        # v2_OpenEnded_mscoco_val2014_questions.json -> v2_mscoco_val2014_annotations.json (VQAv2);
        # OpenEnded_mscoco_val2014_questions.json -> mscoco_val2014_annotations.json (OK-VQA).
        name = data.name.replace("OpenEnded_", "").replace("_questions", "_annotations")
        candidates = [data.parent / name, data.parent.parent / "Annotations" / name]
        annotations = next((c for c in candidates if c.is_file()), None)
        if annotations is None:
            raise FileNotFoundError(
                f"VQA annotations for {data.name}: looked for {candidates[0]} and {candidates[1]}, "
                f"neither exists. Pass --data a folder holding both the questions and the annotations "
                f"file. The data is published at {url}"
            )
        return questions, annotations
    if not data.is_dir():
        raise missing_file("VQA data", data, url, "Pass the questions JSON file or a folder holding it and its annotations.")
    found = {}
    for kind, subfolder in (("questions", "Questions"), ("annotations", "Annotations")):
        matches = _find_one(data, [f"*{kind}*.json"], [subfolder])
        if len(matches) != 1:
            listing = [str(m) for m in matches] or "none"
            raise FileNotFoundError(
                f"VQA data folder {data}: expected exactly one *{kind}*.json in it or in {subfolder}/, found "
                f"{listing}. Pass --data the questions file to choose. The data is published at {url}"
            )
        found[kind] = matches[0]
    return found["questions"], found["annotations"]


def load_vqa(data: Path, image_root: Path | None, url: str = VQAV2_URL) -> list[Question]:
    """VQAv2 / OK-VQA in the official VQA format: a questions file and an annotations file.

    ``data``: the questions file (``v2_OpenEnded_mscoco_val2014_questions.json``; the annotations
    ``v2_mscoco_val2014_annotations.json`` are found beside it or in ``../Annotations``), or a
    folder holding one of each (directly or in ``Questions/`` and ``Annotations/``).
    Images: ``COCO_{data_subtype}_{image_id:012d}.jpg`` in ``--image-root``, by default the
    ``{data_subtype}`` folder (e.g. ``val2014``) beside the files. Questions come in the
    questions file's order; each carries its 10 answers and its answer_type.
    """
    data = Path(data).resolve()
    questions_path, annotations_path = _vqa_files(data, url)
    questions_file = read_json(questions_path, "VQA questions", url)
    annotations_file = read_json(annotations_path, "VQA annotations", url)
    if "questions" not in questions_file:
        raise ValueError(f"{questions_path}: no 'questions' list; is it a VQA questions file?")
    if "annotations" not in annotations_file:
        raise ValueError(f"{annotations_path}: no 'annotations' list; is it a VQA annotations file?")
    annotations = {a["question_id"]: a for a in annotations_file["annotations"]}
    subtype = questions_file.get("data_subtype", "val2014")
    root = find_image_root(image_root, questions_path.parent, subtype, "Images/mscoco/" + subtype)
    result = []
    for index, record in enumerate(questions_file["questions"]):
        require_fields(record, ("question_id", "image_id", "question"), f"{questions_path} question {index}")
        annotation = annotations.get(record["question_id"])
        if annotation is None:
            raise ValueError(
                f"{annotations_path}: no annotation for question {record['question_id']} of {questions_path}; "
                "the two files must be the same split (test splits have no public annotations)"
            )
        result.append(
            Question(
                id=str(record["question_id"]),
                text=record["question"],
                images=(root / f"COCO_{subtype}_{int(record['image_id']):012d}.jpg",),
                reference=_answers(annotation["answers"]),
                meta={"answer_type": annotation.get("answer_type")},
            )
        )
    return result


def load_okvqa(data: Path, image_root: Path | None) -> list[Question]:
    """OK-VQA: the VQA format of :func:`load_vqa` (``OpenEnded_mscoco_val2014_questions.json`` +
    ``mscoco_val2014_annotations.json``), COCO val2014 images."""
    return load_vqa(data, image_root, url=OKVQA_URL)


def load_vizwiz(data: Path, image_root: Path | None) -> list[Question]:
    """VizWiz-VQA as released: ``val.json`` (or ``train.json``), a list of
    ``{"image", "question", "answers": [10 x {"answer", "answer_confidence"}], "answer_type", "answerable"}``.

    ``data``: the JSON file, or the folder holding ``val.json``. Images: ``--image-root``, by
    default the folder named like the file (``val/``) beside it. The id is the image name
    (VizWiz asks one question per image).
    """
    data = Path(data).resolve()
    path = data / "val.json" if data.is_dir() else data
    records = read_json(path, "VizWiz annotations", VIZWIZ_URL)
    if not isinstance(records, list):
        raise ValueError(f"{path}: expected a list of VizWiz records")
    root = find_image_root(image_root, path.parent, path.stem)
    result = []
    for index, record in enumerate(records):
        where = f"{path} record {index}"
        require_fields(record, ("image", "question"), where)
        if "answers" not in record:
            raise ValueError(
                f"{where}: no answers; VizWiz's test split is scored by its EvalAI server, score val.json here"
            )
        result.append(
            Question(
                id=Path(record["image"]).stem,
                text=record["question"],
                images=(root / record["image"],),
                reference=_answers(record["answers"]),
                meta={"answer_type": record.get("answer_type")},
            )
        )
    return result


def load_textvqa(data: Path, image_root: Path | None) -> list[Question]:
    """TextVQA as released: ``TextVQA_0.5.1_val.json`` = ``{"data": [{"question_id", "question",
    "image_id", "answers": [10 strings], ...}]}``.

    ``data``: the JSON file, or the folder holding it. Images: ``{image_id}.jpg`` in
    ``--image-root``, by default ``train_images/`` beside the file (the val images ship in
    ``train_val_images.zip``).
    """
    data = Path(data).resolve()
    path = data / "TextVQA_0.5.1_val.json" if data.is_dir() else data
    content = read_json(path, "TextVQA annotations", TEXTVQA_URL)
    if "data" not in content:
        raise ValueError(f"{path}: no 'data' list; is it TextVQA_0.5.1_val.json?")
    root = find_image_root(image_root, path.parent, "train_images")
    result = []
    for index, record in enumerate(content["data"]):
        where = f"{path} record {index}"
        require_fields(record, ("question_id", "question", "image_id"), where)
        if "answers" not in record:
            raise ValueError(f"{where}: no answers; the TextVQA test split is scored by its EvalAI server")
        result.append(
            Question(
                id=str(record["question_id"]),
                text=record["question"],
                images=(root / f"{record['image_id']}.jpg",),
                reference=_answers(record["answers"]),
                meta={"image_id": record["image_id"]},  # LLaVA's TextVQA answers are keyed by it
            )
        )
    return result
