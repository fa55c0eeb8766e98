"""``vlm train CONFIG.yaml [key=value ...]`` (also ``python -m train ...``)."""

from __future__ import annotations

import argparse
import os
import sys

DESCRIPTION = """Train a VLM in stages from a YAML config plus key=value overrides.

  stage 1 (pretrain): only the projector learns, on image captions;
  stage 2 (sft):      projector + LLM (full, or LoRA with lora=true, or QLoRA: LoRA on the
                      LLM quantized on load, quantization=nf4|fp4|int8, pip install -e .[qlora])
                      on instructions, starting from stage 1's output (init_from=RUN/model).

Shipped configs: pretrain, sft, sft_lora, sft_qlora (train/configs/*.yaml); DeepSpeed: deepspeed=zero2|zero3|zero3_offload.
Single process:  vlm train pretrain data=[captions.json] output_dir=runs/stage1
DeepSpeed ZeRO:  deepspeed --num_gpus 2 --module train sft_lora init_from=runs/stage1/model deepspeed=zero2 ...
Resume:          add resume=true (continues from the latest complete checkpoint)."""


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="python -m train")
    parser.description = DESCRIPTION
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("config", nargs="?", help="YAML file or shipped name (pretrain, sft, sft_lora, sft_qlora)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="override any config field")
    parser.add_argument("--help-config", action="store_true", help="list every config field with its default and meaning")
    parser.add_argument("--skip-bad-samples", action="store_true", help="same as skip_bad_samples=true: skip and count bad records")
    parser.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # set by the deepspeed launcher
    return parser


def run(args: argparse.Namespace) -> int:
    from train.config import describe_fields, load_config

    if args.help_config:
        print(describe_fields())
        return 0
    if args.config is None:
        raise ValueError("give a config: a YAML file or one of pretrain, sft, sft_lora, sft_qlora (see --help)")
    overrides = list(args.overrides) + (["skip_bad_samples=true"] if args.skip_bad_samples else [])
    cfg = load_config(args.config, overrides)
    from train.run import run_training

    run_training(cfg)
    return 0


def main(argv: list[str] | None = None) -> int:
    from vlm.atomic import OutputBusyError, OutputWriteError

    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except (FileExistsError, FileNotFoundError, ValueError, OutputWriteError, OutputBusyError) as err:
        if os.environ.get("RANK", "0") == "0":  # every process fails alike; say it once
            print(f"train: error: {err}", file=sys.stderr)
        return 2
