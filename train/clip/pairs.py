"""Image-caption pairs for open_clip_train: LLaVA captions.json -> its CSV (filepath <TAB> title)."""

from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path

from vlm.atomic import atomic_file

CSV_IMAGE_KEY = "filepath"  # open_clip_train's default --csv-img-key
CSV_CAPTION_KEY = "title"  # open_clip_train's default --csv-caption-key
CSV_SEPARATOR = "\t"  # open_clip_train's default --csv-separator


def write_clip_csv(
    captions_json: str | os.PathLike,
    image_root: str | os.PathLike | None,
    out_csv: str | os.PathLike,
    separator: str = CSV_SEPARATOR,
    drop_words: Sequence[str] = (),
) -> Path:
    """Turn a LLaVA-format captions file into open_clip_train's CSV, atomically.

    Each record's image becomes an absolute ``filepath`` (open_clip opens it relative to its
    working directory) and its first ``gpt`` turn, stripped, the ``title``. Fields are quoted as
    needed, so captions holding the separator or quotes survive pandas' ``read_csv``.

    Args:
        captions_json: a JSON list of ``{"image": ..., "conversations": [{"from": "human", ...},
            {"from": "gpt", "value": caption}]}`` records (``write_shapes_dataset``'s captions.json).
        image_root: the folder the records' image paths are relative to; ``None`` means the
            captions file's own folder (the shapes layout).
        out_csv: the CSV to write.
        separator: the field separator; pass the same to ``train_clip`` (open_clip's
            ``--csv-separator``, tab by default).
        drop_words: whole words (case-insensitive) removed from every caption. A contrastive
            objective learns only what it needs to tell a batch's captions apart: on the shapes
            captions, colour names alone almost always suffice, so the tower learns colour and
            loses shape. Dropping the colour names makes it tell scenes apart by shape, size,
            count and position; colour stays readable from the patch tokens of any tower.

    Returns:
        ``out_csv`` as a Path.
    """
    captions_json = Path(captions_json)
    image_root = (Path(image_root) if image_root is not None else captions_json.parent).absolute()
    records = json.loads(captions_json.read_text(encoding="utf-8"))
    drop = re.compile(r"\b(?:" + "|".join(map(re.escape, drop_words)) + r")\b *", re.IGNORECASE) if drop_words else None
    if not isinstance(records, list) or not records:
        raise ValueError(f"{captions_json}: expected a non-empty JSON list of LLaVA records")
    rows = []
    for i, record in enumerate(records):
        where = f"record {i} (id {record.get('id', '?')!r}) in {captions_json}"
        if not record.get("image"):
            raise ValueError(f"{where} has no 'image'; a CLIP needs an image for every caption")
        if not isinstance(record["image"], str):
            raise ValueError(f"{where}: 'image' must be one path, got {record['image']!r}")
        caption = next(
            (turn.get("value") for turn in record.get("conversations", []) if turn.get("from") == "gpt"), None
        )
        if not caption or not caption.strip():
            raise ValueError(f"{where} has no 'gpt' turn with a caption")
        image = image_root / record["image"]
        if not image.is_file():
            raise FileNotFoundError(f"{where}: image {record['image']} not found under {image_root}")
        caption = caption.strip()
        if drop is not None:
            caption = drop.sub("", caption).strip()
            if not caption:
                raise ValueError(f"{where}: nothing of the caption is left after dropping {list(drop_words)}")
        rows.append((str(image), caption))
    with atomic_file(out_csv, "w") as handle:
        writer = csv.writer(handle, delimiter=separator, lineterminator="\n")
        writer.writerow((CSV_IMAGE_KEY, CSV_CAPTION_KEY))
        writer.writerows(rows)
    return Path(out_csv)


def count_csv_rows(path: Path, separator: str) -> int:
    import pandas as pd  # what open_clip's CsvDataset reads the file with

    if not path.is_file():
        raise FileNotFoundError(f"CLIP training CSV {path} not found; write it with write_clip_csv")
    frame = pd.read_csv(path, sep=separator)
    missing = [key for key in (CSV_IMAGE_KEY, CSV_CAPTION_KEY) if key not in frame.columns]
    if missing:
        raise ValueError(f"{path}: columns {list(frame.columns)} lack {missing} (separator {separator!r})")
    return len(frame)
