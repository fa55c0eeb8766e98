"""The frozen open_clip vision tower and its image preprocessing."""

from vision.preprocess import ImageLoadError, ImagePreprocessor, load_image, pad_to_square, to_rgb
from vision.tower import VisionTower, load_vision_tower, resolve_open_clip_config

__all__ = [
    "ImageLoadError",
    "ImagePreprocessor",
    "VisionTower",
    "load_image",
    "load_vision_tower",
    "pad_to_square",
    "resolve_open_clip_config",
    "to_rgb",
]
