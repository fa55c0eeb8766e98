"""COCO captions (Karpathy test split, five references per image)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from eval.loaders.common import COCO_URL, Question, find_image_root, read_json, require_fields


def load_coco_captions(data: Path, image_root: Path | None) -> list[Question]:
    """A COCO-format captions file (``captions_val2014.json``, or a Karpathy test split in COCO
    format such as ``coco_karpathy_test_gt.json``): ``{"images": [{"id", "file_name"}],
    "annotations": [{"image_id", "caption"}]}``.

    One question per image with captions, in the ``images`` order (annotation order when the
    file has no ``images``). Images: ``file_name`` in ``--image-root``, by default ``val2014/``
    beside the file or one folder up; without ``file_name`` the val2014 name
    ``COCO_val2014_{id:012d}.jpg`` is used (the Karpathy test images all come from val2014).
    """
    data = Path(data).resolve()
    content = read_json(data, "COCO captions annotations", COCO_URL)
    if "annotations" not in content:
        raise ValueError(f"{data}: no 'annotations' list; expected a COCO captions file such as captions_val2014.json")
    references: dict[Any, list[str]] = {}
    for index, annotation in enumerate(content["annotations"]):
        require_fields(annotation, ("image_id", "caption"), f"{data} annotation {index}")
        references.setdefault(annotation["image_id"], []).append(annotation["caption"])
    file_names = {image["id"]: image.get("file_name") for image in content.get("images", [])}
    order = [image_id for image_id in file_names if image_id in references] or list(references)
    root = find_image_root(image_root, data.parent, "val2014")
    return [
        Question(
            id=str(image_id),
            text="",
            images=(root / (file_names.get(image_id) or f"COCO_val2014_{int(image_id):012d}.jpg"),),
            reference=references[image_id],
        )
        for image_id in order
    ]
