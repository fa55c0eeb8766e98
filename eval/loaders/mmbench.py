"""MMBench: multiple choice from VLMEvalKit's TSVs (images embedded), asked in circular rotations."""

from __future__ import annotations

import csv
import sys
from pathlib import Path
from typing import Any

from eval.loaders.common import MMBENCH_URL, EmbeddedImage, Question, missing_file, require_fields
from eval.metrics.mmbench import circular_rotations, present_options

# MMBench releases with circular copies built in (VLMEvalKit's TSVs) number the copies
# index + k * 1_000_000; the copies are skipped and the rotations made here instead.
_MMBENCH_COPY_OFFSET = 1_000_000
# VLMEvalKit's TSVs store an image once; other rows hold the index of the row that has it.
_MMBENCH_IMAGE_REFERENCE_MAX_LEN = 64


def _read_tsv(path: Path) -> list[dict[str, Any]]:
    # Base64 images overflow csv's default 128 KiB field limit.
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    with open(path, encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    # pandas (which LLaVA reads the TSV with) turns empty cells into NaN; None is our NaN.
    return [{key: (None if value == "" else value) for key, value in row.items()} for row in rows]


def load_mmbench(data: Path, image_root: Path | None) -> list[Question]:
    """MMBench's released TSV (e.g. ``mmbench_dev_20230712.tsv``): columns ``index``, ``question``,
    ``hint``, ``A``-``D``, ``answer``, ``category``, ``l2-category``, ``image`` (base64).

    Each question becomes one prompt per rotation of its options (circular evaluation,
    :func:`eval.metrics.circular_rotations`), ids ``{index}-r{round}``, grouped by index. Rows
    numbered ``>= 1,000,000`` (circular copies that VLMEvalKit's TSVs carry) are skipped, as
    the rotations are made here. Images are in the TSV; ``--image-root`` is not used.
    """
    data = Path(data).resolve()
    if not data.is_file():
        raise missing_file("MMBench TSV", data, MMBENCH_URL, "Pass the released .tsv file, e.g. mmbench_dev_20230712.tsv.")
    rows = _read_tsv(data)
    required = ("index", "question", "A", "B", "image", "category")
    if rows:
        require_fields(rows[0], required, f"{data} (header)")
        if "answer" not in rows[0]:
            raise ValueError(f"{data} has no 'answer' column; MMBench's test TSV is scored by its server, use the dev TSV")
    images = {row["index"]: row["image"] for row in rows}
    result = []
    for line_number, row in enumerate(rows, start=2):
        index = int(row["index"])
        if index >= _MMBENCH_COPY_OFFSET:
            continue
        where = f"{data} line {line_number} (index {index})"
        image = row["image"]
        if image is not None and len(image) <= _MMBENCH_IMAGE_REFERENCE_MAX_LEN:
            image = images.get(image)  # a reference to the row that stores the image
        if not image:
            raise ValueError(f"{where}: no image")
        try:
            rotations = circular_rotations(present_options(row), row["answer"])
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from err
        for rotation in rotations:
            result.append(
                Question(
                    id=f"{index}-r{rotation.round_index}",
                    text=row["question"],
                    images=(EmbeddedImage(f"{data.name} index {index}", image),),
                    reference=rotation.answer,
                    meta={
                        "index": index,
                        "hint": row.get("hint"),
                        "options": list(rotation.options),
                        "category": row["category"],
                        "l2_category": row.get("l2-category"),
                    },
                    group=str(index),
                )
            )
    return result
