"""The plan: each recipe's steps as the commands of this toolkit, planned for a profile and the hardware."""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from apps.demo.hardware import CPU_PAIR, Hardware
from apps.demo.profiles import NLVRProfile, Profile
from apps.demo.step import DemoError, Step

CHAT_FILE = "chat.txt"
CHAT_COUNT_QUESTION = "How many shapes are there?"


def plan(workdir: Path, profile: Profile, python: str = sys.executable, hardware: Hardware = CPU_PAIR) -> list[Step]:
    """The steps of a shapes demo run in ``workdir`` on ``hardware``."""
    w = workdir
    vlm = [python, "-m", "apps"]
    data, clip = w / "data", w / "clip"
    steps = [
        Step(
            "data", "generate the shapes dataset",
            [vlm + ["data", "shapes", "--out", str(data), "--n", str(profile.n_train), "--n-eval", str(profile.n_eval),
                    "--seed", "0", "--max-shapes", str(profile.max_shapes), "--max-turns", str(profile.max_turns),
                    "--multi-turn-fraction", str(profile.multi_turn_fraction)]],
            lambda: all((data / f"{part}.json").is_file() for part in ("captions", "instruct", "eval")),
        ),
    ]
    clip_train = [python, "-m", "train.clip", "train", str(data / "clip.csv"), str(clip), "--epochs", str(profile.clip_epochs),
                  "--batch-size", str(profile.clip_batch), "--lr", str(profile.clip_lr), "--seed", "0"]
    if profile.clip_config is not None:
        clip_train += ["--model-config", str(w / "clip_config.json")]
    if hardware.device != "cpu":
        clip_train += ["--device", hardware.device]
    steps.append(Step(
        "clip", "train the CLIP vision tower (open_clip_train)",
        [[python, "-m", "train.clip", "csv", str(data / "captions.json"), str(data / "clip.csv")], clip_train],
        lambda: (clip / "open_clip_model.safetensors").is_file(),
    ))
    llm = profile.llm
    if profile.llm == "tiny":
        llm = str(w / "llm")
        steps.append(Step(
            "llm", "build the tiny LLM (SmolLM2's tokenizer, random weights)",
            [[python, "-m", "apps.demo", "tiny-llm", "--out", llm]],
            lambda: (w / "llm" / "config.json").is_file(),
        ))
    stage1, stage2, merged = w / "stage1", w / "stage2", w / "merged"
    steps.append(Step(
        "stage1", "stage 1: align the projector on captions",
        [vlm + ["train", "pretrain", f"llm={llm}", f"vision_model=local-dir:{clip}", "vision_pretrained=null",
                f"data=[{data / 'captions.json'}]", f"output_dir={stage1}", f"max_steps={profile.stage1_steps}",
                f"per_device_train_batch_size={profile.stage1_batch}", f"learning_rate={profile.stage1_lr}",
                "warmup_ratio=0.1", f"save_steps={max(profile.stage1_steps // 2, 1)}", "save_total_limit=1",
                "logging_steps=1", "projector_init=calibrate", "resume=true", *profile.extra_stage1]],
        lambda: (stage1 / "model" / "config.json").is_file(),
    ))
    steps.append(stage2_step(
        "stage2", f"stage 2: projector + LoRA on instructions, DeepSpeed ZeRO-2 on {hardware.describe()}", python,
        stage1 / "model", data / "instruct.json", stage2, profile.stage2_steps, profile.stage2_batch, profile.stage2_lr,
        profile.lora_r, profile.extra_stage2, projector_lr=profile.stage2_projector_lr, hardware=hardware,
    ))
    steps.append(merge_step("merge", python, stage2, merged))
    ev = w / "eval"
    evals = (("eval", "evaluate the merged model on held-out questions", merged, "given", "image"),
             ("blank", "baseline: the merged model with blank images", merged, "blank", "blank"),
             ("no-image", "baseline: the base LLM without images", stage1 / "model", "none", "no-image"))
    for name, title, model, images, folder in evals:
        steps.append(Step(
            name, title,
            [vlm + ["eval", "--model", str(model), "--benchmark", "shapes", "--data", str(data), "--output", str(ev / folder),
                    "--batch-size", str(profile.eval_batch), "--images", images]],
            (lambda out=ev / folder: _eval_complete(out)),
        ))
    image = data / "images" / "eval_s0_000000.png"
    steps.append(Step(
        "chat", "one chat answer about a held-out image",
        [vlm + ["chat", "--model", str(merged), "--image", str(image), "--prompt", CHAT_COUNT_QUESTION, "--max-new-tokens", "32"]],
        lambda: (w / CHAT_FILE).is_file(),
        capture=w / CHAT_FILE,
    ))
    return steps


def stage2_step(name: str, title: str, python: str, init_from: Path, data: Path, output: Path, max_steps: int,
                 batch: int, lr: float, lora_r: int, extra: Sequence[str] = (), projector_lr: float | None = None,
                 hardware: Hardware = CPU_PAIR) -> Step:
    """``batch`` is per process of two: each of ``hardware.procs`` processes takes its share of ``2 * batch``."""
    launcher = shutil.which("deepspeed", path=str(Path(python).parent)) or shutil.which("deepspeed") or "deepspeed"
    if (2 * batch) % hardware.procs:
        fits = [n for n in range(1, 2 * batch + 1) if (2 * batch) % n == 0]
        raise DemoError(f"--procs {hardware.procs} does not divide a stage-2 step's {2 * batch} conversations into equal "
                        f"shares; use one of {', '.join(map(str, fits))}")
    return Step(
        name, title,
        [[launcher, "--num_gpus", str(hardware.procs), "--master_port", "{port}", "--module", "train", "sft_lora",
          f"init_from={init_from}", f"data=[{data}]", f"output_dir={output}", "deepspeed=zero2",
          f"max_steps={max_steps}", f"per_device_train_batch_size={2 * batch // hardware.procs}", f"learning_rate={lr}",
          f"projector_lr={lr if projector_lr is None else projector_lr}",
          # lora_dropout=0 (sft_lora.yaml keeps LLaVA's 0.05): on a CPU its masks make a step 16-31% slower
          f"lora_r={lora_r}", f"lora_alpha={2 * lora_r}", "lora_dropout=0", "warmup_ratio=0.05",
          f"save_steps={max(max_steps // 3, 1)}",
          "save_total_limit=1", "logging_steps=1", "resume=true", *extra]],
        lambda: (output / "model").is_dir() and any((output / "model").iterdir()),
        env={"OMP_NUM_THREADS": str(hardware.threads)},  # the processes share the cores out, not oversubscribe them
    )


def merge_step(name: str, python: str, run: Path, merged: Path) -> Step:
    return Step(
        name, "merge ZeRO shards + LoRA into one model",
        [[python, "-m", "apps", "merge", str(run), "--out", str(merged)]],
        lambda: (merged / "config.json").is_file(),
    )


def plan_nlvr(workdir: Path, profile: Profile, nlvr: NLVRProfile, nlvr_data: Path, python: str = sys.executable,
              hardware: Hardware = CPU_PAIR) -> list[Step]:
    """The NLVR recipe: the shapes run's data, CLIP and stage 1 (reused when done), then stage 2 on
    NLVR dev, merge, and NLVR test with the no-image baseline."""
    base = [step for step in plan(workdir, profile, python, hardware) if step.name in ("data", "clip", "llm", "stage1")]
    w = workdir / "nlvr"
    vlm = [python, "-m", "apps"]
    dev_json, stage1 = w / "dev.json", workdir / "stage1" / "model"
    steps = base + [
        Step(
            "nlvr-data", "NLVR dev -> training conversations",
            [vlm + ["data", "nlvr", "--split", str(nlvr_data / "dev"), "--out", str(dev_json), "--parts", *nlvr.parts]],
            dev_json.is_file,
        ),
        # The stage-1 model centre-crops; NLVR's 400x100 images are padded to a square instead.
        stage2_step("nlvr-stage2", f"stage 2 on NLVR dev: projector + LoRA, ZeRO-2 on {hardware.describe()}", python,
                     stage1, dev_json, w / "stage2", nlvr.steps, nlvr.batch, nlvr.lr, nlvr.lora_r, ("pad_to_square=true",),
                     hardware=hardware),
        merge_step("nlvr-merge", python, w / "stage2", w / "merged"),
    ]
    limit = [] if nlvr.eval_limit is None else ["--limit", str(nlvr.eval_limit)]
    for name, title, model, images, folder in (
        ("nlvr-eval", "NLVR test with the images", w / "merged", "given", "image"),
        ("nlvr-no-image", "baseline: the base LLM on NLVR test without images", stage1, "none", "no-image"),
    ):
        steps.append(Step(
            name, title,
            [vlm + ["eval", "--model", str(model), "--benchmark", "nlvr", "--data", str(nlvr_data / "test"),
                    "--output", str(w / "eval" / folder), "--batch-size", str(nlvr.eval_batch), "--images", images, *limit]],
            (lambda out=w / "eval" / folder: _eval_complete(out)),
        ))
    return steps


def _eval_complete(output: Path) -> bool:
    metrics = output / "metrics.json"
    if not metrics.is_file():
        return False
    summary = json.loads(metrics.read_text(encoding="utf-8"))
    return summary["num_answered"] == summary["num_questions"]
