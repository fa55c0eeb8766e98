"""NLVR v1: one true/false question per PNG rendering."""

from __future__ import annotations

from pathlib import Path

from eval.loaders.common import Question
from eval.nlvr import load_nlvr_split


def load_nlvr(data: Path, image_root: Path | None, need_images: bool = True) -> list[Question]:
    """An NLVR v1 split folder (``dev/`` or ``test/``), read by :func:`eval.nlvr.load_nlvr_split`:
    one question per PNG rendering, id = the PNG's stem. Images are in the split folder (not
    needed for scoring, ``need_images=False``)."""
    return [
        Question(
            id=example.image_id,
            text=example.sentence,
            images=(example.image_path,),
            reference="true" if example.label else "false",
            meta={"example": example},
        )
        for example in load_nlvr_split(data, require_images=need_images)
    ]
