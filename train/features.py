"""A disk cache of the frozen vision tower's patch tokens, so training runs the tower once per image.

The tower never trains (every stage), so its output for an image is a pure function of the
image's bytes, the tower's weights and config, and the image preprocessing. ``feature_cache=DIR``
in a training config fills ``DIR`` before the first step (one pass over the distinct images,
batched, with a progress bar), then every step reads the tokens back (safetensors, memory
mapped) instead of decoding, preprocessing and encoding images:

    DIR/{tower fingerprint}/{sha256 of the image file}[:2]/{sha256}.safetensors  -> {"features": (T, D_vis)}

The fingerprint hashes the tower's weights, its config, the feature layer and the image
processor's settings, so another tower (or another crop/pad setting) never reads stale tokens;
the image key is the file's content, so a renamed or copied file is found again and an edited
one is not. Each file is written atomically; a killed fill leaves only complete files, and the
next run computes the rest. The features are stored in the tower's float32: training on cached
tokens computes exactly what training on pixels computes.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save
from tqdm import tqdm

from vlm.atomic import atomic_file
from vlm.digest import file_sha256

CACHE_FORMAT = 1


def image_digest(image: Path | bytes) -> str:
    """sha256 of an image file's bytes (or of embedded image bytes)."""
    if isinstance(image, (bytes, bytearray)):
        return hashlib.sha256(image).hexdigest()
    return file_sha256(image)


def tower_fingerprint(vision_tower: torch.nn.Module, image_processor: Any) -> str:
    """sha256 over what decides the tower's output: weights, config, feature layer, preprocessing."""
    digest = hashlib.sha256()
    settings = {
        "format": CACHE_FORMAT,
        "vision_config": getattr(vision_tower, "vision_config", None),
        "feature_layer": getattr(vision_tower, "feature_layer", None),
        "image_processor": image_processor.to_dict() if hasattr(image_processor, "to_dict") else repr(image_processor),
    }
    digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
    for name, tensor in sorted(vision_tower.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(tensor.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class FeatureCache:
    """One tower's cached patch tokens under ``root``."""

    def __init__(self, root: str | Path, fingerprint: str):
        self.root = Path(root)
        self.fingerprint = fingerprint
        self.folder = self.root / fingerprint[:24]

    def path(self, digest: str) -> Path:
        return self.folder / digest[:2] / f"{digest}.safetensors"

    def has(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def load(self, digest: str) -> torch.Tensor:
        return load_file(str(self.path(digest)))["features"]

    def store(self, digest: str, features: torch.Tensor) -> None:
        path = self.path(digest)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(path, "wb") as handle:
            handle.write(save({"features": features.detach().cpu().contiguous()}))


def fill_cache(
    cache: FeatureCache,
    vision_tower: torch.nn.Module,
    image_processor: Any,
    dataset: Any,
    batch_size: int = 16,
    progress: bool = True,
) -> dict[str, int]:
    """Compute and store the tokens of every image of ``dataset`` not cached yet.

    ``dataset`` is a :class:`train.dataset.SupervisedDataset`; its ``image_digests`` are set
    here (one list per sample), which is what switches it to reading the cache. Returns the
    number of distinct images, and how many were computed now.
    """
    digests: list[list[str]] = []
    todo: dict[str, tuple[int, int]] = {}  # digest -> (sample, image index), first occurrence
    for i in tqdm(range(len(dataset)), desc="hashing images", disable=not progress, file=sys.stderr, leave=False):
        sample = dataset.sample(i)
        names = [image_digest(image) for image in sample.images]
        digests.append(names)
        for k, name in enumerate(names):
            if name not in todo and not cache.has(name):
                todo[name] = (i, k)
    distinct = len({name for names in digests for name in names})
    device = next(vision_tower.parameters()).device
    pending = list(todo.items())
    bar = tqdm(total=len(pending), desc="caching image features", unit="img", disable=not progress or not pending, file=sys.stderr)
    with bar, torch.no_grad():
        for start in range(0, len(pending), batch_size):
            chunk = pending[start : start + batch_size]
            images = [dataset.load_image(i, k) for _, (i, k) in chunk]
            pixels = image_processor(images, return_tensors="pt")["pixel_values"].to(device)
            features = vision_tower(pixels).float()
            for (name, _), tokens in zip(chunk, features, strict=True):
                cache.store(name, tokens)
            bar.update(len(chunk))
    dataset.use_feature_cache(cache, digests)
    return {"images": distinct, "computed": len(pending), "reused": distinct - len(pending)}


def stack_features(cache: FeatureCache, digests: Sequence[str]) -> torch.Tensor:
    """The cached tokens of a sample's images, ``(N_img, T, D_vis)``."""
    return torch.stack([cache.load(name) for name in digests])
