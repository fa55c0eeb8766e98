"""Our synthetic shapes benchmark: ``eval.json`` of ``vlm data shapes``."""

from __future__ import annotations

from pathlib import Path

from eval.loaders.common import SHAPES_HOW, Question, read_json, require_fields


def load_shapes(data: Path, image_root: Path | None) -> list[Question]:
    """Our synthetic benchmark's ``eval.json`` (from ``vlm data shapes``): a list of
    ``{"id", "image", "question", "answer", "task"}``; ``image`` is relative to the file's
    folder (or to ``--image-root``)."""
    data = Path(data).resolve()
    path = data / "eval.json" if data.is_dir() else data
    records = read_json(path, "shapes eval split", SHAPES_HOW)
    if not isinstance(records, list):
        raise ValueError(f"{path}: expected a list of eval records (eval.json of `vlm data shapes`)")
    root = Path(image_root).resolve() if image_root is not None else path.parent
    result = []
    for index, record in enumerate(records):
        require_fields(record, ("id", "image", "question", "answer", "task"), f"{path} record {index}")
        result.append(
            Question(
                id=str(record["id"]),
                text=record["question"],
                images=(root / record["image"],),
                reference=record["answer"],
                meta={"task": record["task"]},
            )
        )
    return result
