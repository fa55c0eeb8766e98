"""The words and numbers of the shapes world: image size, colours, kinds, sizes, grid positions, tasks."""

from __future__ import annotations

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
PLURALS = {
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
POSITION_PHRASES = {
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

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
