"""One pass over a dataset before training: every record and image header checked, bad ones raised or counted."""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from train.data.conversations import ConversationDataset, SubsetDataset
from train.data.sample import BadSampleError, ImageRef, bad_sample
from vision.preprocess import DEFAULT_MAX_PIXELS, ImageLoadError
from vlm.atomic import atomic_write_json


def _check_image_header(image: ImageRef, max_pixels: int) -> None:
    """Read only the header: catches non-images and oversized images without decoding pixels."""
    name = f"{image}: " if isinstance(image, Path) else ""
    try:
        with Image.open(image if isinstance(image, Path) else io.BytesIO(image)) as opened:
            width, height = opened.size
    except Image.DecompressionBombError as err:
        raise ImageLoadError(f"{name}{err}") from err
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageLoadError(f"{name}not a readable image ({err})") from err
    if width * height > max_pixels:
        raise ImageLoadError(f"{name}{width}x{height} = {width * height} pixels exceeds the limit of {max_pixels}")


@dataclass
class ValidationReport:
    """What a validation pass found; bad samples are never dropped without being counted here."""

    valid_indices: np.ndarray
    """Indices (into the validated dataset) of the samples that passed, ascending."""
    num_total: int
    """Samples checked."""
    num_bad: int
    """Samples that failed and were left out."""
    first_reasons: list[str]
    """The first few ``BadSampleError`` messages."""
    bad_indices: np.ndarray
    """Indices of the samples that failed."""

    def summary(self) -> str:
        """One paragraph for the log."""
        if not self.num_bad:
            return f"all {self.num_total} samples are valid"
        reasons = "; ".join(self.first_reasons)
        more = f" (and {self.num_bad - len(self.first_reasons)} more)" if self.num_bad > len(self.first_reasons) else ""
        return f"skipped {self.num_bad} of {self.num_total} samples (bad data); first reasons: {reasons}{more}"

    def save(self, path: str | os.PathLike) -> None:
        """Write the report as JSON (atomically), e.g. next to a training run's outputs."""
        atomic_write_json(
            path,
            {
                "summary": self.summary(),
                "num_total": self.num_total,
                "num_bad": self.num_bad,
                "first_reasons": self.first_reasons,
                "bad_indices": self.bad_indices.tolist(),
            },
        )


def validate(
    dataset: ConversationDataset | SubsetDataset,
    *,
    skip_bad: bool,
    check_images: bool = True,
    progress: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    num_reasons: int = 5,
) -> ValidationReport:
    """Check every sample once; raise on the first bad one, or with ``skip_bad`` count and leave it out.

    ``check_images`` also opens each image's header (not a full decode) to catch files that are
    not images or exceed ``max_pixels``.
    """
    valid, bad, reasons = [], [], []
    for index in tqdm(range(len(dataset)), desc="checking data", unit="sample", disable=not progress):
        try:
            sample = dataset[index]
            if check_images:
                for k, image in enumerate(sample.images):
                    try:
                        _check_image_header(image, max_pixels)
                    except ImageLoadError as err:
                        raise bad_sample(sample.source, sample.index, f"image {k}: {err}", sample.id) from err
        except BadSampleError as err:
            if not skip_bad:
                raise
            bad.append(index)
            if len(reasons) < num_reasons:
                reasons.append(str(err))
            continue
        valid.append(index)
    return ValidationReport(
        valid_indices=np.asarray(valid, dtype=np.int64),
        num_total=len(dataset),
        num_bad=len(bad),
        first_reasons=reasons,
        bad_indices=np.asarray(bad, dtype=np.int64),
    )
