"""Synthetic "shapes" dataset: seeded scenes of simple shapes, their captions, questions and scorer.

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

Scoring
    normalize_answer(text: str) -> str
    score_shapes(predictions: Iterable[Mapping[str, Any]]) -> dict[str, Any]

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

import os
import random
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from vlm.atomic import atomic_file, atomic_write_json

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
    "normalize_answer",
    "render",
    "sample_scene",
    "scene_seed",
    "score_shapes",
    "write_shapes_dataset",
]

# --------------------------------------------------------------------------------------------
# Vocabulary
# --------------------------------------------------------------------------------------------

IMAGE_SIZE = 224
IMAGE_TOKEN = "<image>"

# Black background: every palette colour below is far from it (the darkest, blue and purple,
# still have luminance ~80/255), so a shape never blends into the background.
BACKGROUND: tuple[int, int, int] = (0, 0, 0)
BACKGROUND_NAME = "black"

# Saturated and pairwise far apart in RGB (the closest pair, red/orange, differs by 100 in G),
# so the colour name stays unambiguous even for a small (29-pixel) shape.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (230, 30, 30),
    "green": (40, 190, 60),
    "blue": (40, 90, 240),
    "yellow": (245, 225, 30),
    "purple": (160, 60, 210),
    "orange": (250, 130, 20),
    "white": (245, 245, 245),
}

# Five outlines that differ at 16-pixel patch resolution: round, full box, apex-up, corners on
# the axes, and a plus sign. A star was left out: at the small size its points vanish.
KINDS: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "cross")
_PLURALS = {
    "circle": "circles",
    "square": "squares",
    "triangle": "triangles",
    "diamond": "diamonds",
    "cross": "crosses",
}

# Half-extent of the shape's bounding box: small shapes span ~2x2 patches, large ones ~3x3.
SIZES: dict[str, int] = {"small": 14, "large": 24}

# Row-major 3x3 grid over the image: index = 3 * row + column.
POSITIONS: tuple[str, ...] = (
    "top left", "top", "top right",
    "left", "center", "right",
    "bottom left", "bottom", "bottom right",
)
# How the caption says each position ("on the left", not "at the left").
_POSITION_PHRASES = {
    "top left": "at the top left",
    "top": "at the top",
    "top right": "at the top right",
    "left": "on the left",
    "center": "in the center",
    "right": "on the right",
    "bottom left": "at the bottom left",
    "bottom": "at the bottom",
    "bottom right": "at the bottom right",
}

TASKS: tuple[str, ...] = ("color", "shape", "count", "position", "existence", "comparison")

_EDGE_MARGIN = 2  # pixels kept free along the border, so the corners are always background
_GAP = 4  # minimum pixels between the boxes of two shapes when overlap is off
# Centres closer than this (in pixels) to a grid line are resampled: a shape straddling the
# line between "top" and "top left" would make the position answer a coin toss.
_GRID_DEAD_BAND = 6
_SPLITS = {"train": 0, "eval": 1}
_MAX_INDEX = 2**32
MAX_TURNS = 16  # most QA turns of one instruct conversation
_TURN_TRIES = 8  # question draws per wanted turn before a conversation settles for fewer turns
_MAX_SHAPES = 10  # count answers and caption number words are defined up to ten

_NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")


# --------------------------------------------------------------------------------------------
# Scenes
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Shape:
    """One filled shape; it lies entirely inside the square box of half-extent `radius` at (cx, cy)."""

    kind: str
    """One of KINDS."""
    color: str
    """A key of COLORS."""
    size: str
    """A key of SIZES."""
    cx: int
    """Centre column, in pixels from the left edge."""
    cy: int
    """Centre row, in pixels from the top edge."""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"Shape.kind {self.kind!r} is not one of {KINDS}")
        if self.color not in COLORS:
            raise ValueError(f"Shape.color {self.color!r} is not one of {tuple(COLORS)}")
        if self.size not in SIZES:
            raise ValueError(f"Shape.size {self.size!r} is not one of {tuple(SIZES)}")
        r = SIZES[self.size]
        if not (r <= self.cx < IMAGE_SIZE - r and r <= self.cy < IMAGE_SIZE - r):
            raise ValueError(
                f"Shape centre ({self.cx}, {self.cy}) with half-extent {r} leaves the "
                f"{IMAGE_SIZE}x{IMAGE_SIZE} image; keep both in [{r}, {IMAGE_SIZE - r})"
            )

    @property
    def radius(self) -> int:
        """Half-extent of the bounding box in pixels."""
        return SIZES[self.size]

    @property
    def box(self) -> tuple[int, int, int, int]:
        """Inclusive pixel box (left, top, right, bottom) that contains every pixel of the shape."""
        r = self.radius
        return (self.cx - r, self.cy - r, self.cx + r, self.cy + r)

    @property
    def position(self) -> str:
        """The 3x3 grid cell (one of POSITIONS) that holds the centre."""
        column = self.cx * 3 // IMAGE_SIZE
        row = self.cy * 3 // IMAGE_SIZE
        return POSITIONS[3 * row + column]


@dataclass(frozen=True)
class Scene:
    """A sampled image description: the seed it came from and its shapes in drawing order."""

    seed: int
    """The seed `sample_scene` drew it from (-1 for a hand-built scene)."""
    shapes: tuple[Shape, ...]
    """Shapes in drawing order: a later shape is painted over an earlier one where they overlap."""

    def count(self, color: str | None = None, kind: str | None = None) -> int:
        """Number of shapes matching `color` and `kind` (None matches any)."""
        return sum(
            (color is None or s.color == color) and (kind is None or s.kind == kind) for s in self.shapes
        )


@dataclass(frozen=True)
class SceneConfig:
    """How `sample_scene` draws a scene. The defaults are the published dataset."""

    min_shapes: int = 1
    """Fewest shapes drawn per scene."""
    max_shapes: int = 6
    """Most shapes drawn per scene (placement may drop some when overlap is off)."""
    allow_overlap: bool = False
    """Let shape boxes overlap; a shape's centre is still never covered, so it stays identifiable."""
    max_tries: int = 200
    """Placement attempts per shape before it is dropped, so sampling always terminates."""
    repeat_probability: float = 0.3
    """Chance that a new shape reuses an existing shape's colour (and, independently, its kind),
    so counts above one and non-unique attributes are common enough to learn from."""

    def __post_init__(self) -> None:
        if not 1 <= self.min_shapes <= self.max_shapes <= _MAX_SHAPES:
            raise ValueError(
                f"SceneConfig needs 1 <= min_shapes <= max_shapes <= {_MAX_SHAPES}, "
                f"got min_shapes={self.min_shapes}, max_shapes={self.max_shapes}"
            )
        if self.max_tries < 1:
            raise ValueError(f"SceneConfig.max_tries must be >= 1, got {self.max_tries}")
        if not 0.0 <= self.repeat_probability <= 1.0:
            raise ValueError(
                f"SceneConfig.repeat_probability must be in [0, 1], got {self.repeat_probability}"
            )


def scene_seed(seed: int, split: str, index: int) -> int:
    """The seed of scene `index` of `split` ("train" or "eval") in the dataset with base `seed`.

    The split is the lowest bit, so train seeds are even and eval seeds odd: no train scene of any
    dataset can share a seed with an eval scene of any dataset. The rest is injective in
    (seed, index), so two indices never share a scene either.
    """
    _check_int("seed", seed, minimum=0)
    _check_int("index", index, minimum=0)
    if index >= _MAX_INDEX:
        raise ValueError(f"index must be < 2**32, got {index}")
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {tuple(_SPLITS)}, got {split!r}")
    return ((seed * _MAX_INDEX + index) << 1) | _SPLITS[split]


def sample_scene(seed: int, config: SceneConfig | None = None) -> Scene:
    """Draw a scene from `random.Random(seed)`: the same seed always gives the same scene.

    Without overlap, each shape is placed by rejection sampling (at most `config.max_tries`
    tries) so that boxes keep a 4-pixel gap; a shape that does not fit is dropped, so a scene can
    hold fewer shapes than first drawn, never fewer than one.
    """
    cfg = config or SceneConfig()
    _check_int("seed", seed)
    rng = random.Random(seed)  # private stream: independent of the global `random` state
    colors, kinds, sizes = tuple(COLORS), KINDS, tuple(SIZES)
    n_target = rng.randint(cfg.min_shapes, cfg.max_shapes)
    shapes: list[Shape] = []
    for _ in range(n_target):
        color = rng.choice(colors)
        kind = rng.choice(kinds)
        if shapes and rng.random() < cfg.repeat_probability:
            color = rng.choice(shapes).color
        if shapes and rng.random() < cfg.repeat_probability:
            kind = rng.choice(shapes).kind
        size = rng.choice(sizes)
        r = SIZES[size]
        low, high = r + _EDGE_MARGIN, IMAGE_SIZE - 1 - r - _EDGE_MARGIN
        for _try in range(cfg.max_tries):
            cx, cy = rng.randint(low, high), rng.randint(low, high)
            if _near_grid_line(cx) or _near_grid_line(cy):
                continue
            candidate = Shape(kind, color, size, cx, cy)
            if all(_compatible(candidate, other, cfg.allow_overlap) for other in shapes):
                shapes.append(candidate)
                break
    if not shapes:  # only the dead bands can reject the first shape (~20% per try)
        raise RuntimeError(
            f"seed {seed}: could not place a single shape in {cfg.max_tries} tries; "
            "raise SceneConfig.max_tries"
        )
    return Scene(seed=seed, shapes=tuple(shapes))


def _near_grid_line(coordinate: int) -> bool:
    # Compare 3 * coordinate with the grid lines at 224 * k in integer arithmetic (no rounding).
    return any(abs(3 * coordinate - IMAGE_SIZE * k) < 3 * _GRID_DEAD_BAND for k in (1, 2))


def _compatible(a: Shape, b: Shape, allow_overlap: bool) -> bool:
    if allow_overlap:
        # Boxes may overlap, but neither centre may lie under the other's box: the centre pixel
        # then always shows the shape's own colour, and no shape is ever fully hidden.
        return not (_inside(a.cx, a.cy, b.box, margin=2) or _inside(b.cx, b.cy, a.box, margin=2))
    al, at, ar, ab = a.box
    bl, bt, br, bb = b.box
    return al > br + _GAP or bl > ar + _GAP or at > bb + _GAP or bt > ab + _GAP


def _inside(x: int, y: int, box: tuple[int, int, int, int], margin: int) -> bool:
    left, top, right, bottom = box
    return left - margin <= x <= right + margin and top - margin <= y <= bottom + margin


def render(scene: Scene) -> Image.Image:
    """Draw `scene` as a 224x224 RGB image, shapes in order, without anti-aliasing.

    Deterministic: Pillow's aliased primitives are exact integer rasterisers, so the same scene
    always gives byte-identical pixels.
    """
    image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for shape in scene.shapes:
        fill = COLORS[shape.color]
        cx, cy, r = shape.cx, shape.cy, shape.radius
        left, top, right, bottom = shape.box
        if shape.kind == "circle":
            draw.ellipse((left, top, right, bottom), fill=fill)
        elif shape.kind == "square":
            draw.rectangle((left, top, right, bottom), fill=fill)
        elif shape.kind == "triangle":
            # Apex up, base on the box's bottom edge; the centre sits inside (half-width r/2).
            draw.polygon([(cx, top), (right, bottom), (left, bottom)], fill=fill)
        elif shape.kind == "diamond":
            draw.polygon([(cx, top), (right, cy), (cx, bottom), (left, cy)], fill=fill)
        elif shape.kind == "cross":
            arm = round(r / 3)  # half-width of each bar: thick enough to survive 16-px patches
            draw.rectangle((left, cy - arm, right, cy + arm), fill=fill)
            draw.rectangle((cx - arm, top, cx + arm, bottom), fill=fill)
        else:  # Shape.__post_init__ already rejects unknown kinds
            raise AssertionError(shape.kind)
    return image


# --------------------------------------------------------------------------------------------
# Captions and questions
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class QA:
    """One question about a scene with its short, exactly checkable answer."""

    task: str
    """One of TASKS."""
    question: str
    """The question text, without the image tag."""
    answer: str
    """The reference answer, already in normalised form (see `normalize_answer`)."""


_CAPTION_PROMPTS = (
    "Describe the image briefly.",
    "Give a short description of the image.",
    "What is shown in this image?",
    "Write a caption for this image.",
    "Summarize the picture in one sentence.",
    "Which shapes are in the image, and where are they?",
)

_CAPTION_TEMPLATES = (
    "{List}.",
    "The image shows {list}.",
    "{List}, on a " + BACKGROUND_NAME + " background.",
    "There {are_n}: {list}.",
)

_QUESTIONS: dict[str, tuple[str, ...]] = {
    "color": (
        "What color is the {kind}?",
        "What is the color of the {kind}?",
        "Which color does the {kind} have?",
        "Tell me the color of the {kind}.",
    ),
    "shape": (
        "What shape is the {color} object?",
        "What is the shape of the {color} object?",
        "Which shape is {color}?",
        "What kind of shape is the {color} one?",
    ),
    "count_total": (
        "How many shapes are there?",
        "How many objects are in the image?",
        "Count the shapes in the image.",
    ),
    "count_color": (
        "How many {color} shapes are there?",
        "How many {color} objects are in the image?",
        "Count the {color} shapes.",
    ),
    "count_kind": (
        "How many {kinds} are there?",
        "How many {kinds} are in the image?",
        "Count the {kinds}.",
    ),
    "position": (
        "Where is the {color} {kind}?",
        "In which part of the image is the {color} {kind}?",
        "Where is the {color} {kind} located?",
    ),
    "existence": (
        "Is there {a_color} {kind}?",
        "Is there {a_color} {kind} in the image?",
        "Does the image contain {a_color} {kind}?",
        "Can you see {a_color} {kind}?",
    ),
    "comparison": (
        "Are there more {group1} than {group2}?",
        "Does the image have more {group1} than {group2}?",
        "Are {group1} more numerous than {group2}?",
    ),
}


def _with_article(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def _join(items: Sequence[str]) -> str:
    if len(items) == 1:
        return items[0]
    return ", ".join(items[:-1]) + " and " + items[-1]


def make_caption(scene: Scene, rng: random.Random) -> str:
    """One sentence naming every shape (size, colour, kind, position), in reading order.

    The phrasing is drawn from `rng`, so pass a generator seeded from the scene for reproducible
    text.
    """
    # Reading order (grid row, then column, then pixels) makes captions of similar scenes similar.
    ordered = sorted(
        scene.shapes, key=lambda s: (s.cy * 3 // IMAGE_SIZE, s.cx * 3 // IMAGE_SIZE, s.cy, s.cx)
    )
    parts = [
        f"{_with_article(s.size)} {s.color} {s.kind} {_POSITION_PHRASES[s.position]}" for s in ordered
    ]
    listed = _join(parts)
    n = len(ordered)
    are_n = "is one shape" if n == 1 else f"are {_NUMBER_WORDS[n]} shapes"
    template = rng.choice(_CAPTION_TEMPLATES)
    return template.format(List=listed[0].upper() + listed[1:], list=listed, are_n=are_n)


def feasible_tasks(scene: Scene) -> tuple[str, ...]:
    """The tasks `make_qa` can ask about `scene`, in TASKS order.

    color needs a kind that occurs once, shape a colour that occurs once, position a
    (colour, kind) pair that occurs once; count, existence and comparison are always possible.
    """
    tasks = []
    for task in TASKS:
        if task == "color" and not _unique_values(scene, "kind"):
            continue
        if task == "shape" and not _unique_values(scene, "color"):
            continue
        if task == "position" and not _unique_pairs(scene):
            continue
        tasks.append(task)
    return tuple(tasks)


def _unique_values(scene: Scene, attribute: str) -> list[str]:
    values = [getattr(s, attribute) for s in scene.shapes]
    return [v for v in dict.fromkeys(values) if values.count(v) == 1]


def _unique_pairs(scene: Scene) -> list[Shape]:
    return [s for s in scene.shapes if scene.count(color=s.color, kind=s.kind) == 1]


def make_qa(scene: Scene, task: str, rng: random.Random, *, polarity: bool | None = None) -> QA | None:
    """Ask one `task` question about `scene`; None when the scene cannot support it.

    Args:
        scene: the scene the question is about.
        task: one of TASKS.
        rng: draws the subject and the phrasing.
        polarity: for the yes/no tasks (existence, comparison), force the answer to be "yes"
            (True) or "no" (False); None draws it 50/50. Ignored by the other tasks.
    """
    if task not in TASKS:
        raise ValueError(f"task {task!r} is not one of {TASKS}")
    if task == "color":
        kinds = _unique_values(scene, "kind")
        if not kinds:
            return None
        kind = rng.choice(kinds)
        color = next(s.color for s in scene.shapes if s.kind == kind)
        return QA(task, rng.choice(_QUESTIONS["color"]).format(kind=kind), color)
    if task == "shape":
        colors = _unique_values(scene, "color")
        if not colors:
            return None
        color = rng.choice(colors)
        kind = next(s.kind for s in scene.shapes if s.color == color)
        return QA(task, rng.choice(_QUESTIONS["shape"]).format(color=color), kind)
    if task == "count":
        return _count_qa(scene, rng)
    if task == "position":
        candidates = _unique_pairs(scene)
        if not candidates:
            return None
        s = rng.choice(candidates)
        question = rng.choice(_QUESTIONS["position"]).format(color=s.color, kind=s.kind)
        return QA(task, question, s.position)
    want_yes = rng.random() < 0.5 if polarity is None else polarity
    if task == "existence":
        return _existence_qa(scene, rng, want_yes)
    return _comparison_qa(scene, rng, want_yes)


def _count_qa(scene: Scene, rng: random.Random) -> QA:
    variant = rng.choice(("total", "color", "kind"))
    if variant == "total":
        return QA("count", rng.choice(_QUESTIONS["count_total"]), str(len(scene.shapes)))
    # Mostly ask about a value in the scene; sometimes about any value, so "0" is learned too.
    present = sorted({getattr(s, variant) for s in scene.shapes})
    everything = list(COLORS) if variant == "color" else list(KINDS)
    value = rng.choice(present if rng.random() < 0.8 else everything)
    if variant == "color":
        question = rng.choice(_QUESTIONS["count_color"]).format(color=value)
        return QA("count", question, str(scene.count(color=value)))
    question = rng.choice(_QUESTIONS["count_kind"]).format(kinds=_PLURALS[value])
    return QA("count", question, str(scene.count(kind=value)))


def _existence_qa(scene: Scene, rng: random.Random, want_yes: bool) -> QA:
    present = sorted({(s.color, s.kind) for s in scene.shapes})
    if want_yes:
        color, kind = rng.choice(present)
    else:
        absent = [(c, k) for c in COLORS for k in KINDS if (c, k) not in present]
        # Half the negatives share a colour or a kind with a present shape, so "no" cannot be
        # answered from colour alone or from shape alone.
        near = [(c, k) for c, k in absent if any(c == pc or k == pk for pc, pk in present)]
        color, kind = rng.choice(near if near and rng.random() < 0.5 else absent)
    question = rng.choice(_QUESTIONS["existence"]).format(a_color=_with_article(color), kind=kind)
    return QA("existence", question, "yes" if want_yes else "no")


def _comparison_qa(scene: Scene, rng: random.Random, want_yes: bool) -> QA:
    # "Are there more A than B?" is yes exactly when count(A) > count(B); a tie is "no".
    # Groups are two colours or two kinds; at least one of them is in the scene, and for any
    # present value both orders exist, so either answer can always be produced.
    # The one case with no "yes" pair is every value present equally often (five shapes, one
    # of each kind): then the other attribute is used. Both cannot happen with <= 10 shapes.
    attributes = ["color", "kind"]
    rng.shuffle(attributes)
    for attribute in attributes:
        values = list(COLORS) if attribute == "color" else list(KINDS)
        counts = {v: scene.count(**{attribute: v}) for v in values}
        pairs = [
            (a, b)
            for a in values
            for b in values
            if a != b and (counts[a] or counts[b]) and (counts[a] > counts[b]) == want_yes
        ]
        if pairs:
            break
    assert pairs, f"scene {scene.seed}: no comparison with answer {'yes' if want_yes else 'no'}"
    first, second = rng.choice(pairs)
    if attribute == "color":
        group1, group2 = f"{first} shapes", f"{second} shapes"
    else:
        group1, group2 = _PLURALS[first], _PLURALS[second]
    question = rng.choice(_QUESTIONS["comparison"]).format(group1=group1, group2=group2)
    return QA("comparison", question, "yes" if want_yes else "no")


# --------------------------------------------------------------------------------------------
# Records and files
# --------------------------------------------------------------------------------------------

_PARTS = ("captions", "instruct", "eval")
DEFAULT_N_EVAL = 200


def _image_stem(split: str, seed: int, index: int) -> str:
    return f"{split}_s{seed}_{index:06d}"


def _text_rng(scene: Scene, purpose: str) -> random.Random:
    # A separate stream per purpose: changing how questions are drawn never moves the shapes,
    # and captions do not shift when the question code changes. Strings seed via SHA-512, so
    # this is stable across processes (unlike hash()).
    return random.Random(f"shapes/{scene.seed}/{purpose}")


def _caption_record(scene: Scene, stem: str) -> dict[str, Any]:
    rng = _text_rng(scene, "caption")
    prompt = rng.choice(_CAPTION_PROMPTS)
    return {
        "id": stem,
        "image": f"images/{stem}.png",
        "conversations": [
            {"from": "human", "value": f"{IMAGE_TOKEN}\n{prompt}"},
            {"from": "gpt", "value": make_caption(scene, rng)},
        ],
    }


def _instruct_record(scene: Scene, stem: str, multi_turn_fraction: float, max_turns: int = 3) -> dict[str, Any]:
    rng = _text_rng(scene, "instruct")
    tasks = feasible_tasks(scene)  # count, existence and comparison are always there: >= 3
    n_turns = rng.choice(tuple(range(2, max_turns + 1))) if rng.random() < multi_turn_fraction else 1
    # Every feasible task is asked once before any is asked again; a repeat asks about another
    # subject (the same question is never asked twice about one image, in any phrasing).
    order = list(rng.sample(tasks, min(n_turns, len(tasks))))
    qas: list[QA] = []
    asked: set[tuple[str, ...]] = set()
    named: set[str] = set()  # colours and kinds that earlier turns told something about
    tries = 0
    while len(qas) < n_turns and tries < _TURN_TRIES * n_turns:
        if not order:
            order = list(rng.sample(tasks, len(tasks)))
        task = order.pop(0)
        qa = make_qa(scene, task, rng)
        assert qa is not None, f"{stem}: feasible task {task} gave no question"
        tries += 1
        key, subjects = _question_key(qa), _subjects(qa)
        # A colour, shape or existence question about a colour or kind that an earlier turn told
        # something about could be answered from the text instead of the image ("Which shape is
        # yellow?" "triangle" -> "What color is the triangle?", "Is there a yellow triangle?"):
        # the eval asks single questions, so such turns would teach a shortcut. Positions,
        # counts and comparisons stay: the conversation does not tell them.
        if key in asked or (qa.task in _ANSWERABLE_FROM_NAMES and subjects & named):
            continue
        asked.add(key)
        if qa.task in _ANSWERABLE_FROM_NAMES or qa.task == "position" or qa.answer == "0":
            named |= subjects  # they say which colour goes with which kind, or that one is absent
        qas.append(qa)
    conversations = []
    for turn, qa in enumerate(qas):
        question = f"{IMAGE_TOKEN}\n{qa.question}" if turn == 0 else qa.question
        conversations.append({"from": "human", "value": question})
        conversations.append({"from": "gpt", "value": qa.answer})
    return {"id": stem, "image": f"images/{stem}.png", "conversations": conversations}


_SUBJECT_WORDS = frozenset(COLORS) | frozenset(KINDS) | frozenset(_PLURALS.values())
_SINGULAR = {plural: kind for kind, plural in _PLURALS.items()}
_ANSWERABLE_FROM_NAMES = ("color", "shape", "existence")


def _subjects(qa: QA) -> set[str]:
    """The colours and kinds (singular) a question and its answer name."""
    words = re.findall(r"[a-z]+", f"{qa.question} {qa.answer}".lower())
    return {_SINGULAR.get(w, w) for w in words if w in _SUBJECT_WORDS}


def _question_key(qa: QA) -> tuple[str, ...]:
    """What a question asks, whatever its phrasing: its task and its colour/kind words in order."""
    words = re.findall(r"[a-z]+", qa.question.lower())
    return (qa.task, *(w for w in words if w in _SUBJECT_WORDS))


def _eval_records(scene: Scene, stem: str, index: int) -> list[dict[str, Any]]:
    rng = _text_rng(scene, "eval")
    # Alternate the yes/no answers by scene index, so the eval split is balanced exactly and a
    # model that always says "yes" scores 50 on existence and comparison.
    polarity = index % 2 == 0
    records = []
    for task in feasible_tasks(scene):
        qa = make_qa(scene, task, rng, polarity=polarity)
        assert qa is not None, f"{stem}: feasible task {task} gave no question"
        records.append(
            {"id": f"{stem}_{task}", "image": f"images/{stem}.png", "question": qa.question,
             "answer": qa.answer, "task": task}
        )
    return records


def write_shapes_dataset(
    out_dir: str | os.PathLike[str],
    n: int,
    seed: int = 0,
    *,
    n_eval: int | None = None,
    parts: Sequence[str] = _PARTS,
    config: SceneConfig | None = None,
    multi_turn_fraction: float = 0.5,
    max_turns: int = 3,
    progress: bool = False,
) -> dict[str, Path]:
    """Write the shapes dataset: `out_dir/images/*.png` and one JSON file per part.

    Args:
        out_dir: folder to write into; created if missing. Existing files of the same names are
            replaced atomically; other files are left alone.
        n: number of training images; captions.json and instruct.json hold one record per image.
        seed: base seed (>= 0). Train and eval scenes come from disjoint seed streams
            (see `scene_seed`), so held-out images never repeat a training scene.
        n_eval: number of held-out images; eval.json asks every feasible task once per image
            (about 6 * n_eval questions). Defaults to min(n, 200). Eval image i depends only on
            (seed, i), so a smaller n_eval gives a prefix of a larger one's images.
        parts: which of "captions", "instruct", "eval" to write.
        config: how scenes are sampled; the default is the published dataset.
        multi_turn_fraction: share of instruct conversations with 2 to `max_turns` QA turns instead of one.
        max_turns: most QA turns of a multi-turn conversation (2-16). Tasks are drawn in rounds
            (each feasible task once per round); a later colour, shape or existence question never
            names a colour or kind that an earlier colour, shape, existence or position turn (or a
            count answered 0) named, so none can be answered from the conversation instead of the
            image, and no question repeats (a scene with few such questions gets fewer turns).
            More turns give more supervised answers per image for little more compute: the 196
            image tokens are paid once per conversation, a turn costs about 20 text tokens.
        progress: show a tqdm progress bar.

    Returns:
        The path of each JSON file written, keyed by part.
    """
    _check_int("n", n, minimum=1)
    _check_int("seed", seed, minimum=0)
    if n >= _MAX_INDEX:
        raise ValueError(f"n must be < 2**32, got {n}")
    if isinstance(parts, str) or not parts:
        raise ValueError(f"parts must be a non-empty sequence drawn from {_PARTS}, got {parts!r}")
    unknown = [p for p in parts if p not in _PARTS]
    if unknown:
        raise ValueError(f"unknown parts {unknown}; choose from {_PARTS}")
    n_eval = min(n, DEFAULT_N_EVAL) if n_eval is None else n_eval
    if "eval" in parts:
        _check_int("n_eval", n_eval, minimum=1)
        if n_eval >= _MAX_INDEX:
            raise ValueError(f"n_eval must be < 2**32, got {n_eval}")
    if not 0.0 <= multi_turn_fraction <= 1.0:
        raise ValueError(f"multi_turn_fraction must be in [0, 1], got {multi_turn_fraction}")
    _check_int("max_turns", max_turns, minimum=2)
    if max_turns > MAX_TURNS:
        raise ValueError(f"max_turns must be <= {MAX_TURNS}, got {max_turns}")

    out = Path(out_dir)
    images_dir = out / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    records: dict[str, list[dict[str, Any]]] = {part: [] for part in _PARTS if part in parts}

    jobs: list[tuple[str, int]] = []
    if "captions" in parts or "instruct" in parts:
        jobs += [("train", i) for i in range(n)]
    if "eval" in parts:
        jobs += [("eval", i) for i in range(n_eval)]
    if progress:
        from tqdm import tqdm  # imported only when asked: the library path needs no tqdm

        jobs_iter: Iterable[tuple[str, int]] = tqdm(jobs, desc="shapes", unit="img")
    else:
        jobs_iter = jobs

    for split, index in jobs_iter:
        scene = sample_scene(scene_seed(seed, split, index), config)
        stem = _image_stem(split, seed, index)
        with atomic_file(images_dir / f"{stem}.png", "wb") as handle:
            render(scene).save(handle, format="PNG")  # no metadata chunks: same pixels -> same bytes
        if split == "eval":
            records["eval"].extend(_eval_records(scene, stem, index))
            continue
        if "captions" in records:
            records["captions"].append(_caption_record(scene, stem))
        if "instruct" in records:
            records["instruct"].append(_instruct_record(scene, stem, multi_turn_fraction, max_turns))

    written = {}
    for part, part_records in records.items():
        path = out / f"{part}.json"
        atomic_write_json(path, part_records)
        written[part] = path
    return written


def _check_int(name: str, value: Any, minimum: int | None = None) -> None:
    # bool is an int subclass; n=True would silently mean 1.
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


# --------------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------------

_ARTICLES = {"a", "an", "the"}
_QUANTIFIERS = {"only", "just", "exactly"}
_DIGITS = {word: str(i) for i, word in enumerate(_NUMBER_WORDS)}
_SPELLINGS = {"centre": "center", "middle": "center", "colour": "color", "grey": "gray"}
_TRAILING_PUNCTUATION = ".!?,;:"
_QUOTES = "\"'`"


def normalize_answer(text: str) -> str:
    """Lightly normalise a short answer so that equivalent spellings compare equal.

    Lowercase; drop surrounding quotes and trailing punctuation; hyphens become spaces
    ("top-left" == "top left"); collapse whitespace; drop a leading article ("The red one");
    drop "only/just/exactly" before a number; a trailing "one" after another word is the pronoun
    and is dropped ("the red one" -> "red"); number words zero-ten become digits ("Three." -> "3");
    British spellings become the dataset's ("centre" -> "center"). Nothing else is forgiven:
    "yes, there is" stays different from "yes".
    """
    if not isinstance(text, str):
        raise TypeError(f"normalize_answer expects a str, got {type(text).__name__} {text!r}")
    s = text.lower().strip().strip(_QUOTES).strip()
    s = s.rstrip(_TRAILING_PUNCTUATION + _QUOTES + " ").replace("-", " ")
    tokens = s.split()
    if len(tokens) > 1 and tokens[0] in _ARTICLES:
        tokens = tokens[1:]
    if len(tokens) > 1 and tokens[0] in _QUANTIFIERS and (tokens[1] in _DIGITS or tokens[1].isdigit()):
        tokens = tokens[1:]
    if len(tokens) > 1 and tokens[-1] == "one":
        tokens = tokens[:-1]
    tokens = [_SPELLINGS.get(t, _DIGITS.get(t, t)) for t in tokens]
    return " ".join(tokens)


def score_shapes(predictions: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Exact-match accuracy (x100) after `normalize_answer`, overall and per task.

    Args:
        predictions: records with "prediction" (the model's text), "answer" (the reference) and
            "task"; an eval.json record plus a "prediction" field is exactly this.

    Returns:
        {"accuracy": float, "correct": int, "total": int,
         "per_task": {task: {"accuracy": float, "correct": int, "total": int}}},
        per_task in TASKS order, then any other task names sorted.
    """
    per_task: dict[str, list[int]] = {}  # task -> [correct, total]
    for i, record in enumerate(predictions):
        missing = [key for key in ("prediction", "answer", "task") if key not in record]
        if missing:
            raise ValueError(f"prediction {i} (id {record.get('id', '?')!r}) lacks keys {missing}")
        hit = normalize_answer(str(record["prediction"])) == normalize_answer(str(record["answer"]))
        tally = per_task.setdefault(str(record["task"]), [0, 0])
        tally[0] += hit
        tally[1] += 1
    if not per_task:
        raise ValueError("score_shapes got no predictions")
    order = [t for t in TASKS if t in per_task] + sorted(t for t in per_task if t not in TASKS)
    correct = sum(c for c, _ in per_task.values())
    total = sum(t for _, t in per_task.values())
    return {
        "accuracy": 100.0 * correct / total,
        "correct": correct,
        "total": total,
        "per_task": {
            t: {"accuracy": 100.0 * per_task[t][0] / per_task[t][1], "correct": per_task[t][0],
                "total": per_task[t][1]}
            for t in order
        },
    }
