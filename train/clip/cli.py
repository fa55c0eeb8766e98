"""``python -m train.clip {csv,train}``: the command line of ``write_clip_csv`` and ``train_clip``."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from train.clip.folder import DEFAULT_MODEL_CONFIG
from train.clip.pairs import write_clip_csv
from train.clip.training import train_clip

_DESCRIPTION = "Train a small CLIP offline with open_clip's own trainer, for use as a frozen vision tower."


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.clip", description=_DESCRIPTION)
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
