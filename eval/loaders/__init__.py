"""Benchmark loaders: the released files of each benchmark, read into one :class:`Question` list.

A loader takes the path the user gives (``--data``) and an optional image folder
(``--image-root``) and returns the questions in file order. It reads only the annotation files:
images are located, not opened (the runner checks they exist before it loads a model, and
``vlm eval --score`` needs no images at all). A missing file raises ``FileNotFoundError`` naming
the file, where it was looked for and where the benchmark publishes it (the ``*_URL`` constants).

Each loader documents the layout it reads; the defaults for the image folder follow the
layout of the official downloads.

One module per benchmark family, as in :mod:`eval.metrics`; ``common`` holds ``Question`` and the
shared reading helpers.
"""

from eval.loaders.caption import load_coco_captions
from eval.loaders.common import (
    COCO_URL,
    COCO_VAL2014_IMAGES_URL,
    GQA_URL,
    MMBENCH_URL,
    MME_URL,
    OKVQA_URL,
    POPE_URL,
    SCIENCEQA_URL,
    SHAPES_HOW,
    TEXTVQA_URL,
    VIZWIZ_URL,
    VQAV2_URL,
    EmbeddedImage,
    ImageSource,
    Question,
    Questions,
)
from eval.loaders.gqa import load_gqa
from eval.loaders.mmbench import load_mmbench
from eval.loaders.mme import load_mme
from eval.loaders.nlvr import load_nlvr
from eval.loaders.pope import load_pope
from eval.loaders.scienceqa import load_scienceqa
from eval.loaders.shapes import load_shapes
from eval.loaders.vqa import load_okvqa, load_textvqa, load_vizwiz, load_vqa
from eval.nlvr import NLVR_URL

__all__ = [
    "COCO_URL",
    "COCO_VAL2014_IMAGES_URL",
    "GQA_URL",
    "MMBENCH_URL",
    "MME_URL",
    "NLVR_URL",
    "OKVQA_URL",
    "POPE_URL",
    "SCIENCEQA_URL",
    "SHAPES_HOW",
    "TEXTVQA_URL",
    "VIZWIZ_URL",
    "VQAV2_URL",
    "EmbeddedImage",
    "ImageSource",
    "Question",
    "Questions",
    "load_coco_captions",
    "load_gqa",
    "load_mmbench",
    "load_mme",
    "load_nlvr",
    "load_okvqa",
    "load_pope",
    "load_scienceqa",
    "load_shapes",
    "load_textvqa",
    "load_vizwiz",
    "load_vqa",
]
