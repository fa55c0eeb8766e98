"""What a frozen vision tower's patch tokens say about the shapes: linear and MLP probes.

Usage::

    python -m benchmarks.probe_tower --data runs/demo/data --max-shapes 4 \\
        --tower local-dir:runs/demo/clip --tower random:local-dir:runs/demo/clip

For every shape of the shapes dataset's training scenes, the tower's tokens (block
``--feature-layer``, as the VLM reads them) at the patch holding the shape's centre and the mean
of its 3x3 patch neighbourhood are one probe input; a linear and a one-hidden-layer MLP probe learn
the shape's kind (5 classes) and colour (7) on the first ``--train`` scenes and are scored on the
next ``--test`` scenes (other images). ``random:TOWER`` is the same architecture with open_clip's
random initialisation: what a tower keeps without any training. A contrastively trained tower
scoring below the random one has learnt to drop what its captions did not need.

The scenes are re-drawn from ``--seed`` and ``--max-shapes`` (what ``vlm data shapes`` was given)
and checked against the PNGs, so a mismatch stops the run instead of probing wrong labels.
Prints a markdown table; ``--out`` also writes it as JSON.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from eval.shapes import COLORS, IMAGE_SIZE, KINDS, SceneConfig, render, sample_scene, scene_seed
from vision import load_vision_tower
from vision.tower import LOCAL_DIR_SCHEMA, read_local_dir
from vlm.atomic import atomic_write_json
from vlm.image_processing import VLMImageProcessor

RANDOM_PREFIX = "random:"
TARGETS = {"kind": KINDS, "color": tuple(COLORS)}


def build_tower(spec: str, feature_layer: int):
    """``local-dir:FOLDER`` (trained weights), ``random:local-dir:FOLDER`` (same config, random init)."""
    if spec.startswith(RANDOM_PREFIX):
        name = spec[len(RANDOM_PREFIX):]
        if not name.startswith(LOCAL_DIR_SCHEMA):
            raise ValueError(f"--tower {spec!r}: random: takes a local-dir:FOLDER tower")
        model_config, preprocess, _ = read_local_dir(name, None)
        torch.manual_seed(0)
        return load_vision_tower(None, model_config=model_config, feature_layer=feature_layer, preprocess=preprocess)
    return load_vision_tower(spec, feature_layer=feature_layer)


def shape_features(tower, data: Path, seed: int, config: SceneConfig, indices: Sequence[int],
                   batch_size: int = 32, desc: str = "") -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Probe inputs (one row per shape: centre patch token ++ 3x3 mean) and their labels."""
    processor = VLMImageProcessor.from_vision_config(tower.vision_config)
    grid = tower.visual.grid_size[0]
    rows: list[torch.Tensor] = []
    labels: dict[str, list[int]] = {name: [] for name in TARGETS}
    indices = list(indices)
    for start in tqdm(range(0, len(indices), batch_size), desc=desc, unit="batch", file=sys.stderr, leave=False):
        scenes, images = [], []
        for index in indices[start:start + batch_size]:
            scene = sample_scene(scene_seed(seed, "train", index), config)
            path = data / "images" / f"train_s{seed}_{index:06d}.png"
            if not path.is_file():
                raise FileNotFoundError(f"{path} is missing: --train + --test ({indices[-1] + 1}) exceeds the dataset's --n")
            image = Image.open(path).convert("RGB")
            if not np.array_equal(np.asarray(image), np.asarray(render(scene))):
                raise ValueError(f"{path} is not the scene drawn from --seed {seed} --max-shapes {config.max_shapes}: "
                                 "pass the values the dataset was generated with")
            scenes.append(scene)
            images.append(image)
        with torch.no_grad():
            tokens = tower(processor(images, return_tensors="pt")["pixel_values"]).float()
        for scene, image_tokens in zip(scenes, tokens, strict=True):
            patches = image_tokens.view(grid, grid, -1)
            for s in scene.shapes:
                r, c = min(s.cy * grid // IMAGE_SIZE, grid - 1), min(s.cx * grid // IMAGE_SIZE, grid - 1)
                around = patches[max(r - 1, 0):r + 2, max(c - 1, 0):c + 2].mean(dim=(0, 1))
                rows.append(torch.cat([patches[r, c], around]))
                labels["kind"].append(KINDS.index(s.kind))
                labels["color"].append(TARGETS["color"].index(s.color))
    return torch.stack(rows), {name: torch.tensor(values) for name, values in labels.items()}


def fit_probe(x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor, y_test: torch.Tensor,
              classes: int, hidden: int = 0, steps: int = 300, lr: float = 1e-2) -> dict[str, float]:
    """Full-batch Adam on standardised inputs; ``hidden`` > 0 adds one GELU layer. Returns accuracies."""
    torch.manual_seed(0)
    mean, std = x_train.mean(dim=0), x_train.std(dim=0) + 1e-5
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    dim = x_train.shape[1]
    probe = (torch.nn.Sequential(torch.nn.Linear(dim, hidden), torch.nn.GELU(), torch.nn.Linear(hidden, classes))
             if hidden else torch.nn.Linear(dim, classes))
    optimizer = torch.optim.Adam(probe.parameters(), lr=lr, weight_decay=1e-4)
    for _ in range(steps):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(probe(x_train), y_train).backward()
        optimizer.step()
    with torch.no_grad():
        return {"train": (probe(x_train).argmax(1) == y_train).float().mean().item(),
                "test": (probe(x_test).argmax(1) == y_test).float().mean().item()}


def probe_tower(spec: str, data: Path, seed: int, max_shapes: int, n_train: int, n_test: int,
                feature_layer: int = -2, hidden: int = 512) -> dict[str, Any]:
    tower = build_tower(spec, feature_layer)
    config = SceneConfig(max_shapes=max_shapes)
    x_train, y_train = shape_features(tower, data, seed, config, range(n_train), desc=f"{spec} train")
    x_test, y_test = shape_features(tower, data, seed, config, range(n_train, n_train + n_test), desc=f"{spec} test")
    result: dict[str, Any] = {"tower": spec, "train_shapes": len(x_train), "test_shapes": len(x_test)}
    for target, classes in TARGETS.items():
        for probe, width in (("linear", 0), ("mlp", hidden)):
            accuracy = fit_probe(x_train, y_train[target], x_test, y_test[target], len(classes), hidden=width)
            result[f"{target}_{probe}"] = accuracy["test"]
    return result


def render_table(results: list[dict[str, Any]]) -> str:
    lines = ["| tower | test shapes | kind, linear | kind, MLP | colour, linear | colour, MLP |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r['tower']} | {r['test_shapes']} | {100 * r['kind_linear']:.1f} | {100 * r['kind_mlp']:.1f} "
                     f"| {100 * r['color_linear']:.1f} | {100 * r['color_mlp']:.1f} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.probe_tower", description=__doc__.split("\n\n")[0],
                                     epilog="Accuracies are % of held-out shapes; chance is 20% for kind, 14% for colour.")
    parser.add_argument("--data", type=Path, required=True, help="a `vlm data shapes` folder (its images/ are read)")
    parser.add_argument("--tower", action="append", required=True,
                        help="local-dir:FOLDER, or random:local-dir:FOLDER for its architecture untrained; repeatable")
    parser.add_argument("--seed", type=int, default=0, help="the dataset's --seed (default: 0)")
    parser.add_argument("--max-shapes", type=int, default=6, help="the dataset's --max-shapes (default: 6)")
    parser.add_argument("--train", type=int, default=1200, help="training scenes of the probes (default: 1200)")
    parser.add_argument("--test", type=int, default=400, help="held-out scenes, after the training ones (default: 400)")
    parser.add_argument("--feature-layer", type=int, default=-2, help="the tower block read (default: -2, as the VLM)")
    parser.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    if args.train < 1 or args.test < 1:
        parser.error("--train and --test must be >= 1")
    if not (args.data / "images").is_dir():
        parser.error(f"--data {args.data} has no images/ folder: pass a folder written by `vlm data shapes --out`")
    results = []
    for spec in args.tower:
        try:
            results.append(probe_tower(spec, args.data, args.seed, args.max_shapes, args.train, args.test, args.feature_layer))
        except (FileNotFoundError, ValueError) as err:
            print(f"probe_tower: error: {err}", file=sys.stderr)
            return 1
    table = render_table(results)
    print(table)
    if args.out is not None:
        atomic_write_json(args.out, {"results": results, "table": table})
    return 0


if __name__ == "__main__":
    sys.exit(main())
