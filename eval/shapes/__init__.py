"""Synthetic "shapes" dataset: seeded scenes of simple shapes, their captions and questions.

Used to train (stage 1 captions, stage 2 instruction QA) and evaluate small VLMs offline. Every
image is 224x224 RGB so it matches a CLIP ViT-B/16-style tower (196 patch tokens) without resizing.

Public API
----------
Constants
    IMAGE_SIZE: int = 224                 side of every rendered image, in pixels
    BACKGROUND: tuple[int, int, int]      the one background colour (black)
    COLORS: dict[str, tuple[int, int, int]]   colour name -> RGB
    KINDS: tuple[str, ...]                ("circle", "square", "triangle", "diamond", "cross")
    SIZES: dict[str, int]                 size name -> half-extent of the shape's box, in pixels
    POSITIONS: tuple[str, ...]            the 3x3 grid labels, row-major ("top left" ... "bottom right")
    TASKS: tuple[str, ...]                color, shape, count, position, existence, comparison
    IMAGE_TOKEN: str = "<image>"

Scenes
    Shape(kind, color, size, cx, cy)      one shape; `.radius`, `.box`, `.position`
    Scene(seed, shapes)                   1-6 shapes; `.count(color=None, kind=None)`
    SceneConfig(...)                      how scenes are sampled (shape count, overlap, tries)
    scene_seed(seed: int, split: str, index: int) -> int
    sample_scene(seed: int, config: SceneConfig | None = None) -> Scene
    render(scene: Scene) -> PIL.Image.Image

Text
    QA(task, question, answer)
    make_caption(scene: Scene, rng: random.Random) -> str
    make_qa(scene: Scene, task: str, rng: random.Random, *, polarity: bool | None = None) -> QA | None
    feasible_tasks(scene: Scene) -> tuple[str, ...]

Files
    write_shapes_dataset(out_dir, n, seed=0, *, n_eval=None, parts=("captions", "instruct", "eval"),
                         config=None, multi_turn_fraction=0.5, max_turns=3, progress=False) -> dict[str, Path]

Scoring (in eval.metrics.shapes, beside the official metrics)
    normalize_shapes_answer(text: str) -> str
    score_shapes(predictions: Iterable[Mapping[str, Any]]) -> dict[str, Any]

Modules: `vocabulary` (the constants), `scenes` (sampling), `drawing` (rendering), `text`
(captions and questions), `writer` (the dataset files).

Files written by `write_shapes_dataset` (all JSON files are lists of records)
----------------------------------------------------------------------------
    images/train_s{seed}_{index:06d}.png   training scenes (shared by captions and instruct)
    images/eval_s{seed}_{index:06d}.png    held-out scenes, from a disjoint seed stream
    captions.json   stage 1, LLaVA format:
        {"id": "train_s0_000000", "image": "images/train_s0_000000.png",
         "conversations": [{"from": "human", "value": "<image>\\nDescribe the image briefly."},
                           {"from": "gpt", "value": "A large red circle at the top left and ..."}]}
    instruct.json   stage 2, LLaVA format, one conversation of 1 to max_turns QA turns per training image;
                    `<image>` only in the first human turn.
    eval.json       one question per record, about held-out images:
        {"id": "eval_s0_000000_count", "image": "images/eval_s0_000000.png",
         "question": "How many shapes are there?", "answer": "3", "task": "count"}
        `question` carries no `<image>` tag: prompt the model with IMAGE_TOKEN + "\\n" + question,
        exactly as the training conversations do.
"""

from __future__ import annotations

from eval.shapes.drawing import render
from eval.shapes.scenes import Scene, SceneConfig, Shape, sample_scene, scene_seed
from eval.shapes.text import QA, feasible_tasks, make_caption, make_qa
from eval.shapes.vocabulary import BACKGROUND, COLORS, IMAGE_SIZE, IMAGE_TOKEN, KINDS, POSITIONS, SIZES, TASKS
from eval.shapes.writer import write_shapes_dataset

__all__ = [
    "BACKGROUND",
    "COLORS",
    "IMAGE_SIZE",
    "IMAGE_TOKEN",
    "KINDS",
    "POSITIONS",
    "QA",
    "SIZES",
    "TASKS",
    "Scene",
    "SceneConfig",
    "Shape",
    "feasible_tasks",
    "make_caption",
    "make_qa",
    "render",
    "sample_scene",
    "scene_seed",
    "write_shapes_dataset",
]
