"""The patch tokens `benchmarks.learnability` trains on: a tower's, perfect (oracle) ones, the scene in words.

The oracle: each patch that a shape's box covers holds one-hot entries for that shape's colour,
kind and size, the 3x3 cell of the image it lies in, and a flag on the patch of the shape's centre
(one per shape, so counting is reading flags).
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

import torch
from PIL import Image
from tqdm import tqdm

from eval.shapes import (
    COLORS,
    IMAGE_SIZE,
    KINDS,
    POSITIONS,
    SIZES,
    Scene,
    SceneConfig,
    make_caption,
    sample_scene,
    scene_seed,
)
from vlm.modeling import VLMForCausalLM
from vlm.processing import VLMProcessor

PATCH = 16
GRID = IMAGE_SIZE // PATCH  # 14 x 14 = 196 patches


def scene_of(stem: str, max_shapes: int) -> Scene:
    """The scene the shapes image ``stem`` (``train_s0_000012``: split, base seed, index) was drawn from."""
    split, seed, index = stem.split("_")
    return sample_scene(scene_seed(int(seed[1:]), split, int(index)), SceneConfig(max_shapes=max_shapes))


def scene_text(stem: str, max_shapes: int) -> str:
    """The scene as one sentence naming every shape's size, colour, kind and position (``--tokens text``)."""
    scene = scene_of(stem, max_shapes)
    return make_caption(scene, random.Random(f"learnability/{scene.seed}"))


def patch_cell(row: int, col: int) -> int:
    """The 3x3 image cell (an index into POSITIONS) that holds the centre of patch (row, col)."""
    return ((row * PATCH + PATCH // 2) * 3 // IMAGE_SIZE) * 3 + (col * PATCH + PATCH // 2) * 3 // IMAGE_SIZE


def oracle_tokens(stem: str, max_shapes: int, width: int) -> torch.Tensor:
    """Perfect ``(196, width)`` patch tokens for the shapes image ``stem``."""
    scene = scene_of(stem, max_shapes)
    colors, sizes = list(COLORS), list(SIZES)
    offsets = {"color": 0, "kind": len(colors), "size": len(colors) + len(KINDS)}
    cell_offset = offsets["size"] + len(sizes)
    centre_channel = cell_offset + len(POSITIONS)
    if centre_channel + 1 > width:
        raise ValueError(f"oracle tokens need {centre_channel + 1} channels, the tower gives {width}")
    tokens = torch.zeros(GRID, GRID, width)
    for shape in scene.shapes:  # drawing order: a later shape covers an earlier one
        left, top, right, bottom = shape.box
        for row in range(top // PATCH, bottom // PATCH + 1):
            for col in range(left // PATCH, right // PATCH + 1):
                tokens[row, col] = 0.0
                tokens[row, col, offsets["color"] + colors.index(shape.color)] = 1.0
                tokens[row, col, offsets["kind"] + KINDS.index(shape.kind)] = 1.0
                tokens[row, col, offsets["size"] + sizes.index(shape.size)] = 1.0
                cell = patch_cell(row, col)
                tokens[row, col, cell_offset + cell] = 1.0
    for shape in scene.shapes:
        tokens[shape.cy // PATCH, shape.cx // PATCH, centre_channel] = 1.0
    return tokens.reshape(GRID * GRID, width)


ORACLE_WORDS = [*COLORS, *KINDS, *SIZES, *POSITIONS, "shape"]
"""The word each oracle channel stands for, in channel order (the last: the centre flag)."""


@torch.no_grad()
def word_projector(model: VLMForCausalLM, processor: VLMProcessor) -> None:
    """Set a linear projector so each oracle channel maps to its word's input embedding (mean over its tokens).

    An oracle patch token then enters the LLM as the sum of the embeddings of the words that
    describe it (" red" + " circle" + " small" + " top left"): the image read as a bag of words.
    """
    linears = [m for m in model.projector.modules() if isinstance(m, torch.nn.Linear)]
    if len(linears) != 1:
        raise ValueError("--projector oracle-words needs the linear projector")
    linear = linears[0]
    table = model.language_model.get_input_embeddings().weight
    linear.weight.zero_()
    if linear.bias is not None:
        linear.bias.zero_()
    for channel, word in enumerate(ORACLE_WORDS):
        ids = processor.tokenizer(" " + word, add_special_tokens=False)["input_ids"]
        linear.weight[:, channel] = table[ids].mean(0)


@torch.no_grad()
def tower_tokens(model: VLMForCausalLM, processor: VLMProcessor, paths: list[Path], batch: int = 32) -> dict[str, torch.Tensor]:
    """The model's frozen vision tower's patch tokens for each image, keyed by file stem."""
    out = {}
    for start in tqdm(range(0, len(paths), batch), desc="tower tokens", file=sys.stderr, leave=False):
        chunk = paths[start : start + batch]
        images = [Image.open(p).convert("RGB") for p in chunk]
        pixels = processor.image_processor(images, return_tensors="pt")["pixel_values"]
        for path, tokens in zip(chunk, model.vision_tower(pixels).float(), strict=True):
            out[path.stem] = tokens.clone()
    return out


