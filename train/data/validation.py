"""One pass over a dataset before training: every record and image checked, bad ones raised or counted."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from train.data.conversations import ConversationDataset, SubsetDataset
from train.data.image_check import CheckedImages
from train.data.sample import BadSampleError, bad_sample
from vision.preprocess import DEFAULT_MAX_PIXELS, ImageLoadError
from vlm.atomic import atomic_write_json


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

    ``check_images`` also reads each image through (``train.data.image_check``: cheaply, and
    only once per file across runs) to catch files that are not images, are truncated or exceed
    ``max_pixels``, so that none of them stops a run at the step that first draws it.
    """
    valid, bad, reasons = [], [], []
    checked = CheckedImages() if check_images else None
    try:
        for index in tqdm(range(len(dataset)), desc="checking data", unit="sample", disable=not progress):
            try:
                sample = dataset[index]
                if checked is not None:
                    for k, image in enumerate(sample.images):
                        try:
                            checked.check(image, max_pixels)
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
    finally:
        if checked is not None:
            checked.save()  # what passed is remembered even when a bad record stops the run
    return ValidationReport(
        valid_indices=np.asarray(valid, dtype=np.int64),
        num_total=len(dataset),
        num_bad=len(bad),
        first_reasons=reasons,
        bad_indices=np.asarray(bad, dtype=np.int64),
    )
