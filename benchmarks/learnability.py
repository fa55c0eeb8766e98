"""How fast the LLM side learns the shapes QA: held-out accuracy against training steps.

The demo's stage 2 (SmolLM2-135M + LoRA, 64 steps) answers most shapes questions with the
task's most common answer. This benchmark separates the two suspects, the vision tower and the
LLM-side recipe, at a fraction of the demo's cost: it trains one process on patch tokens computed
once (no tower in the loop), and every ``--eval-every`` steps scores the held-out questions by
teacher forcing, sharing each image's prompt prefix (system text + 196 image tokens) through the
KV cache, so an evaluation costs about one forward per image instead of one per question.

``--tokens tower`` reads the tokens of the run's own vision tower (what the demo trains on).
``--tokens oracle`` replaces them by perfect ones built from the scene each image was drawn from:
each patch that a shape's box covers holds one-hot entries for that shape's colour, kind and size,
the 3x3 cell of the image it lies in, and a flag on the patch of the shape's centre (one per shape,
so counting is reading flags); a recipe that cannot learn from these cannot learn from a real
tower's. The oracle's projector is re-initialised (calibrated to the LLM's embedding norm) and
aligned on captions for ``--stage1-steps`` steps first, as the demo's stage 1 does.

A question counts as right when the argmax at every answer position (the answer's tokens and its
end-of-turn marker) is the reference token: exactly what greedy decoding would produce, so the
scores are ``vlm eval``'s exact match for these one-word answers. Example (a finished
``vlm demo --workdir /tmp/demo`` run holds the data, the CLIP and the stage-1 model)::

    python -m benchmarks.learnability --workdir /tmp/demo --tokens oracle --steps 120 --batch 4 \\
        --lr 2e-3 --eval-every 20 --out /tmp/learn_oracle.json
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from tqdm import tqdm

from benchmarks.learnbench.tokens import oracle_tokens, scene_text, tower_tokens, word_projector
from projector import calibrate_projector
from projector.align import align_projector_to_words
from train.dataset import VLMCollator
from train.labels import IGNORE_INDEX, tokenize_conversation
from train.stages import apply_stage
from vlm.atomic import atomic_write_text
from vlm.modeling import VLMForCausalLM
from vlm.processing import VLMProcessor
from vlm.shared_prefix import common_prefix_length

ROLES = {"human": "user", "gpt": "assistant"}


# --------------------------------------------------------------------------------------- data


def conversation_messages(record: dict[str, Any]) -> list[dict[str, str]]:
    return [{"role": ROLES[turn["from"]], "content": turn["value"]} for turn in record["conversations"]]


def as_text(processor: VLMProcessor, messages: list[dict[str, str]], description: str | None) -> list[dict[str, str]]:
    """With a ``description``, the image tag gives way to it (``--tokens text``: the scene said in words)."""
    if description is None:
        return messages
    return [{**m, "content": m["content"].replace(processor.image_token, f"Image: {description}")} for m in messages]


def with_caption_turns(records: list[dict[str, Any]], captions: list[dict[str, Any]], where: str) -> list[dict[str, Any]]:
    """Each conversation with its image's caption turn (the captions file's prompt and reply) added ``first`` or ``last``."""
    by_image = {Path(c["image"]).stem: c["conversations"] for c in captions}
    out = []
    for record in records:
        caption = by_image.get(Path(record["image"]).stem)
        if caption is None:
            raise SystemExit(f"no caption for {record['image']} in captions.json")
        turns = record["conversations"]
        if where == "last":
            prompt = caption[0]["value"].replace("<image>", "").strip()
            turns = [*turns, {"from": "human", "value": prompt}, caption[1]]
        else:  # the caption opens the conversation and takes the image tag
            first = turns[0]["value"].replace("<image>", "").strip()
            turns = [*caption, {"from": "human", "value": first}, *turns[1:]]
        out.append({**record, "conversations": turns})
    return out


def training_examples(processor: VLMProcessor, records: list[dict[str, Any]], describe=None) -> list[dict[str, Any]]:
    examples = []
    for record in records:
        stem = Path(record["image"]).stem
        messages = as_text(processor, conversation_messages(record), describe(stem) if describe else None)
        tokens = tokenize_conversation(processor, messages)
        examples.append({"input_ids": tokens.input_ids, "labels": tokens.labels, "num_images": tokens.num_images, "stem": stem})
    return examples


def batches(examples: list[dict[str, Any]], features: dict[str, torch.Tensor], batch: int, steps: int, seed: int,
            collate: VLMCollator):
    """``steps`` batches drawn without replacement, epoch after epoch, in a seeded order."""
    rng, order = random.Random(seed), []
    for _ in range(steps):
        picked = []
        while len(picked) < batch:
            if not order:
                order = list(range(len(examples)))
                rng.shuffle(order)
            picked.append(examples[order.pop()])
        yield collate([{**e, "vision_features": features[e["stem"]][None]} if e["num_images"] else e for e in picked])


# ----------------------------------------------------------------------------------- training


def train(model: torch.nn.Module, examples: list[dict[str, Any]], features: dict[str, torch.Tensor], args: SimpleNamespace,
          collate: VLMCollator, on_step=None) -> list[float]:
    """AdamW + linear warmup + cosine decay, gradient clipping at 1; returns the loss of each step.

    The warmup reaches a step's share one step earlier than transformers'
    ``get_cosine_schedule_with_warmup`` (which starts at 0); the README's curves were measured with
    this schedule, so it stays as measured.
    """
    projector = [p for n, p in model.named_parameters() if p.requires_grad and "projector" in n]
    rest = [p for n, p in model.named_parameters() if p.requires_grad and "projector" not in n]
    groups = [{"params": projector, "lr": args.projector_lr}]
    if rest:
        groups.append({"params": rest, "lr": args.lr})
    optimizer = torch.optim.AdamW(groups, weight_decay=0.0)
    warmup = max(1, round(args.warmup * args.steps))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, args.steps - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    losses = []
    model.train()
    bar = tqdm(batches(examples, features, args.batch, args.steps, args.seed, collate), total=args.steps,
               desc=f"training ({args.steps} steps)", file=sys.stderr, disable=not args.steps)
    for step, batch in enumerate(bar, start=1):
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for g in groups for p in g["params"]], 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
        if on_step is not None:
            on_step(step, losses)
    return losses


# --------------------------------------------------------------------------------- evaluation


def eval_items(processor: VLMProcessor, questions: list[dict[str, Any]], describe=None) -> list[dict[str, Any]]:
    """Group the held-out questions by image; tokenize each as a one-turn conversation."""
    by_image: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for q in questions:
        stem = Path(q["image"]).stem
        messages = [{"role": "user", "content": f"{processor.image_token}\n{q['question']}"},
                    {"role": "assistant", "content": q["answer"]}]
        tokens = tokenize_conversation(processor, as_text(processor, messages, describe(stem) if describe else None))
        by_image[stem].append({"task": q["task"], "input_ids": tokens.input_ids, "labels": tokens.labels,
                               "num_images": tokens.num_images})
    return [{"stem": stem, "questions": qs} for stem, qs in by_image.items()]


@torch.no_grad()
def evaluate(model: VLMForCausalLM, items: list[dict[str, Any]], features: dict[str, torch.Tensor], pad_id: int) -> dict[str, Any]:
    """Teacher-forced exact match per task; the image prefix runs once per image (KV cache)."""
    was_training = model.training
    model.eval()
    right: dict[str, list[int]] = defaultdict(list)
    predictions: list[list[int]] = []  # each question's argmax tokens at its answer positions, item order
    for item in items:
        rows = [q["input_ids"] for q in item["questions"]]
        # Every answer lies after its question, so the shared prefix never reaches a label.
        cut = common_prefix_length([r.tolist() for r in rows])
        prefix = rows[0][:cut][None]
        if item["questions"][0]["num_images"]:
            embeds = model.embed_inputs(prefix, None, torch.tensor([1]), features[item["stem"]][None])
        else:
            embeds = model.embed_inputs(prefix)
        cache = model.language_model(inputs_embeds=embeds, use_cache=True).cache
        cache.batch_repeat_interleave(len(rows))
        longest = max(len(r) for r in rows) - cut
        ids = torch.full((len(rows), longest), pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), cut + longest), dtype=torch.long)
        mask[:, :cut] = 1
        for k, r in enumerate(rows):
            ids[k, : len(r) - cut] = r[cut:]
            mask[k, cut : len(r)] = 1
        logits = model.language_model(input_ids=ids, attention_mask=mask, cache=cache).logits  # [B, longest, V]
        for k, q in enumerate(item["questions"]):
            labels = q["labels"][cut:]
            at = (labels != IGNORE_INDEX).nonzero().flatten()
            if int(at.min()) == 0:
                raise AssertionError("an answer token inside the shared prefix")
            predicted = logits[k, at - 1].argmax(-1)
            predictions.append(predicted.tolist())
            right[q["task"]].append(int(torch.equal(predicted, labels[at])))
    model.train(was_training)
    tasks = {task: 100.0 * sum(v) / len(v) for task, v in sorted(right.items())}
    every = [x for v in right.values() for x in v]
    return {"tasks": tasks, "overall": 100.0 * sum(every) / len(every), "questions": len(every), "predictions": predictions}


# ---------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.learnability",
        description=__doc__.split("\n\n")[0] + " Trains one process on precomputed patch tokens and prints a table "
        "of held-out teacher-forced accuracy per task every --eval-every steps.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--workdir", required=True, help="a finished `vlm demo` workdir (data/, stage1/model)")
    parser.add_argument("--init", help="VLM folder to start stage 2 from (default: WORKDIR/stage1/model)")
    parser.add_argument("--tokens", choices=("tower", "oracle", "text"), default="tower",
                        help="patch tokens: the tower's, perfect ones, or none (the scene described in words instead of the image)")
    parser.add_argument("--projector", choices=("keep", "calibrate", "align", "oracle-words"),
                        help="the projector stage 2 starts from: the init's (keep; default for tower tokens), re-initialised "
                             "to the LLM's embedding norm (calibrate; default for oracle tokens), calibrated then aligned "
                             "to the caption words' embeddings (align: projector.align), or, for oracle tokens, mapping "
                             "each channel to its word's embedding (oracle-words: the image as a bag of words)")
    parser.add_argument("--align-steps", type=int, default=300, help="--projector align: steps of the word objective")
    parser.add_argument("--align-images", type=int, default=2400, help="--projector align: captioned images it reads")
    parser.add_argument("--align-lr", type=float, default=3e-3)
    parser.add_argument("--max-shapes", type=int, default=4, help="the demo data's --max-shapes (to rebuild scenes for the oracle)")
    parser.add_argument("--stage1-steps", type=int, help="projector-only caption steps first (default: 20 for oracle, 0 for tower)")
    parser.add_argument("--stage1-batch", type=int, default=8)
    parser.add_argument("--stage1-lr", type=float, default=2e-3)
    parser.add_argument("--stage1-data", choices=("captions", "instruct"), default="captions",
                        help="what the projector-only first steps read: the captions (the demo's stage 1) or the "
                             "stage-2 conversations (the frozen LLM must answer from what the projector gives it)")
    parser.add_argument("--steps", type=int, default=64, help="stage-2 steps")
    parser.add_argument("--batch", type=int, default=8, help="stage-2 conversations per step")
    parser.add_argument("--lr", type=float, default=5e-4, help="LoRA (or, with --lora-r 0, full LLM) learning rate")
    parser.add_argument("--projector-lr", type=float, default=2e-3)
    parser.add_argument("--lora-r", type=int, default=32, help="LoRA rank (alpha = 2 r); 0 trains the whole LLM")
    parser.add_argument("--warmup", type=float, default=0.05, help="warmup fraction of the steps")
    parser.add_argument("--data", help="stage-2 conversations (default: WORKDIR/data/instruct.json)")
    parser.add_argument("--caption-turn", choices=("none", "last", "first"), default="none",
                        help="add the image's caption (WORKDIR/data/captions.json) to each stage-2 conversation as its last "
                             "turn, or as its first (then the later questions can be read from the caption's text)")
    parser.add_argument("--stage1-lora", action="store_true",
                        help="stage 1 trains LoRA with the projector (the same adapter then continues in stage 2), "
                             "instead of the projector alone")
    parser.add_argument("--eval-every", type=int, default=16)
    parser.add_argument("--eval-limit", type=int, help="evaluate on the first N held-out questions only")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="write the curve as JSON here")
    parser.add_argument("--save", help="save the trained model (adapter merged) as a VLM folder here, for `vlm eval` / inspection")
    return parser.parse_args(argv)


def check_inputs(args: argparse.Namespace) -> None:
    """Stop at once, saying what is missing, before any model is loaded."""
    work = Path(args.workdir)
    data = work / "data"
    needed = [Path(args.data) if args.data else data / "instruct.json", data / "eval.json", data / "captions.json"]
    init = Path(args.init) if args.init else work / "stage1" / "model"
    missing = [str(p) for p in needed if not p.is_file()]
    if not (init / "config.json").is_file():
        missing.append(f"{init}/config.json (a saved VLM: the demo's stage-1 model, or --init)")
    if missing:
        raise SystemExit(f"{work} is not a finished `vlm demo` workdir (run `vlm demo --workdir {work}` first); "
                         f"missing: {', '.join(missing)}")
    numbers = {"--steps": (args.steps, 0), "--batch": (args.batch, 1), "--eval-every": (args.eval_every, 1),
               "--stage1-batch": (args.stage1_batch, 1), "--align-steps": (args.align_steps, 1),
               "--align-images": (args.align_images, 2), "--lora-r": (args.lora_r, 0), "--threads": (args.threads, 1)}
    for flag, (value, least) in numbers.items():
        if value < least:
            raise SystemExit(f"{flag} must be >= {least}, got {value}")
    if args.stage1_steps is not None and args.stage1_steps < 0:
        raise SystemExit(f"--stage1-steps must be >= 0, got {args.stage1_steps}")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    check_inputs(args)
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    work = Path(args.workdir)
    data = work / "data"
    init = Path(args.init) if args.init else work / "stage1" / "model"
    stage1_steps = args.stage1_steps if args.stage1_steps is not None else (20 if args.tokens == "oracle" else 0)
    if args.tokens == "text" and stage1_steps:
        raise SystemExit("--tokens text has no image tokens to align: leave --stage1-steps at 0")
    describe = (lambda stem: scene_text(stem, args.max_shapes)) if args.tokens == "text" else None
    model = VLMForCausalLM.from_pretrained(init, dtype=torch.float32)
    processor = VLMProcessor.from_pretrained(init)
    collate = VLMCollator(processor.tokenizer.pad_token_id)
    instruct = json.loads(Path(args.data or data / "instruct.json").read_text())
    questions = json.loads((data / "eval.json").read_text())[: args.eval_limit]
    projector_mode = args.projector or ("calibrate" if args.tokens == "oracle" else "keep")
    if projector_mode == "oracle-words" and args.tokens != "oracle":
        raise SystemExit("--projector oracle-words maps oracle channels to words: it needs --tokens oracle")
    if args.tokens == "text" and projector_mode != "keep":
        raise SystemExit("--tokens text has no image tokens: leave --projector at keep")
    all_captions = json.loads((data / "captions.json").read_text())
    if args.caption_turn != "none":
        instruct = with_caption_turns(instruct, all_captions, args.caption_turn)
    rng = random.Random(args.seed)
    needed = min(len(instruct), args.steps * args.batch)
    instruct = rng.sample(instruct, needed)
    stage1_pool = all_captions if args.stage1_data == "captions" else json.loads(Path(args.data or data / "instruct.json").read_text())
    captions = rng.sample(stage1_pool, min(len(stage1_pool), stage1_steps * args.stage1_batch))
    aligned = all_captions[: args.align_images] if projector_mode == "align" else []
    stems = {Path(r["image"]).stem for r in instruct + captions + aligned} | {Path(q["image"]).stem for q in questions}
    width = next(m for m in model.projector.modules() if isinstance(m, torch.nn.Linear)).in_features
    started = time.perf_counter()
    if args.tokens == "oracle":
        features = {s: oracle_tokens(s, args.max_shapes, width) for s in tqdm(sorted(stems), desc="oracle tokens", file=sys.stderr)}
    elif args.tokens == "text":
        features = {}
    else:
        features = tower_tokens(model, processor, [data / "images" / f"{s}.png" for s in sorted(stems)])
    print(f"tokens for {len(features)} images in {time.perf_counter() - started:.0f}s", file=sys.stderr)
    items = eval_items(processor, questions, describe)
    pad_id = processor.tokenizer.pad_token_id
    curve: list[dict[str, Any]] = []

    def record(phase: str, step: int, losses: list[float]) -> None:
        result = evaluate(model, items, features, pad_id)
        result.pop("predictions")
        if features:
            with torch.no_grad():
                sample = torch.stack([features[item["stem"]] for item in items[:16]])
                result["image_token_norm"] = round(model.get_image_features(vision_features=sample).norm(dim=-1).mean().item(), 4)
        window = losses[-max(1, args.eval_every):]
        row = {"phase": phase, "step": step, "loss": sum(window) / len(window) if window else None,
               "seconds": round(time.perf_counter() - started, 1), **result}
        curve.append(row)
        print(json.dumps(row), flush=True)

    if projector_mode == "oracle-words":
        word_projector(model, processor)
    elif projector_mode in ("calibrate", "align"):
        sample = torch.cat([features[s] for s in sorted(features)[:64]])
        target = model.language_model.get_input_embeddings().weight.norm(dim=-1).mean().item()
        with torch.no_grad():
            for m in model.projector.modules():
                if isinstance(m, torch.nn.Linear):
                    m.reset_parameters()
            calibrate_projector(model.projector, sample, target)
        if projector_mode == "align":
            bar = tqdm(total=args.align_steps, desc="word alignment", file=sys.stderr)
            stats = align_projector_to_words(
                model.projector, torch.stack([features[Path(r["image"]).stem] for r in aligned]),
                [r["conversations"][-1]["value"] for r in aligned],
                lambda text: processor.tokenizer(text, add_special_tokens=False)["input_ids"],
                model.language_model.get_input_embeddings().weight, target, steps=args.align_steps, lr=args.align_lr,
                seed=args.seed, progress=lambda step, loss: (bar.update(), bar.set_postfix(loss=f"{loss:.3f}")))
            bar.close()
            print(f"word alignment: {stats}", file=sys.stderr)
    stage_cfg = SimpleNamespace(stage="sft", lora=args.lora_r > 0, lora_r=args.lora_r, lora_alpha=2 * args.lora_r,
                                lora_dropout=0.0, lora_target_modules="all-linear", train_last_n_llm_layers=0)
    if stage1_steps:
        if args.stage1_lora:
            stage = apply_stage(model, stage_cfg)
        else:
            stage = apply_stage(model, SimpleNamespace(stage="pretrain", train_last_n_llm_layers=0))
        cfg = SimpleNamespace(steps=stage1_steps, batch=args.stage1_batch, lr=args.lr if args.stage1_lora else args.stage1_lr,
                              projector_lr=args.stage1_lr, warmup=0.1, seed=args.seed)
        def on_stage1_step(step: int, losses: list[float]) -> None:
            if step % args.eval_every == 0 and step != stage1_steps:
                record("stage1", step, losses)

        losses = train(stage, training_examples(processor, captions), features, cfg, collate, on_stage1_step)
        record("stage1", stage1_steps, losses)
    if not (stage1_steps and args.stage1_lora):
        stage = apply_stage(model, stage_cfg)
    examples = training_examples(processor, instruct, describe)
    record("start", 0, [])

    def on_step(step: int, losses: list[float]) -> None:
        if step % args.eval_every == 0 or step == args.steps:
            record("stage2", step, losses)

    train(stage, examples, features, args, collate, on_step)
    if args.save:
        trained = stage.merge_and_unload() if hasattr(stage, "merge_and_unload") else stage
        trained.save_pretrained(args.save)
        processor.save_pretrained(args.save)
    table = render(curve)
    print(table)
    if args.out:
        atomic_write_text(args.out, json.dumps({"args": vars(args), "curve": curve}, indent=1))
    return {"curve": curve, "table": table}


def render(curve: list[dict[str, Any]]) -> str:
    tasks = sorted({t for row in curve for t in row["tasks"]})
    head = "| phase | step | train loss | " + " | ".join(tasks) + " | overall | time |"
    rows = [head, "|---|---:|---:|" + "---:|" * (len(tasks) + 2)]
    for row in curve:
        loss = "" if row["loss"] is None else f"{row['loss']:.3f}"
        cells = " | ".join(f"{row['tasks'].get(t, float('nan')):.1f}" for t in tasks)
        rows.append(f"| {row['phase']} | {row['step']} | {loss} | {cells} | **{row['overall']:.1f}** | {row['seconds']:.0f}s |")
    return "\n".join(rows)


if __name__ == "__main__":
    main()
