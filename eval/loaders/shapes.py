"""Our synthetic shapes benchmark: ``eval.json`` of ``vlm data shapes``."""

from __future__ import annotations

from pathlib import Path

from eval.loaders.common import (
    SHAPES_HOW,
    BadRecord,
    Question,
    Questions,
    article,
    read_json,
    require_fields,
    text_field,
)


def load_shapes(data: Path, image_root: Path | None) -> Questions:
    """Our synthetic benchmark's ``eval.json`` (from ``vlm data shapes``): a list of
    ``{"id", "image", "question", "answer", "task"}``; ``image`` is relative to the file's
    folder (or to ``--image-root``). It is also the format for a question set of one's own, so a
    record that is not an object, lacks a field or holds a null / non-text value is skipped and
    counted (``Questions.skipped``), not asked as "None"."""
    data = Path(data).resolve()
    path = data / "eval.json" if data.is_dir() else data
    records = read_json(path, "shapes eval split", SHAPES_HOW)
    if not isinstance(records, list):
        raise ValueError(f"{path}: expected a list of eval records (eval.json of `vlm data shapes`)")
    root = Path(image_root).resolve() if image_root is not None else path.parent
    result = Questions()
    for index, record in enumerate(records):
        where = f"{path.name} record {index}"
        try:
            if not isinstance(record, dict):
                raise BadRecord(f"{where}: {article(type(record).__name__)}, not an object with id, image, question, answer, task")
            try:
                require_fields(record, ("id", "image", "question", "answer", "task"), where)
            except ValueError as err:
                raise BadRecord(str(err)) from err
            question = Question(
                id=text_field(record, "id", where, allow_int=True),
                text=text_field(record, "question", where),
                images=(root / text_field(record, "image", where),),
                reference=text_field(record, "answer", where),
                meta={"task": text_field(record, "task", where)},
            )
        except BadRecord as err:
            result.skipped.append(str(err))
            continue
        result.append(question)
    return result
