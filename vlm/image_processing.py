"""``VLMImageProcessor``: the vision tower's own preprocessing as a transformers image processor.

A thin wrapper, so the preprocessing is saved as ``preprocessor_config.json`` beside the
model and loads with ``AutoImageProcessor`` / ``AutoProcessor``; the pixels themselves are
made by open_clip's transform (``vision.ImagePreprocessor``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image
from transformers.image_processing_utils import BaseImageProcessor, BatchFeature

from vision import ImagePreprocessor
from vision.tower import DEFAULT_PREPROCESS


class VLMImageProcessor(BaseImageProcessor):
    """PIL images -> ``pixel_values`` ``(N, 3, H, W)`` with open_clip's eval transform.

    Args:
        image_size: the tower's input size ``[H, W]``.
        image_mean / image_std: per-channel normalisation.
        interpolation: ``bicubic`` | ``bilinear``.
        resize_mode: ``shortest`` (resize + centre crop, CLIP's default) | ``longest`` | ``squash``.
        pad_to_square: pad with the mean colour to a square first (LLaVA's ``image_aspect_ratio=pad``).
    """

    model_input_names = ["pixel_values"]

    def __init__(
        self,
        image_size: Sequence[int] | int = (224, 224),
        image_mean: Sequence[float] = tuple(DEFAULT_PREPROCESS["image_mean"]),
        image_std: Sequence[float] = tuple(DEFAULT_PREPROCESS["image_std"]),
        interpolation: str = "bicubic",
        resize_mode: str = "shortest",
        pad_to_square: bool = False,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.image_size = [image_size, image_size] if isinstance(image_size, int) else list(image_size)
        self.image_mean = list(image_mean)
        self.image_std = list(image_std)
        self.interpolation = interpolation
        self.resize_mode = resize_mode
        self.pad_to_square = pad_to_square

    @classmethod
    def from_vision_config(cls, vision_config: dict[str, Any], pad_to_square: bool = False) -> VLMImageProcessor:
        """The processor matching a tower's ``vision_config`` (as stored in ``VLMConfig``)."""
        return cls(
            image_size=vision_config["open_clip_config"]["vision_cfg"].get("image_size", 224),
            image_mean=vision_config.get("image_mean", DEFAULT_PREPROCESS["image_mean"]),
            image_std=vision_config.get("image_std", DEFAULT_PREPROCESS["image_std"]),
            interpolation=vision_config.get("interpolation", "bicubic"),
            resize_mode=vision_config.get("resize_mode", "shortest"),
            pad_to_square=pad_to_square,
        )

    def _pixel_pipeline(self) -> ImagePreprocessor:
        # Built on demand (and not stored) so the JSON config stays plain data.
        return ImagePreprocessor(
            self.image_size, self.image_mean, self.image_std, self.interpolation, self.resize_mode, self.pad_to_square
        )

    def check_image(self, image: Image.Image) -> None:
        """Raise ``vision.ImageLoadError`` if preprocessing ``image`` would exceed the pixel limit (see
        ``ImagePreprocessor.check_size``); callers that take images one by one check before batching."""
        self._pixel_pipeline().check_size(image)

    def preprocess(self, images: Image.Image | Sequence[Image.Image], return_tensors: str | None = "pt", **kwargs: Any) -> BatchFeature:
        if isinstance(images, Image.Image):
            images = [images]
        if not all(isinstance(image, Image.Image) for image in images):
            raise TypeError("VLMImageProcessor takes PIL images; open files with vision.load_image(path)")
        pipeline = self._pixel_pipeline()
        pixels = [pipeline(image) for image in images]
        height, width = self.image_size
        pixel_values = torch.stack(pixels) if pixels else torch.empty(0, 3, height, width)
        return BatchFeature({"pixel_values": pixel_values}, tensor_type=return_tensors)

    def __call__(self, images: Image.Image | Sequence[Image.Image], **kwargs: Any) -> BatchFeature:
        return self.preprocess(images, **kwargs)
