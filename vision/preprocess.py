"""Image loading and the vision tower's own preprocessing.

The pixel pipeline is open_clip's eval transform (``open_clip.image_transform``) built
from the tower's preprocessing config, preceded by two steps open_clip leaves to the
caller: a safe conversion of any PIL mode to RGB, and LLaVA's optional pad-to-square
(``image_aspect_ratio=pad``), which keeps the whole image instead of centre-cropping it.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Sequence

import numpy as np
import open_clip
import torch
from PIL import Image

# A 224 px model needs nothing near this; it stops decompression bombs before decoding.
DEFAULT_MAX_PIXELS = 64_000_000

# Modes PIL converts to RGB meaningfully; 16-bit integer and float greyscale ("I;16", "I", "F")
# are scaled to 8 bits first (PIL's own convert would clip them to 255).
_CONVERTIBLE_MODES = {"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"}
_DEEP_MODES = {"I", "I;16", "I;16L", "I;16B", "I;16N", "F"}


class ImageLoadError(ValueError):
    """An image file that cannot be used: missing, not an image, truncated, too large or an odd mode."""


def to_rgb(image: Image.Image, background: Sequence[int] = (255, 255, 255)) -> Image.Image:
    """Convert any supported PIL image to RGB; transparent pixels are composited onto ``background``."""
    if image.mode == "RGB":
        return image
    if image.mode in _DEEP_MODES:
        return _deep_to_8bit(image).convert("RGB")
    if image.mode not in _CONVERTIBLE_MODES:
        raise ImageLoadError(f"unsupported image mode {image.mode!r}; convert it to RGB first")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "La", "PA", "RGBa"):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, tuple(background) + (255,))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return image.convert("RGB")


def _deep_to_8bit(image: Image.Image) -> Image.Image:
    """A 16-bit or float greyscale image as 8-bit "L", by the range its values say it uses.

    Integers: 0..255 kept, 0..65535 (16-bit PNG/TIFF) divided by 257, wider ones by their maximum.
    Floats: 0..1 multiplied by 255, 0..255 kept, else as integers; NaN is black.
    """
    values = np.asarray(image, dtype=np.float64)
    values = np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)
    top = float(values.max()) if values.size else 0.0
    if image.mode == "F" and top <= 1.0:
        values = values * 255.0
    elif top > 65535:
        values = values * (255.0 / top)
    elif top > 255:
        values = values / 257.0
    return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), mode="L")


def pad_to_square(image: Image.Image, background: Sequence[int]) -> Image.Image:
    """Centre ``image`` on a square canvas of its longer side (LLaVA's ``expand2square``)."""
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    canvas = Image.new(image.mode, (side, side), tuple(background))
    canvas.paste(image, ((side - width) // 2, (side - height) // 2))
    return canvas


def load_image(source: str | os.PathLike | bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open, fully decode and convert an image file (or encoded image bytes) to RGB.

    Errors are :class:`ImageLoadError` naming the file: missing, not an image, truncated,
    over ``max_pixels`` (checked from the header, before decoding), or an unsupported mode.
    """
    if isinstance(source, (bytes, bytearray)):
        name, opener = f"<{len(source)} bytes of image data>", io.BytesIO(source)
    else:
        name = opener = os.fspath(source)
        if not os.path.isfile(name):
            raise ImageLoadError(f"{name}: no such image file")
    try:
        with Image.open(opener) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise ImageLoadError(
                    f"{name}: {width}x{height} = {width * height} pixels exceeds the limit of {max_pixels} "
                    "(possible decompression bomb); resize it first"
                )
            image.load()  # decode now, so a truncated file fails here and not later in a worker
            rgb = to_rgb(image)
            rgb.info["source"] = name  # for the errors of later steps (the preprocessor's size check)
            return rgb
    except ImageLoadError as err:
        if str(err).startswith(name):
            raise
        raise ImageLoadError(f"{name}: {err}") from err
    except Image.DecompressionBombError as err:
        raise ImageLoadError(f"{name}: {err}") from err
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageLoadError(f"{name}: not a readable image ({err})") from err


class ImagePreprocessor:
    """PIL image -> normalised ``(3, H, W)`` tensor, using open_clip's eval transform.

    Args:
        image_size: the tower's input size (int or ``(H, W)``).
        image_mean / image_std: per-channel normalisation of the tower.
        interpolation: ``bicubic`` | ``bilinear`` | ``random``, as open_clip names them.
        resize_mode: ``shortest`` (resize + centre crop) | ``longest`` | ``squash``.
        pad_to_square: pad to a square with the mean colour before the transform.
    """

    def __init__(
        self,
        image_size: int | Sequence[int],
        image_mean: Sequence[float],
        image_std: Sequence[float],
        interpolation: str = "bicubic",
        resize_mode: str = "shortest",
        pad_to_square: bool = False,
    ):
        self.pad_to_square = pad_to_square
        self.image_size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        self.resize_mode = resize_mode
        self.background = tuple(int(round(255 * m)) for m in image_mean)
        self.transform = open_clip.image_transform(
            tuple(image_size) if not isinstance(image_size, int) else image_size,
            is_train=False,
            mean=tuple(image_mean),
            std=tuple(image_std),
            resize_mode=resize_mode,
            interpolation=interpolation,
        )

    def check_size(self, image: Image.Image, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        """Raise :class:`ImageLoadError` if padding or resizing ``image`` would make more than ``max_pixels``.

        The decoded size is checked on load (:func:`load_image`); these are the sizes the pipeline
        would make on the way to its crop: a 40000x1 strip resized to a 224 px short side is
        8960000x224, and padded to a square first it is 40000x40000.
        """
        width, height = image.size
        steps = []
        for step in ("pad", "resize"):
            if step == "pad" and self.pad_to_square:
                width = height = max(width, height)
                steps.append(f"padded to {width}x{height}")
            elif step == "resize" and self.resize_mode == "shortest" and min(width, height) > 0:
                scale = min(self.image_size) / min(width, height)
                width, height = math.ceil(width * scale), math.ceil(height * scale)
                steps.append(f"resized to a {min(self.image_size)} px short side: {width}x{height}")
            else:
                continue
            if width * height > max_pixels:
                source = image.info.get("source")
                raise ImageLoadError(
                    f"{source + ': ' if source else ''}a {image.size[0]}x{image.size[1]} image {', then '.join(steps)} = "
                    f"{width * height} pixels, over the limit of {max_pixels}; crop it to a less extreme aspect ratio first"
                )

    def __call__(self, image: Image.Image) -> torch.Tensor:
        image = to_rgb(image)
        self.check_size(image)
        if self.pad_to_square:
            image = pad_to_square(image, self.background)
        return self.transform(image)
