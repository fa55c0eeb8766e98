"""Training the CLIP: open_clip_train in its own process, reused when asked again, its log summarised."""

from __future__ import annotations

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

from train.clip.folder import (
    CONFIG_NAME,
    DEFAULT_MODEL_CONFIG,
    RECORD_NAME,
    WEIGHTS_NAME,
    export_weights,
    preprocess_cfg,
    resolve_model_config,
)
from train.clip.pairs import CSV_CAPTION_KEY, CSV_IMAGE_KEY, CSV_SEPARATOR, count_csv_rows
from vlm.atomic import atomic_directory, atomic_write_json
from vlm.digest import file_sha256

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
    config, name = resolve_model_config(model_config, model_name)
    csv_path = Path(csv_path).absolute()
    if val_csv is not None:
        val_csv = Path(val_csv).absolute()
    num_rows = count_csv_rows(csv_path, separator)
    if val_csv is not None:
        count_csv_rows(val_csv, separator)
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
            "train_csv_sha256": file_sha256(csv_path),
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

        export_weights(checkpoint, staging / WEIGHTS_NAME, config, name)
        atomic_write_json(staging / CONFIG_NAME, {"model_cfg": config, "preprocess_cfg": preprocess_cfg(config)})
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


def _json_roundtrip(obj: Any) -> Any:
    return json.loads(json.dumps(obj))  # tuples -> lists, so a reloaded record compares equal


def _tail(path: Path, lines: int = 20) -> str:
    if not path.is_file():
        return f"(no {path})"
    return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
