"""Rendering a scene to pixels, exactly and deterministically."""

from __future__ import annotations

from PIL import Image, ImageDraw

from eval.shapes.scenes import Scene
from eval.shapes.vocabulary import BACKGROUND, COLORS, IMAGE_SIZE


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
