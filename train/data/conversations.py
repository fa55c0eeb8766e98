"""The conversation dataset: ``Sample``s from one or more data files, concatenated in order, and subsets of it."""

from __future__ import annotations

import operator
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from train.data.files import DataFile
from train.data.sample import FORMATS, Sample, bad_sample
from vision.preprocess import DEFAULT_MAX_PIXELS, ImageLoadError, load_image


class ConversationDataset:
    """Map-style dataset of ``Sample``s from one or more files, concatenated in order.

    ``dataset[i]`` reads one record and checks its text: JSON, turn roles and order (an
    optional system message, then user/assistant alternating, ending with the assistant),
    ``<image>`` tags only in user turns and as many tags as images, and that image files
    exist. Any problem raises ``BadSampleError``. Images are decoded only by ``load_images``.

    Args:
        paths: one data file or a list of them; indices run through them in order.
        image_root: folder that relative image paths are resolved against (absolute paths
            are kept); default: each data file's own folder.
        format: one of ``FORMATS``; ``"auto"`` detects each file's format.
        image_token: the image placeholder in the text.
    """

    def __init__(
        self,
        paths: str | os.PathLike | Sequence[str | os.PathLike],
        image_root: str | os.PathLike | None = None,
        *,
        format: str = "auto",
        image_token: str = "<image>",
    ):
        if format not in FORMATS:
            raise ValueError(f"unknown data format {format!r}; choose one of {FORMATS}")
        if isinstance(paths, (str, os.PathLike)):
            paths = [paths]
        if not paths:
            raise ValueError("no data files given")
        if not image_token:
            raise ValueError("image_token must be a non-empty string")
        self.image_root = Path(image_root).absolute() if image_root is not None else None
        if self.image_root is not None and not self.image_root.is_dir():
            raise FileNotFoundError(f"image_root {image_root}: no such folder")
        self.image_token = image_token
        self._files = [DataFile(path, format) for path in paths]
        self._ends = np.cumsum([len(f) for f in self._files]).astype(np.int64)

    @property
    def sources(self) -> list[tuple[str, str, int]]:
        """``(file, format, number of records)`` for each file, in order."""
        return [(f.source, f.format, len(f)) for f in self._files]

    def __len__(self) -> int:
        return int(self._ends[-1])

    def __getitem__(self, index: int) -> Sample:
        index = operator.index(index)
        total = len(self)
        if index < 0:
            index += total
        if not 0 <= index < total:
            raise IndexError(f"index {index} out of range for a dataset of {total} samples")
        file_number = int(np.searchsorted(self._ends, index, side="right"))
        local = index - (int(self._ends[file_number - 1]) if file_number else 0)
        return self._files[file_number].sample(local, self.image_root, self.image_token)

    def __repr__(self) -> str:
        files = ", ".join(f"{source} ({fmt}, {n})" for source, fmt, n in self.sources)
        return f"ConversationDataset({len(self)} samples: {files})"

    def close(self) -> None:
        """Close the file handles this process opened; later reads reopen them."""
        for data_file in self._files:
            data_file.records.close()

    def load_images(self, sample: Sample, max_pixels: int = DEFAULT_MAX_PIXELS) -> list[Image.Image]:
        """Decode ``sample``'s images as RGB; a missing, broken or oversized image raises ``BadSampleError``."""
        images = []
        for k, image in enumerate(sample.images):
            try:
                images.append(load_image(image, max_pixels))
            except ImageLoadError as err:
                raise bad_sample(sample.source, sample.index, f"image {k}: {err}", sample.id) from err
        return images


class SubsetDataset:
    """The samples of ``dataset`` at ``indices`` (e.g. ``ValidationReport.valid_indices``), with the same ``load_images``."""

    def __init__(self, dataset: ConversationDataset | SubsetDataset, indices: Sequence[int] | np.ndarray):
        self.dataset = dataset
        self.indices = np.asarray(indices, dtype=np.int64)
        if self.indices.ndim != 1:
            raise ValueError(f"indices must be one-dimensional, got shape {self.indices.shape}")
        if self.indices.size and (self.indices.min() < 0 or self.indices.max() >= len(dataset)):
            raise IndexError(f"indices must lie in [0, {len(dataset)}), got {self.indices.min()}..{self.indices.max()}")

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> Sample:
        return self.dataset[int(self.indices[index])]

    def load_images(self, sample: Sample, max_pixels: int = DEFAULT_MAX_PIXELS) -> list[Image.Image]:
        """See ``ConversationDataset.load_images``."""
        return self.dataset.load_images(sample, max_pixels)
