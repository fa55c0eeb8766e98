"""POPE: yes/no questions on the presence of COCO objects, three sampling splits."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from eval.loaders.common import (
    COCO_VAL2014_IMAGES_URL,
    POPE_URL,
    Question,
    find_image_root,
    missing_file,
    read_json_lines,
    require_fields,
)

POPE_SPLIT_FILES = ("coco_pope_random.json", "coco_pope_popular.json", "coco_pope_adversarial.json")


def load_pope(data: Path, image_root: Path | None) -> list[Question]:
    """POPE's COCO files: ``coco_pope_{random,popular,adversarial}.json``, one
    ``{"question_id", "image", "text", "label"}`` per line.

    ``data``: the folder holding the split files (all present are read, in the order random,
    popular, adversarial), or one split file. Images: COCO val2014 in ``--image-root``, by
    default ``val2014/`` beside the files. Ids are ``{split}-{question_id}`` (each split
    numbers its questions from 1).
    """
    data = Path(data).resolve()
    if data.is_file() and _is_llava_pope(data):
        return _load_llava_pope(data, image_root)
    if data.is_file():
        paths = [data]
    elif data.is_dir():
        paths = [data / name for name in POPE_SPLIT_FILES if (data / name).is_file()]
        if not paths:
            raise FileNotFoundError(
                f"POPE: none of {', '.join(POPE_SPLIT_FILES)} in {data}. The data is published at {POPE_URL} "
                f"(images: COCO val2014, {COCO_VAL2014_IMAGES_URL})"
            )
    else:
        raise missing_file("POPE data", data, POPE_URL, "Pass the folder holding coco_pope_*.json or one of them.")
    root = find_image_root(image_root, paths[0].parent, "val2014")
    result = []
    for path in paths:
        split = path.stem.removeprefix("coco_pope_")
        for index, record in enumerate(read_json_lines(path, "POPE questions", POPE_URL)):
            require_fields(record, ("question_id", "image", "text", "label"), f"{path} record {index}")
            result.append(
                Question(
                    id=f"{split}-{record['question_id']}",
                    text=record["text"],
                    images=(root / record["image"],),
                    reference=record["label"],
                    meta={"split": split},
                )
            )
    return result


def _is_llava_pope(path: Path) -> bool:
    with open(path, "rb") as handle:
        first = handle.readline()
    try:
        record = json.loads(first)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False
    return isinstance(record, dict) and "category" in record and "label" not in record


def _load_llava_pope(path: Path, image_root: Path | None) -> list[Question]:
    records = read_json_lines(path, "LLaVA POPE questions", POPE_URL)
    folder = next((f for f in (path.parent / "coco", path.parent) if any((f / n).is_file() for n in POPE_SPLIT_FILES)), None)
    if folder is None:
        raise FileNotFoundError(
            f"POPE: {path} is LLaVA's question file; its labels are read from coco/coco_pope_<category>.json beside it, "
            f"and there is none in {path.parent / 'coco'} or {path.parent}. The data is published at {POPE_URL}"
        )
    labels: dict[str, list[dict[str, Any]]] = {}
    root = find_image_root(image_root, path.parent, "val2014")
    result, seen = [], {}
    for index, record in enumerate(records):
        where = f"{path} record {index}"
        require_fields(record, ("question_id", "image", "text", "category"), where)
        split = str(record["category"])
        if split not in labels:
            labels[split] = read_json_lines(folder / f"coco_pope_{split}.json", f"POPE {split} labels", POPE_URL)
        position = seen[split] = seen.get(split, -1) + 1
        if position >= len(labels[split]) or labels[split][position].get("image") != record["image"]:
            raise ValueError(
                f"{where}: question {position + 1} of category {split} does not line up with line {position + 1} of "
                f"{folder / f'coco_pope_{split}.json'} (another image); use the label files LLaVA's question file was made from"
            )
        text = str(record["text"]).removesuffix("\nAnswer the question using a single word or phrase.")
        result.append(Question(id=str(record["question_id"]), text=text, images=(root / record["image"],),
                               reference=labels[split][position]["label"], meta={"split": split}))
    return result
