"""Training examples: conversations tokenized with their labels, images preprocessed, and the collator.

``prepare_dataset`` checks every record before training starts (structure, images,
tokenized length), so a bad record stops the run at once with its file and record number,
or, with ``skip_bad_samples``, is left out and counted in the report printed at the end.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from train.data import BadSampleError, ConversationDataset, validate
from train.labels import IGNORE_INDEX, ConversationError, tokenize_conversation
from vlm.processing import VLMProcessor


@dataclass
class DataReport:
    """What was read, and what was skipped and why."""

    total: int
    skipped: int = 0
    reasons: list[str] = field(default_factory=list)

    in_training: int = 0
    """Samples that passed the check but failed to load during training (``skip_bad_samples``:
    each was replaced by the next good one and counted here, by the main process's loader)."""

    def summary(self) -> str:
        later = ""
        if self.in_training:
            later = (f"; {self.in_training} more {'sample' if self.in_training == 1 else 'samples'} failed to load "
                     "during training and another stood in")
        if not self.skipped and not self.in_training:
            return f"read {self.total} samples, none skipped"
        shown = "\n  ".join(self.reasons[:5])
        return f"skipped {self.skipped} of {self.total} samples (bad data){later}; first reasons:\n  {shown}"


class SupervisedDataset(Dataset):
    """Map-style dataset of ``{input_ids, labels, pixel_values, num_images}`` examples."""

    def __init__(self, conversations: ConversationDataset, indices: list[int], processor: VLMProcessor, max_length: int,
                 lengths: list[int] | None = None, report: DataReport | None = None):
        self.conversations = conversations
        self.report = report
        """With a report (``skip_bad_samples``), a sample that fails to load during training (an image
        changed or damaged after the check) is replaced by the next good one and counted there; without
        one, the failure stops the run, naming the record."""
        self.failed: set[int] = set()
        self.indices = list(indices)
        self.lengths = lengths
        """Token count of each sample (image tokens included), known from the tokenization check."""
        self.processor = processor
        self.max_length = max_length
        self.feature_cache = None
        self.image_digests: list[list[str]] | None = None

    def sample(self, i: int):
        """The ``i``-th sample's conversation record (messages and image references)."""
        return self.conversations[self.indices[i]]

    def load_image(self, i: int, k: int):
        """Image ``k`` of sample ``i``, decoded as RGB."""
        return self.conversations.load_images(self.sample(i))[k]

    def use_feature_cache(self, cache, digests: list[list[str]]) -> None:
        """Serve ``vision_features`` from ``cache`` (see train.features) instead of ``pixel_values``."""
        if len(digests) != len(self):
            raise ValueError(f"{len(digests)} digest lists for {len(self)} samples")
        self.feature_cache, self.image_digests = cache, digests

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, Any]:
        if self.report is None:
            return self.example(i)
        for offset in range(len(self)):
            j = (i + offset) % len(self)
            if j in self.failed:
                continue
            try:
                return self.example(j)
            except BadSampleError as err:
                self.failed.add(j)
                self.report.in_training += 1
                if len(self.report.reasons) < 5:
                    self.report.reasons.append(f"{err} (during training)")
                print(f"skip_bad_samples: {err}; training on the next sample instead", file=sys.stderr)
        raise BadSampleError(f"every sample failed to load during training; first: {self.report.reasons[:1]}")

    def example(self, i: int) -> dict[str, Any]:
        """Sample ``i`` tokenized, with its preprocessed images (or cached features)."""
        sample = self.conversations[self.indices[i]]
        try:
            tokens = tokenize_conversation(self.processor, sample.messages, self.max_length)
        except ConversationError as err:
            raise BadSampleError(f"{sample.source} record {sample.index} (id {sample.id!r}): {err}") from err
        if self.feature_cache is not None:
            from train.features import stack_features

            digests = self.image_digests[i]
            example = {"input_ids": tokens.input_ids, "labels": tokens.labels, "num_images": len(digests)}
            if digests:
                example["vision_features"] = stack_features(self.feature_cache, digests)
            return example
        images = self.conversations.load_images(sample)
        example = {"input_ids": tokens.input_ids, "labels": tokens.labels, "num_images": len(images)}
        if images:
            example["pixel_values"] = self.processor.image_processor(images, return_tensors="pt")["pixel_values"]
        return example


def prepare_dataset(
    paths: list[str], image_root: str | None, processor: VLMProcessor, max_length: int, skip_bad: bool, progress: bool = True
) -> tuple[SupervisedDataset, DataReport]:
    """Read, validate and tokenize-check every record; return the dataset of the good ones."""
    conversations = ConversationDataset(paths, image_root, image_token=processor.image_token)
    checked = validate(conversations, skip_bad=skip_bad, check_images=True, progress=progress)
    report = DataReport(total=len(conversations), skipped=checked.num_bad, reasons=list(checked.first_reasons))
    good, lengths = [], []
    for index in tqdm(list(checked.valid_indices), desc="tokenizing", disable=not progress, leave=False):
        sample = conversations[index]
        try:
            tokens = tokenize_conversation(processor, sample.messages, max_length)
        except ConversationError as err:
            message = f"{sample.source} record {sample.index} (id {sample.id!r}): {err}"
            if not skip_bad:
                raise BadSampleError(message) from err
            report.skipped += 1
            report.reasons.append(message)
            continue
        good.append(index)
        lengths.append(len(tokens.input_ids))
    if not good:
        raise ValueError(f"no usable training samples in {', '.join(paths)}: {report.summary()}")
    return SupervisedDataset(conversations, good, processor, max_length, lengths, report if skip_bad else None), report


class VLMCollator:
    """Right-pads ``input_ids``/``labels``, builds the attention mask, stacks the batch's images in order."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        longest = max(len(e["input_ids"]) for e in examples)
        input_ids = torch.full((len(examples), longest), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(examples), longest), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(examples), longest), dtype=torch.long)
        for row, example in enumerate(examples):
            n = len(example["input_ids"])
            input_ids[row, :n] = example["input_ids"]
            labels[row, :n] = example["labels"]
            attention_mask[row, :n] = 1
        batch = {
            "input_ids": input_ids,
            "labels": labels,
            "attention_mask": attention_mask,
            "num_images": torch.tensor([e["num_images"] for e in examples], dtype=torch.long),
        }
        for key in ("pixel_values", "vision_features"):  # images, or their cached tower outputs
            parts = [e[key] for e in examples if e["num_images"] and key in e]
            if parts:
                batch[key] = torch.cat(parts)  # [N_img, 3, H, W] / [N_img, T, D_vis], sample order
        return batch
