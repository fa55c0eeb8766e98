"""The checks an export must pass before it is kept: pixels, logits and greedy tokens against our model.

- pixels: our processor and the exported one on images of other sizes and modes (wide, tall, small,
  large, RGBA with transparency, L, P with and without a transparent colour) within 1e-5. One rule
  differs and cannot be configured away: after the resize, open_clip's centre crop (torchvision's
  ``CenterCrop``) offsets by ``round((L - 224) / 2)``, round half to even, and transformers' CLIP / LLaVA
  image processors (both backends) by ``floor``. They agree unless ``L - 224`` is 3 mod 4 (e.g. a
  260x200 image, resized to 291x224: offset 33.5, ours 34, theirs 33), where the crop is one pixel
  apart. Such images are checked against our pipeline with its crop offset floored, within 1e-5 too,
  so every other step is still proven equal, and the raw difference is reported;
- logits: a left-padded batch of two prompts (one image; two images of other sizes), both models in
  the export dtype, the difference over the real (unpadded) positions relative to the logits'
  scale, within the dtype's tolerance;
- greedy: the same prompts answered by both models, token for token.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import nn
from torchvision.transforms import CenterCrop, Compose
from torchvision.transforms import functional as tvF

PIXEL_TOLERANCE = 1e-5
# Max |logit difference| relative to max(1, max |logit|). Both models hold the same numbers in the
# export dtype and differ only in kernels (open_clip's MultiheadAttention vs CLIP's sdpa attention, the
# order of float sums): fp32 reorders sums; a bf16 / fp16 result rounds each op's output (8 / 11 bits of
# mantissa, 2^-8 = 3.9e-3 relative for bf16), and the rounding differences grow through the layers.
LOGIT_TOLERANCE = {"fp32": 1e-4, "fp16": 2e-2, "bf16": 5e-2}
GREEDY_TOKENS = 16


def probe_images() -> list[Image.Image]:
    """Generated pictures of other sizes and modes than the tower's 224 px RGB: each needs a step of the pipeline."""
    rng = np.random.default_rng(0)

    def scene(width: int, height: int) -> Image.Image:
        noise = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        image = Image.fromarray(noise // 4 + 96)
        draw = ImageDraw.Draw(image)
        draw.ellipse([width // 8, height // 8, width // 2, height // 2], fill=(220, 40, 40))
        draw.rectangle([width // 2, height // 2, width - 4, height - 4], fill=(40, 90, 220))
        return image

    rgba = scene(250, 200).convert("RGBA")
    alpha = rng.integers(0, 256, (200, 250), dtype=np.uint8)
    alpha[:, :40] = 0  # fully transparent strip: composited onto white
    rgba.putalpha(Image.fromarray(alpha))
    palette = scene(200, 250).quantize(colors=16)
    transparent_palette = scene(180, 180).quantize(colors=8)
    transparent_palette.info["transparency"] = 3
    return [
        scene(224, 224),
        scene(320, 180),  # wide
        scene(150, 400),  # tall
        scene(64, 48),  # upscaled
        scene(900, 700),  # downscaled
        rgba,
        scene(300, 300).convert("L"),
        palette,
        transparent_palette,
        scene(260, 200),  # resized to 291x224: the crop rules differ (see the module docstring)
        scene(200, 260).convert("RGBA"),
    ]


def probe_prompts(processor) -> tuple[list[str], list[list[Image.Image]]]:
    """Two chat prompts: one image, and two images of other sizes and modes."""
    images = probe_images()
    prompts = [
        processor.apply_chat_template([{"role": "user", "content": "<image>\nDescribe the shapes and their colours."}]),
        processor.apply_chat_template([{"role": "user", "content": "<image>\nleft, <image>\nright: which one is red?"}]),
    ]
    return prompts, [[images[0]], [images[1], images[5]]]


@dataclass
class ParityReport:
    pixel_max_diff: float
    """Max |pixel_values difference|, the exported processor as loaded with ``backend="pil"`` (checked)."""
    pixel_max_diff_raw: float
    """The same without flooring our crop where the crop rules differ: informative."""
    pixel_max_diff_default: float
    """The raw difference with transformers' default (torchvision) backend: informative."""
    pixel_crop_shifted: int
    """Probe images on which the crop rules differ by a pixel."""
    logit_max_diff: float
    logit_bound: float
    greedy_equal: bool
    greedy_tokens: list[list[int]]
    first_difference: str | None = None

    def lines(self, dtype: str) -> list[str]:
        greedy = "equal" if self.greedy_equal else f"DIFFERENT ({self.first_difference})"
        count = sum(len(t) for t in self.greedy_tokens)
        return [
            f"pixels (backend='pil'): max |diff| {self.pixel_max_diff:.2e} (tolerance {PIXEL_TOLERANCE:.0e}) on "
            f"{len(probe_images())} images, {self.pixel_crop_shifted} of them with the crop floored as transformers does "
            f"(unfloored: {self.pixel_max_diff_raw:.2e}); transformers' default torchvision backend: {self.pixel_max_diff_default:.2e}",
            f"logits ({dtype}): max |diff| {self.logit_max_diff:.3e} (bound {self.logit_bound:.3e})",
            f"greedy tokens: {greedy} ({count} tokens over {len(self.greedy_tokens)} prompts)",
        ]


class _FloorCenterCrop(CenterCrop):
    """torchvision's CenterCrop with transformers' offsets (``floor``, not round half to even)."""

    def forward(self, image: Image.Image) -> Image.Image:
        height, width = self.size
        return tvF.crop(image, (image.height - height) // 2, (image.width - width) // 2, height, width)


def crop_rules_agree(image: Image.Image, pipeline) -> bool:
    """Whether open_clip's and transformers' centre crops take the same pixels of ``image`` (after any padding)."""
    crops = [t for t in pipeline.transform.transforms if isinstance(t, CenterCrop)]
    if not crops:
        return True
    width, height = image.size
    if pipeline.pad_to_square:
        width = height = max(width, height)
    short, long = sorted((height, width))
    target = crops[0].size[0]
    new_long = int(target * long / short)  # torchvision's Resize(target) of the shorter side
    resized = (target, new_long) if height <= width else (new_long, target)
    return all(round((side - crop) / 2) == (side - crop) // 2 for side, crop in zip(resized, crops[0].size))


def floor_crop_pipeline(pipeline):
    """``pipeline`` (a ``vision.ImagePreprocessor``) with its centre crop offsets floored as transformers does."""
    floored = copy.copy(pipeline)
    floored.transform = Compose([_FloorCenterCrop(t.size) if isinstance(t, CenterCrop) else t for t in pipeline.transform.transforms])
    return floored


def pixel_differences(our_processor, llava_processor) -> tuple[float, float]:
    """``(checked, raw)`` max |pixel_values difference| between our image processor and the exported one over
    :func:`probe_images`: ``checked`` against our pipeline, its crop floored where the crop rules differ."""
    images = probe_images()
    pipeline = our_processor.image_processor._pixel_pipeline()
    floored = floor_crop_pipeline(pipeline)
    ours = torch.stack([pipeline(image) for image in images])  # [N, 3, H, W]
    reference = torch.stack([(pipeline if crop_rules_agree(image, pipeline) else floored)(image) for image in images])
    theirs = llava_processor.image_processor(images, return_tensors="pt")["pixel_values"]
    if ours.shape != theirs.shape:
        return float("inf"), float("inf")
    return float((reference - theirs).abs().max()), float((ours - theirs).abs().max())


def _inputs(our_processor, llava_processor, prompts, images, dtype: torch.dtype):
    ours = our_processor(text=prompts, images=images)
    theirs = llava_processor(text=prompts, images=images, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
    if ours["input_ids"].tolist() != theirs["input_ids"].tolist():
        raise AssertionError("the exported processor tokenizes the probe prompts differently from ours")
    ours["pixel_values"] = ours["pixel_values"].to(dtype)
    theirs = {k: theirs[k] for k in ("input_ids", "attention_mask", "pixel_values")}
    theirs["pixel_values"] = theirs["pixel_values"].to(dtype)
    return ours, theirs


@torch.no_grad()
def check_parity(
    model: nn.Module, our_processor, llava: nn.Module, llava_processor, pil_processor, dtype: str, max_new_tokens: int = GREEDY_TOKENS
) -> ParityReport:
    """Compare our model (in the export dtype) with the exported one, reloaded; see the module docstring."""
    torch_dtype = next(llava.parameters()).dtype
    prompts, images = probe_prompts(our_processor)
    ours, theirs = _inputs(our_processor, pil_processor, prompts, images, torch_dtype)
    mask = ours["attention_mask"].bool()  # [B, L]
    reference = model(**ours).logits.float()[mask]  # [N_real, V]
    logits = llava(**theirs).logits.float()[mask]
    logit_diff = float((logits - reference).abs().max())
    bound = LOGIT_TOLERANCE[dtype] * max(1.0, float(reference.abs().max()))
    settings = dict(max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=our_processor.tokenizer.pad_token_id)
    prompt_tokens = ours["input_ids"].shape[1]
    our_tokens = model.generate(**ours, **settings)[:, prompt_tokens:].tolist()
    their_tokens = llava.generate(**theirs, **settings)[:, prompt_tokens:].tolist()
    first = None
    for i, (a, b) in enumerate(zip(our_tokens, their_tokens)):
        where = next((t for t, (x, y) in enumerate(zip(a, b)) if x != y), None)
        if where is not None or len(a) != len(b):
            first = f"prompt {i}, token {where if where is not None else min(len(a), len(b))}"
            break
    checked, raw = pixel_differences(our_processor, pil_processor)
    pipeline = our_processor.image_processor._pixel_pipeline()
    return ParityReport(
        pixel_max_diff=checked,
        pixel_max_diff_raw=raw,
        pixel_max_diff_default=pixel_differences(our_processor, llava_processor)[1],
        pixel_crop_shifted=sum(not crop_rules_agree(image, pipeline) for image in probe_images()),
        logit_max_diff=logit_diff,
        logit_bound=bound,
        greedy_equal=our_tokens == their_tokens,
        greedy_tokens=our_tokens,
        first_difference=first,
    )
