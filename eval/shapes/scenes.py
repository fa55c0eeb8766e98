"""Scenes: seeded draws of shapes on the 3x3 grid, each shape kept clear of grid lines and of the others."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from eval.shapes.vocabulary import COLORS, IMAGE_SIZE, KINDS, POSITIONS, SIZES

_EDGE_MARGIN = 2  # pixels kept free along the border, so the corners are always background
_GAP = 4  # minimum pixels between the boxes of two shapes when overlap is off
# Centres closer than this (in pixels) to a grid line are resampled: a shape straddling the
# line between "top" and "top left" would make the position answer a coin toss.
_GRID_DEAD_BAND = 6
_SPLITS = {"train": 0, "eval": 1}
MAX_INDEX = 2**32
_MAX_SHAPES = 10  # count answers and caption number words are defined up to ten


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
    check_int("seed", seed, minimum=0)
    check_int("index", index, minimum=0)
    if index >= MAX_INDEX:
        raise ValueError(f"index must be < 2**32, got {index}")
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {tuple(_SPLITS)}, got {split!r}")
    return ((seed * MAX_INDEX + index) << 1) | _SPLITS[split]


def sample_scene(seed: int, config: SceneConfig | None = None) -> Scene:
    """Draw a scene from `random.Random(seed)`: the same seed always gives the same scene.

    Without overlap, each shape is placed by rejection sampling (at most `config.max_tries`
    tries) so that boxes keep a 4-pixel gap; a shape that does not fit is dropped, so a scene can
    hold fewer shapes than first drawn, never fewer than one.
    """
    cfg = config or SceneConfig()
    check_int("seed", seed)
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


def check_int(name: str, value: Any, minimum: int | None = None) -> None:
    # bool is an int subclass; n=True would silently mean 1.
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
