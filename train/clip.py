"""Train a small CLIP offline with open_clip's own trainer, for use as a frozen vision tower.

No pretrained CLIP downloads here, so the offline recipe trains one contrastively on
image-caption pairs (e.g. the synthetic shapes captions):

    captions.json (LLaVA format) --write_clip_csv--> clip.csv (filepath <TAB> title)
        --train_clip--> open_clip_train.main (--dataset-type csv, fp32)
        --> OUT/open_clip_model.safetensors + OUT/open_clip_config.json

``OUT`` is an open_clip "local-dir" model folder: ``open_clip.create_model("local-dir:OUT")``
loads the whole CLIP, and ``vision.load_vision_tower(None, pretrained=OUT/open_clip_model.safetensors,
model_config=...)`` the frozen image tower. The folder appears complete or not at all; calling
``train_clip`` again with the same arguments reuses it.

Also runnable as ``python -m train.clip {csv,train} ...`` (``--help`` for the options).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import importlib.util
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vlm.atomic import atomic_directory, atomic_file, atomic_write_json

DEFAULT_MODEL_CONFIG = Path(__file__).parent / "configs" / "clip_vit_tiny.json"
WEIGHTS_NAME = "open_clip_model.safetensors"  # the first name open_clip's local-dir loader looks for
CONFIG_NAME = "open_clip_config.json"  # open_clip's local-dir config: {"model_cfg": ..., "preprocess_cfg": ...}
RECORD_NAME = "train_clip.json"  # what was asked for (compared on reuse) and what the run measured
CSV_IMAGE_KEY = "filepath"  # open_clip_train's default --csv-img-key
CSV_CAPTION_KEY = "title"  # open_clip_train's default --csv-caption-key
CSV_SEPARATOR = "\t"  # open_clip_train's default --csv-separator
# Only a crop of the whole image: a shapes caption names absolute positions ("at the top left"),
# which open_clip's default RandomResizedCrop(scale=(0.9, 1)) would move.
DEFAULT_AUGMENTATION = {"scale": (1.0, 1.0)}

# open_clip_train.main parses its own argv; the model config has to be registered in the same
# process first. A separate Python process keeps the trainer's side effects out of ours: it adds
# handlers to the root logger and sets every logger to INFO on each call, reseeds the global
# RNGs, and calls exit(1) on some errors.
_LAUNCHER = (
    "import sys, open_clip; open_clip.add_model_config(sys.argv[1]); "
    "from open_clip_train.main import main; sys.exit(main(sys.argv[2:]))"
)


def write_clip_csv(
    captions_json: str | os.PathLike,
    image_root: str | os.PathLike | None,
    out_csv: str | os.PathLike,
    separator: str = CSV_SEPARATOR,
    drop_words: Sequence[str] = (),
) -> Path:
    """Turn a LLaVA-format captions file into open_clip_train's CSV, atomically.

    Each record's image becomes an absolute ``filepath`` (open_clip opens it relative to its
    working directory) and its first ``gpt`` turn, stripped, the ``title``. Fields are quoted as
    needed, so captions holding the separator or quotes survive pandas' ``read_csv``.

    Args:
        captions_json: a JSON list of ``{"image": ..., "conversations": [{"from": "human", ...},
            {"from": "gpt", "value": caption}]}`` records (``write_shapes_dataset``'s captions.json).
        image_root: the folder the records' image paths are relative to; ``None`` means the
            captions file's own folder (the shapes layout).
        out_csv: the CSV to write.
        separator: the field separator; pass the same to ``train_clip`` (open_clip's
            ``--csv-separator``, tab by default).
        drop_words: whole words (case-insensitive) removed from every caption. A contrastive
            objective learns only what it needs to tell a batch's captions apart: on the shapes
            captions, colour names alone almost always suffice, so the tower learns colour and
            loses shape. Dropping the colour names makes it tell scenes apart by shape, size,
            count and position; colour stays readable from the patch tokens of any tower.

    Returns:
        ``out_csv`` as a Path.
    """
    captions_json = Path(captions_json)
    image_root = (Path(image_root) if image_root is not None else captions_json.parent).absolute()
    records = json.loads(captions_json.read_text(encoding="utf-8"))
    drop = re.compile(r"\b(?:" + "|".join(map(re.escape, drop_words)) + r")\b *", re.IGNORECASE) if drop_words else None
    if not isinstance(records, list) or not records:
        raise ValueError(f"{captions_json}: expected a non-empty JSON list of LLaVA records")
    rows = []
    for i, record in enumerate(records):
        where = f"record {i} (id {record.get('id', '?')!r}) in {captions_json}"
        if not record.get("image"):
            raise ValueError(f"{where} has no 'image'; a CLIP needs an image for every caption")
        if not isinstance(record["image"], str):
            raise ValueError(f"{where}: 'image' must be one path, got {record['image']!r}")
        caption = next(
            (turn.get("value") for turn in record.get("conversations", []) if turn.get("from") == "gpt"), None
        )
        if not caption or not caption.strip():
            raise ValueError(f"{where} has no 'gpt' turn with a caption")
        image = image_root / record["image"]
        if not image.is_file():
            raise FileNotFoundError(f"{where}: image {record['image']} not found under {image_root}")
        caption = caption.strip()
        if drop is not None:
            caption = drop.sub("", caption).strip()
            if not caption:
                raise ValueError(f"{where}: nothing of the caption is left after dropping {list(drop_words)}")
        rows.append((str(image), caption))
    with atomic_file(out_csv, "w") as handle:
        writer = csv.writer(handle, delimiter=separator, lineterminator="\n")
        writer.writerow((CSV_IMAGE_KEY, CSV_CAPTION_KEY))
        writer.writerows(rows)
    return Path(out_csv)


def train_clip(
    csv_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    model_config: dict[str, Any] | str | os.PathLike = DEFAULT_MODEL_CONFIG,
    epochs: int = 10,
    batch_size: int = 64,
    lr: float = 5e-4,
    seed: int = 0,
    workers: int = 0,
    *,
    warmup: int | None = None,
    weight_decay: float = 0.1,
    model_name: str | None = None,
    val_csv: str | os.PathLike | None = None,
    pretrained: str | os.PathLike | None = None,
    augmentation: dict[str, Any] | None = None,
    precision: str = "fp32",
    device: str = "cpu",
    separator: str = CSV_SEPARATOR,
    log_every_n_steps: int = 10,
    keep_checkpoint: bool = False,
    extra_args: Sequence[str] = (),
    overwrite: bool = False,
) -> Path:
    """Train a CLIP with ``open_clip_train.main`` on a CSV and return its clean weights file.

    Args:
        csv_path: open_clip CSV with ``filepath`` and ``title`` columns (see ``write_clip_csv``).
        out_dir: output folder; it appears only once training and export are complete.
        model_config: an open_clip model config (dict or JSON file: ``embed_dim``,
            ``vision_cfg``, ``text_cfg``); defaults to the 4-layer, 192-wide ViT-16 of
            ``train/configs/clip_vit_tiny.json``.
        epochs, batch_size, lr, seed, workers: open_clip's ``--epochs``, ``--batch-size``,
            ``--lr``, ``--seed``, ``--workers``. The last partial batch of an epoch is dropped.
        warmup: linear warm-up steps; ``None`` is 10% of all steps (open_clip's own default,
            10,000, exceeds a small run).
        weight_decay: AdamW weight decay (``--wd``).
        model_name: the name the config is registered under; defaults to the config file's
            stem, or ``clip-custom`` for a dict.
        val_csv: optional held-out CSV; open_clip then logs retrieval metrics after each
            epoch and the last ones go into ``train_clip.json``.
        pretrained: optional initial weights file (``--pretrained``) to continue from.
        augmentation: open_clip's ``--aug-cfg`` (``AugmentationCfg`` fields); by default the
            whole image is kept (see ``DEFAULT_AUGMENTATION``).
        precision: open_clip's ``--precision``. Keep ``fp32`` on CPUs without AMX, where bf16
            matrix products are far slower than fp32.
        device: open_clip's ``--device``.
        separator: the CSV field separator (``--csv-separator``).
        log_every_n_steps: how often the trainer logs progress (to stderr and ``logs/*/out.log``).
        keep_checkpoint: keep open_clip's final ``epoch_N.pt`` (with optimizer state, for
            ``--resume``); by default only the exported weights are kept.
        extra_args: more ``open_clip_train.main`` arguments, passed last.
        overwrite: replace an existing ``out_dir`` trained with other arguments.

    Returns:
        ``out_dir/open_clip_model.safetensors``: the full CLIP state dict (``visual.*``,
        text tower, ``logit_scale``), fp32, no ``module.`` prefixes.
    """
    _require_training_extra()
    out_dir = Path(out_dir).absolute()
    config, name = _resolve_model_config(model_config, model_name)
    csv_path = Path(csv_path).absolute()
    if val_csv is not None:
        val_csv = Path(val_csv).absolute()
    num_rows = _count_csv_rows(csv_path, separator)
    if val_csv is not None:
        _count_csv_rows(val_csv, separator)
    for key, value in (("epochs", epochs), ("batch_size", batch_size), ("log_every_n_steps", log_every_n_steps)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"train_clip: {key} must be a positive int, got {value!r}")
    steps_per_epoch = num_rows // batch_size
    if steps_per_epoch == 0:
        raise ValueError(
            f"{csv_path} has {num_rows} rows, fewer than batch_size={batch_size}: open_clip drops the last "
            "partial batch, so nothing would be trained; lower batch_size"
        )
    total_steps = steps_per_epoch * epochs
    warmup = max(1, total_steps // 10) if warmup is None else warmup
    augmentation = dict(DEFAULT_AUGMENTATION if augmentation is None else augmentation)

    request = _json_roundtrip(
        {
            "model_name": name,
            "model_config": config,
            "train_csv": str(csv_path),
            "train_csv_sha256": _sha256(csv_path),
            "val_csv": None if val_csv is None else str(val_csv),
            "pretrained": None if pretrained is None else str(Path(pretrained).absolute()),
            "epochs": epochs,
            "batch_size": batch_size,
            "lr": lr,
            "warmup": warmup,
            "weight_decay": weight_decay,
            "seed": seed,
            "augmentation": augmentation,
            "precision": precision,
            "separator": separator,
            "extra_args": list(extra_args),
        }
    )
    weights = out_dir / WEIGHTS_NAME
    if out_dir.exists() and not overwrite:
        return _reuse(out_dir, request)

    with atomic_directory(out_dir, overwrite=overwrite) as staging:
        config_dir = staging / "model_configs"
        config_dir.mkdir()
        atomic_write_json(config_dir / f"{name}.json", config)
        logs = staging / "logs"
        args = [
            "--train-data",
            str(csv_path),
            "--dataset-type",
            "csv",
            "--csv-separator",
            separator,
            "--csv-img-key",
            CSV_IMAGE_KEY,
            "--csv-caption-key",
            CSV_CAPTION_KEY,
            "--model",
            name,
            "--epochs",
            str(epochs),
            "--batch-size",
            str(batch_size),
            "--lr",
            str(lr),
            "--warmup",
            str(warmup),
            "--wd",
            str(weight_decay),
            "--seed",
            str(seed),
            "--workers",
            str(workers),
            "--precision",
            precision,
            "--device",
            device,
            "--logs",
            str(logs),
            "--name",
            name,
            "--save-frequency",
            "0",  # 0: only the final epoch_N.pt is written
            "--report-to",
            "",
            "--log-every-n-steps",
            str(log_every_n_steps),
            "--aug-cfg",
            *(f"{key}={value!r}".replace(" ", "") for key, value in augmentation.items()),
        ]
        if val_csv is not None:
            args += ["--val-data", str(val_csv)]
        if pretrained is not None:
            args += ["--pretrained", request["pretrained"]]
        args += list(extra_args)

        print(
            f"train_clip: {name} on {num_rows} pairs, {epochs} epochs x {steps_per_epoch} steps of {batch_size}, "
            f"open_clip_train.main {' '.join(args)}",
            file=sys.stderr,
            flush=True,
        )
        run_dir = logs / name
        started = time.perf_counter()
        # The trainer's log lines go to stderr (its logging handler); its few prints to stdout
        # are sent there too, so a caller's stdout stays clean.
        result = subprocess.run([sys.executable, "-c", _LAUNCHER, str(config_dir), *args], stdout=2, check=False)
        wall_seconds = time.perf_counter() - started
        checkpoint = run_dir / "checkpoints" / f"epoch_{epochs}.pt"
        if result.returncode != 0 or not checkpoint.is_file():
            raise RuntimeError(
                f"open_clip_train.main exited with status {result.returncode} and "
                f"{'wrote' if checkpoint.is_file() else 'did not write'} {checkpoint.name}; its output is above. "
                f"Last log lines:\n{_tail(run_dir / 'out.log')}"
            )

        _export_weights(checkpoint, staging / WEIGHTS_NAME, config, name)
        atomic_write_json(staging / CONFIG_NAME, {"model_cfg": config, "preprocess_cfg": _preprocess_cfg(config)})
        summary = {"wall_seconds": round(wall_seconds, 1), **_summarise_log(run_dir, batch_size)}
        # The arguments as they read once the staging folder has become out_dir.
        final_args = [arg.replace(str(staging), str(out_dir)) for arg in args]
        atomic_write_json(
            staging / RECORD_NAME, {"request": request, "open_clip_train_args": final_args, "summary": summary}
        )
        if not keep_checkpoint:
            checkpoint.unlink()  # weights + AdamW state, 3x the exported file
        print(f"train_clip: done in {wall_seconds:.0f} s: {summary}", file=sys.stderr, flush=True)
    return weights


def load_model_config(model_config: dict[str, Any] | str | os.PathLike = DEFAULT_MODEL_CONFIG) -> dict[str, Any]:
    """An open_clip model config from a dict, a JSON file, or a ``train_clip`` output folder."""
    return _resolve_model_config(model_config, None)[0]


def _resolve_model_config(model_config: dict[str, Any] | str | os.PathLike, model_name: str | None) -> tuple[dict, str]:
    if isinstance(model_config, dict):
        config, default_name = json.loads(json.dumps(model_config)), "clip-custom"
    else:
        path = Path(model_config)
        if path.is_dir():  # a train_clip output / open_clip local-dir folder
            config, default_name = json.loads((path / CONFIG_NAME).read_text(encoding="utf-8"))["model_cfg"], path.name
        else:
            config, default_name = json.loads(path.read_text(encoding="utf-8")), path.stem
    missing = [key for key in ("embed_dim", "vision_cfg", "text_cfg") if key not in config]
    if missing:
        raise ValueError(f"CLIP model config {model_config!r} lacks {missing} (see open_clip's model_configs/*.json)")
    name = model_name or default_name
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise ValueError(f"model_name {name!r} must be letters, digits, '.', '_' or '-' (it becomes a file name)")
    return config, name


def _count_csv_rows(path: Path, separator: str) -> int:
    import pandas as pd  # what open_clip's CsvDataset reads the file with

    if not path.is_file():
        raise FileNotFoundError(f"CLIP training CSV {path} not found; write it with write_clip_csv")
    frame = pd.read_csv(path, sep=separator)
    missing = [key for key in (CSV_IMAGE_KEY, CSV_CAPTION_KEY) if key not in frame.columns]
    if missing:
        raise ValueError(f"{path}: columns {list(frame.columns)} lack {missing} (separator {separator!r})")
    return len(frame)


def _reuse(out_dir: Path, request: dict[str, Any]) -> Path:
    record_path, weights = out_dir / RECORD_NAME, out_dir / WEIGHTS_NAME
    if not record_path.is_file() or not weights.is_file():
        raise FileExistsError(f"{out_dir} exists but is not a train_clip output; choose another folder")
    previous = json.loads(record_path.read_text(encoding="utf-8"))["request"]
    changed = sorted(key for key in request.keys() | previous.keys() if request.get(key) != previous.get(key))
    if changed:
        details = "; ".join(f"{key}: {previous.get(key)!r} -> {request.get(key)!r}" for key in changed[:4])
        raise FileExistsError(
            f"{out_dir} was trained with other arguments ({details}); choose another folder or pass overwrite=True"
        )
    print(f"train_clip: reusing {weights}", file=sys.stderr, flush=True)
    return weights


def _export_weights(checkpoint: Path, target: Path, config: dict[str, Any], name: str) -> None:
    """open_clip's training checkpoint -> the bare fp32 state dict as safetensors."""
    import torch
    from safetensors.torch import save_file

    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    state = {key.removeprefix("module."): value.detach().float().contiguous() for key, value in state.items()}
    if not any(key.startswith("visual.") for key in state):
        raise RuntimeError(f"{checkpoint} holds no visual.* weights; keys start {sorted(state)[:3]}")
    save_file(state, str(target), metadata={"format": "pt", "model_name": name, "open_clip_config": json.dumps(config)})
    os.chmod(target, 0o644)  # as vlm.atomic's files: outputs are meant to be shared


def _preprocess_cfg(config: dict[str, Any]) -> dict[str, Any]:
    # What open_clip_train trained with: no --image-mean/--image-std, so open_clip's defaults.
    import open_clip

    return {
        "size": config["vision_cfg"]["image_size"],
        "mean": list(open_clip.OPENAI_DATASET_MEAN),
        "std": list(open_clip.OPENAI_DATASET_STD),
        "interpolation": "bicubic",
        "resize_mode": "shortest",
    }


# "Train Epoch: 3 [2944/3000 (100%)] Data (t): 0.010 Batch (t): 0.800, 80.0/s ... Contrastive_loss: 1.2 (1.4)"
_EPOCH_END = re.compile(
    r"Train Epoch: (\d+) \[.*\(100%\)\] Data \(t\): ([\d.]+) Batch \(t\): ([\d.]+),.*Contrastive_loss: \S+ \(([\d.e+-]+)\)"
)


def _summarise_log(run_dir: Path, batch_size: int) -> dict[str, Any]:
    """Throughput and loss per epoch from the trainer's log, and its last validation metrics."""
    summary: dict[str, Any] = {}
    log = run_dir / "out.log"
    epochs = [m.groups() for m in _EPOCH_END.finditer(log.read_text(encoding="utf-8"))] if log.is_file() else []
    if epochs:
        # Batch (t) is the mean wall time per step since the previous log line, data loading included.
        summary["images_per_second"] = [round(batch_size / float(batch_t), 1) for _, _, batch_t, _ in epochs]
        summary["contrastive_loss"] = [round(float(loss), 4) for *_, loss in epochs]
    results = run_dir / "checkpoints" / "results.jsonl"
    if results.is_file():
        lines = results.read_text(encoding="utf-8").splitlines()
        if lines:
            summary["val"] = json.loads(lines[-1])
    return summary


def _require_training_extra() -> None:
    missing = [
        module for module in ("open_clip_train", "pandas", "webdataset") if importlib.util.find_spec(module) is None
    ]
    if missing:
        raise ImportError(f"training a CLIP needs {missing}: pip install 'open_clip_torch[training]'")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _json_roundtrip(obj: Any) -> Any:
    return json.loads(json.dumps(obj))  # tuples -> lists, so a reloaded record compares equal


def _tail(path: Path, lines: int = 20) -> str:
    if not path.is_file():
        return f"(no {path})"
    return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.clip", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    to_csv = commands.add_parser("csv", help="LLaVA captions.json -> open_clip CSV")
    to_csv.add_argument("captions_json", type=Path)
    to_csv.add_argument("out_csv", type=Path)
    to_csv.add_argument(
        "--image-root", type=Path, default=None, help="folder of the image paths (default: the JSON's folder)"
    )
    to_csv.add_argument(
        "--drop-words", nargs="+", default=(), metavar="WORD",
        help="whole words removed from every caption (e.g. the shapes colour names, so the CLIP must learn shape "
        "to match captions, not colour alone)",
    )

    train = commands.add_parser("train", help="train a CLIP with open_clip_train on a CSV")
    train.add_argument("csv", type=Path, help="open_clip CSV (filepath, title)")
    train.add_argument("out_dir", type=Path)
    train.add_argument("--model-config", default=str(DEFAULT_MODEL_CONFIG), help="open_clip model config JSON")
    train.add_argument("--model-name", default=None)
    train.add_argument("--epochs", type=int, default=10)
    train.add_argument("--batch-size", type=int, default=64)
    train.add_argument("--lr", type=float, default=5e-4)
    train.add_argument("--warmup", type=int, default=None, help="warm-up steps (default: 10%% of all steps)")
    train.add_argument("--weight-decay", type=float, default=0.1)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--workers", type=int, default=0)
    train.add_argument("--val-csv", type=Path, default=None)
    train.add_argument("--precision", default="fp32")
    train.add_argument("--device", default="cpu")
    train.add_argument("--keep-checkpoint", action="store_true")
    train.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)

    if args.command == "csv":
        print(write_clip_csv(args.captions_json, args.image_root, args.out_csv, drop_words=args.drop_words))
        return 0
    weights = train_clip(
        args.csv,
        args.out_dir,
        args.model_config,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        workers=args.workers,
        warmup=args.warmup,
        weight_decay=args.weight_decay,
        model_name=args.model_name,
        val_csv=args.val_csv,
        precision=args.precision,
        device=args.device,
        keep_checkpoint=args.keep_checkpoint,
        overwrite=args.overwrite,
    )
    print(weights)
    return 0


if __name__ == "__main__":
    sys.exit(main())
