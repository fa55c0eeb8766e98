"""POPE: yes/no questions on the presence of COCO objects, three sampling splits."""

from __future__ import annotations

from pathlib import Path

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
