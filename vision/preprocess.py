"""Image loading and the vision tower's own preprocessing.

The pixel pipeline is open_clip's eval transform (``open_clip.image_transform``) built
from the tower's preprocessing config, preceded by two steps open_clip leaves to the
caller: a safe conversion of any PIL mode to RGB, and LLaVA's optional pad-to-square
(``image_aspect_ratio=pad``), which keeps the whole image instead of centre-cropping it.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence

import open_clip
import torch
from PIL import Image

# A 224 px model needs nothing near this; it stops decompression bombs before decoding.
DEFAULT_MAX_PIXELS = 64_000_000

# Modes PIL converts to RGB meaningfully; 16-bit/float modes ("I;16", "F", ...) need a
# caller-chosen scaling, so they are refused rather than silently clipped.
_CONVERTIBLE_MODES = {"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"}


class ImageLoadError(ValueError):
    """An image file that cannot be used: missing, not an image, truncated, too large or an odd mode."""


def to_rgb(image: Image.Image, background: Sequence[int] = (255, 255, 255)) -> Image.Image:
    """Convert any supported PIL image to RGB; transparent pixels are composited onto ``background``."""
    if image.mode == "RGB":
        return image
    if image.mode not in _CONVERTIBLE_MODES:
        raise ImageLoadError(f"unsupported image mode {image.mode!r}; convert it to RGB first")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "La", "PA", "RGBa"):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, tuple(background) + (255,))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return image.convert("RGB")


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
            return to_rgb(image)
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
        self.background = tuple(int(round(255 * m)) for m in image_mean)
        self.transform = open_clip.image_transform(
            tuple(image_size) if not isinstance(image_size, int) else image_size,
            is_train=False,
            mean=tuple(image_mean),
            std=tuple(image_std),
            resize_mode=resize_mode,
            interpolation=interpolation,
        )

    def __call__(self, image: Image.Image) -> torch.Tensor:
        image = to_rgb(image)
        if self.pad_to_square:
            image = pad_to_square(image, self.background)
        return self.transform(image)
