"""The demo's command line: ``vlm demo`` (``add_arguments``, ``run``) and ``python -m apps.demo``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from apps.demo.profiles import DEFAULT_NLVR_DATA
from apps.demo.recipe import build_tiny_llm, run_demo
from apps.demo.step import DemoError


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--workdir", type=Path, default=Path("runs/demo"),
                        help="where every step writes (default: runs/demo; --quick: runs/demo-quick)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny models and a few steps (~3 min): checks the pipeline, not the accuracy")
    parser.add_argument("--fresh", action="store_true", help="delete --workdir first and run every step again")
    parser.add_argument("--recipe", choices=["shapes", "nlvr"], default="shapes",
                        help="shapes (default): the synthetic demo. nlvr: from the shapes run's CLIP and stage 1 in the same "
                        "--workdir (run or reused), stage 2 on NLVR v1 dev, evaluated on NLVR test against the majority class "
                        "and the base LLM without images")
    parser.add_argument("--nlvr-data", type=Path, default=DEFAULT_NLVR_DATA,
                        help=f"folder holding NLVR v1's dev/ and test/ as released (default: {DEFAULT_NLVR_DATA})")
    parser.add_argument("--stage1-steps", type=int, metavar="N",
                        help="stage-1 steps instead of the profile's (full: 20 of 8 captions; quick: 4)")
    parser.add_argument("--stage2-steps", type=int, metavar="N",
                        help="the recipe's stage-2 steps instead of the profile's (shapes full: 64 of 8 conversations, "
                        "nlvr full: 90 of 8; quick: 4 and 3). The defaults are sized for a 2-core CPU and do not reach "
                        "the accuracy targets (see the README); with more time, raise them. A workdir that "
                        "finished a step with other numbers refuses to mix: use another --workdir or --fresh")
    parser.add_argument("--procs", type=int, metavar="N",
                        help="stage-2 processes under DeepSpeed ZeRO-2 (default: one per GPU up to 2 when torch sees CUDA, "
                        "else 2 CPU processes sharing the cores). A step sees the same conversations whatever N is (each "
                        "process takes its share), so N must divide them (full: 8, quick: 4). Where CUDA is seen the CLIP "
                        "trains on it too; stage 1, stage 2 and eval use it by themselves")
    return parser


def run(args: argparse.Namespace) -> int:
    workdir = args.workdir
    if args.quick and workdir == Path("runs/demo"):
        workdir = Path("runs/demo-quick")
    try:
        run_demo(workdir, quick=args.quick, fresh=args.fresh, recipe=args.recipe, nlvr_data=args.nlvr_data,
                 stage1_steps=args.stage1_steps, stage2_steps=args.stage2_steps, procs=args.procs)
    except DemoError as err:
        print(f"vlm demo: error: {err}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m apps.demo")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("run", help="the demo (same as vlm demo)")
    add_arguments(demo)
    tiny = commands.add_parser("tiny-llm", help="write the --quick demo's tiny LLM (random weights, SmolLM2's tokenizer)")
    tiny.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.command == "tiny-llm":
        print(build_tiny_llm(args.out))
        return 0
    return run(args)
