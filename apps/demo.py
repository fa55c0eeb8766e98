"""``vlm demo``: the whole recipe, offline, from nothing to a chatting VLM, with a summary table.

Steps (each one a command of this toolkit, printed before it runs, so it can be rerun alone):

    data      vlm data shapes                  synthetic scenes: captions, instructions, held-out QA
    clip      python -m train.clip csv|train   a small CLIP trained contrastively on the captions
    llm       python -m apps.demo tiny-llm     (--quick only) a tiny random LLM with SmolLM2's tokenizer
    stage1    vlm train pretrain               the projector learns on the captions
    stage2    deepspeed ... train sft_lora     projector + LoRA on the instructions, ZeRO-2, 2 processes
                                               (2 CPU processes; with CUDA one per GPU up to 2; --procs N)
    merge     vlm merge                        ZeRO shards + LoRA -> one verified HF model folder
    eval      vlm eval --benchmark shapes      held-out questions, with the images
    blank     vlm eval ... --images blank      baseline: the same model, every image black
    no-image  vlm eval ... --images none       baseline: the base LLM (stage 1's, untouched) without images
    chat      vlm chat                         one answer about a held-out image

Every step writes its output atomically (a folder appears complete or not at all; training
resumes from its last checkpoint), and ``WORKDIR/demo.json`` records the command that made it.
Rerunning the demo reuses each step whose output is complete and whose command is unchanged, and
refuses (instead of silently mixing) when a finished step was made by another command.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from vlm.atomic import atomic_directory, atomic_write_json, atomic_write_text

STATE_FILE = "demo.json"
_PYTHON_NAME = re.compile(r"(?<=/)python[0-9.]*$")
SUMMARY_JSON = "summary.json"
SUMMARY_MD = "summary.md"
CHAT_FILE = "chat.txt"
CHAT_COUNT_QUESTION = "How many shapes are there?"

# A micro CLIP for --quick: real geometry (224 px, patch 16 -> 196 tokens), 2 blocks of width 64.
QUICK_CLIP_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 224, "patch_size": 16, "layers": 2, "width": 64, "head_width": 32, "mlp_ratio": 2.0},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
# The --quick LLM: a 2-layer Llama, 64 wide, with SmolLM2's real tokenizer and chat template.
TINY_LLM = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 2, "max_position_embeddings": 2048, "tie_word_embeddings": True}


@dataclass(frozen=True)
class Profile:
    """The sizes of one demo run."""

    name: str
    llm: str
    """``smollm2-135m-instruct`` (the offline real LLM) or ``tiny`` (built by the llm step)."""
    n_train: int
    n_eval: int
    max_shapes: int
    max_turns: int
    multi_turn_fraction: float
    clip_config: dict[str, Any] | None
    """open_clip model config of the trained CLIP; None = train/configs/clip_vit_tiny.json."""
    clip_epochs: int
    clip_batch: int
    clip_lr: float
    stage1_steps: int
    stage1_batch: int
    stage1_lr: float
    stage2_steps: int
    stage2_batch: int
    """Per process; two processes, so a step sees twice as many conversations."""
    stage2_lr: float
    lora_r: int
    eval_batch: int
    stage2_projector_lr: float | None = None
    """The projector's learning rate in stage 2; None = ``stage2_lr``. The projector is 0.4M
    weights learning from scratch what the image tokens mean, LoRA nudges a pretrained LLM: on
    the shapes colour questions alone, 40 projector-only steps of 8 at 1e-3 answered 80% of
    held-out questions right, 40 LoRA + projector steps of 4 at 5e-4 stayed at chance."""
    extra_stage1: tuple[str, ...] = field(default=())
    extra_stage2: tuple[str, ...] = field(default=())


@dataclass(frozen=True)
class NLVRProfile:
    """The sizes of the NLVR recipe (stage 2 on NLVR dev from the shapes run's stage 1, eval on test)."""

    parts: tuple[str, ...]
    """What the dev conversations hold: ``qa`` (true/false) and/or ``captions`` (box descriptions)."""
    steps: int
    batch: int
    """Per process; two processes."""
    lr: float
    lora_r: int
    eval_limit: int | None
    """Test PNGs evaluated, in file order (None: all 5,934; each sentence's six renderings are adjacent)."""
    eval_batch: int


NLVR_PROFILES = {
    "full": NLVRProfile(parts=("qa", "captions"), steps=90, batch=4, lr=5e-4, lora_r=32, eval_limit=1200, eval_batch=16),
    "quick": NLVRProfile(parts=("qa",), steps=3, batch=2, lr=1e-3, lora_r=8, eval_limit=12, eval_batch=12),
}
DEFAULT_NLVR_DATA = Path("../shared/data/nlvr1")
NLVR_URL = "https://github.com/lil-lab/nlvr"

PROFILES = {
    "full": Profile(
        name="full", llm="smollm2-135m-instruct", n_train=2400, n_eval=40, max_shapes=4, max_turns=6,
        multi_turn_fraction=0.9, clip_config=None, clip_epochs=3, clip_batch=64, clip_lr=1e-3,
        stage1_steps=20, stage1_batch=8, stage1_lr=2e-3, stage2_steps=64, stage2_batch=4, stage2_lr=5e-4,
        lora_r=32, eval_batch=16, stage2_projector_lr=2e-3,
    ),
    "quick": Profile(
        name="quick", llm="tiny", n_train=64, n_eval=6, max_shapes=4, max_turns=6, multi_turn_fraction=0.9,
        clip_config=QUICK_CLIP_CONFIG, clip_epochs=1, clip_batch=32, clip_lr=1e-3, stage1_steps=4, stage1_batch=4,
        stage1_lr=1e-3, stage2_steps=4, stage2_batch=2, stage2_lr=1e-3, lora_r=8, eval_batch=16,
    ),
}


@dataclass(frozen=True)
class Hardware:
    """Where the demo trains: the device, and how many processes run stage 2 under DeepSpeed."""

    device: str = "cpu"
    """``cpu`` or ``cuda``: the CLIP trains there (stage 1, stage 2 and eval pick CUDA by themselves when present)."""
    procs: int = 2
    """Stage-2 processes (ZeRO-2 shards). A step sees the same conversations however many there are:
    each process takes ``2 * batch / procs`` of them (the profiles' batches are per process of two)."""
    threads: int = 1
    """``OMP_NUM_THREADS`` of each stage-2 process: the CPU cores shared out, so processes do not oversubscribe."""

    def describe(self) -> str:
        return f"{self.procs} {'GPU' if self.device == 'cuda' else 'CPU'} process{'es' if self.procs > 1 else ''}"


CPU_PAIR = Hardware()
"""The plan's default: 2 CPU processes of one thread each, this project's 2-core machine (``detect_hardware``
gives each process its share of the cores it finds)."""


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def detect_hardware(procs: int | None = None) -> Hardware:
    """The hardware of this machine: CUDA when torch sees a GPU (one process per GPU, up to 2), else
    2 CPU processes. ``procs`` overrides the count (at most one per GPU; planning the stage-2 step
    checks that it divides the step's conversations)."""
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if procs is None:
        procs = min(gpus, 2) if gpus else 2
    if procs < 1:
        raise DemoError(f"--procs must be a positive number of processes, got {procs}")
    if gpus and procs > gpus:
        raise DemoError(f"--procs {procs}: torch sees {gpus} GPU{'s' if gpus > 1 else ''}; run at most one process per GPU")
    return Hardware("cuda" if gpus else "cpu", procs, max(1, _usable_cores() // procs))


@dataclass
class Step:
    """One step: its commands, the output that proves it finished, and how it ran."""

    name: str
    title: str
    commands: list[list[str]]
    done: Callable[[], bool]
    env: dict[str, str] = field(default_factory=dict)
    capture: Path | None = None
    """Write the last command's stdout to this file (atomically) as well as printing it."""
    status: str = "pending"
    seconds: float | None = None
    peak_rss_mib: float | None = None


class DemoError(RuntimeError):
    """A step failed or a finished step does not match this run."""


# ----------------------------------------------------------------------------------------- steps


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
    steps.append(_stage2_step(
        "stage2", f"stage 2: projector + LoRA on instructions, DeepSpeed ZeRO-2 on {hardware.describe()}", python,
        stage1 / "model", data / "instruct.json", stage2, profile.stage2_steps, profile.stage2_batch, profile.stage2_lr,
        profile.lora_r, profile.extra_stage2, projector_lr=profile.stage2_projector_lr, hardware=hardware,
    ))
    steps.append(_merge_step("merge", python, stage2, merged))
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


def _stage2_step(name: str, title: str, python: str, init_from: Path, data: Path, output: Path, max_steps: int,
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


def _merge_step(name: str, python: str, run: Path, merged: Path) -> Step:
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
        _stage2_step("nlvr-stage2", f"stage 2 on NLVR dev: projector + LoRA, ZeRO-2 on {hardware.describe()}", python,
                     stage1, dev_json, w / "stage2", nlvr.steps, nlvr.batch, nlvr.lr, nlvr.lora_r, ("pad_to_square=true",),
                     hardware=hardware),
        _merge_step("nlvr-merge", python, w / "stage2", w / "merged"),
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


# ------------------------------------------------------------------------------------------ run


def printable(command: Sequence[str], python: str = sys.executable, env: dict[str, str] | None = None) -> str:
    """The command as a user would type it: ``vlm ...`` / ``python -m ...`` / ``deepspeed ...`` instead of
    this interpreter's or launcher's path, after the variables ``env`` sets for it."""
    words = list(command)
    if words[:3] == [python, "-m", "apps"]:
        words = ["vlm", *words[3:]]
    elif words[:1] == [python]:
        words = ["python", *words[1:]]
    elif words and Path(words[0]).name == "deepspeed":
        words = ["deepspeed", *words[1:]]
    return " ".join([*(f"{key}={shlex.quote(value)}" for key, value in (env or {}).items()), shlex.join(words)])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_command(command: list[str], env: dict[str, str], capture: bool) -> tuple[int, float, str]:
    """Run one command; return its exit status, its process tree's peak RSS in MiB, and its stdout if captured.

    The peak is the largest sum of resident memory over the command and all its descendants,
    sampled every 0.2 s (so the two DeepSpeed workers count together).
    """
    import psutil

    process = subprocess.Popen(command, env={**os.environ, **env}, stdout=subprocess.PIPE if capture else None, text=True)
    peak = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        root = psutil.Process(process.pid)
        while not stop.is_set():
            try:
                tree = [root, *root.children(recursive=True)]
                total = 0
                for proc in tree:
                    try:
                        total += proc.memory_info().rss
                    except psutil.Error:
                        pass
                peak = max(peak, total)
            except psutil.Error:
                pass
            stop.wait(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        out, _ = process.communicate()
    except BaseException:
        process.kill()
        process.wait()
        raise
    finally:
        stop.set()
        sampler.join()
    if out:
        print(out, end="", flush=True)
    return process.returncode, peak / 2**20, out or ""


def read_state(workdir: Path) -> dict[str, Any]:
    path = workdir / STATE_FILE
    if not path.is_file():
        return {"steps": {}}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DemoError(f"{path} is not valid JSON ({err}); delete it to rerun every step's check") from err


def _recorded(commands: list[list[str]]) -> list[list[str]]:
    # The DeepSpeed port changes from run to run and does not change the result.
    return [["{port}" if word.isdigit() and i > 0 and command[i - 1] == "--master_port" else word
             for i, word in enumerate(command)] for command in commands]


def _comparable(commands: list[list[str]]) -> list[list[str]]:
    # One interpreter under its several names: .venv/bin/python3 and .venv/bin/python are the same.
    return [[_PYTHON_NAME.sub("python", word) if i == 0 else word for i, word in enumerate(command)]
            for command in commands]


def run_steps(workdir: Path, steps: list[Step], log: Callable[[str], None] = print) -> None:
    """Run the steps in order, reusing finished ones; raise DemoError on the first failure."""
    state = read_state(workdir)
    for index, step in enumerate(steps, 1):
        recorded = state["steps"].get(step.name)
        header = f"[{index}/{len(steps)}] {step.name}: {step.title}"
        if step.done():
            if recorded is not None and _comparable(recorded["commands"]) != _comparable(_recorded(step.commands)):
                raise DemoError(
                    f"step {step.name}: its output in {workdir} was made by another command:\n  "
                    + "\n  ".join(printable(c) for c in recorded["commands"])
                    + f"\nUse another --workdir, or --fresh to delete {workdir} and start over."
                )
            step.status = "reused"
            if recorded is not None:
                step.seconds, step.peak_rss_mib = recorded.get("seconds"), recorded.get("peak_rss_mib")
            log(f"{header}: done before, reused")
            continue
        log(header)
        start = time.perf_counter()
        peak = 0.0
        for command in step.commands:
            command = [word.replace("{port}", str(free_port())) if word == "{port}" else word for word in command]
            log("  $ " + printable(command, env=step.env))
            status, command_peak, out = run_command(command, step.env, capture=step.capture is not None)
            peak = max(peak, command_peak)
            if status != 0:
                step.status = "failed"
                raise DemoError(
                    f"step {step.name} failed (exit status {status}); its output is above. Fix the cause and rerun "
                    "the demo: finished steps are reused, training resumes from its last checkpoint."
                )
            if step.capture is not None:
                atomic_write_text(step.capture, out)
        if not step.done():
            raise DemoError(f"step {step.name} exited cleanly but its output is missing; see its log above")
        step.status, step.seconds, step.peak_rss_mib = "ran", time.perf_counter() - start, peak
        state["steps"][step.name] = {"commands": _recorded(step.commands), "seconds": round(step.seconds, 1),
                                     "peak_rss_mib": round(peak, 1)}
        atomic_write_json(workdir / STATE_FILE, state)
        log(f"  {step.name}: {_duration(step.seconds)}, peak RSS {peak:,.0f} MiB")


# -------------------------------------------------------------------------------------- summary


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{seconds:.1f}s"


def summarize(workdir: Path, steps: list[Step], profile: Profile, wall_seconds: float,
              nlvr: tuple[NLVRProfile, Path] | None = None, hardware: Hardware = CPU_PAIR) -> dict[str, Any]:
    """Collect what the run measured: step times and memory, accuracy per task, the chat answer."""
    common = {
        "recipe": "shapes" if nlvr is None else "nlvr",
        "profile": asdict(profile),
        "hardware": asdict(hardware),
        "workdir": str(workdir.resolve()),
        "wall_seconds": round(wall_seconds, 1),
        "steps": [
            {"name": s.name, "status": s.status, "seconds": None if s.seconds is None else round(s.seconds, 1),
             "peak_rss_mib": None if s.peak_rss_mib is None else round(s.peak_rss_mib, 1),
             "commands": [printable(c, env=s.env) for c in _recorded(s.commands)]}
            for s in steps
        ],
    }
    if nlvr is not None:
        return {**common, "nlvr": _nlvr_results(workdir / "nlvr", *nlvr)}
    results = {}
    for folder, key in (("image", "model"), ("blank", "blank"), ("no-image", "no_image")):
        metrics = workdir / "eval" / folder / "metrics.json"
        if metrics.is_file():
            results[key] = json.loads(metrics.read_text(encoding="utf-8"))["metrics"]
    chat = (workdir / CHAT_FILE).read_text(encoding="utf-8").strip() if (workdir / CHAT_FILE).is_file() else None
    reference = _chat_reference(profile)
    return {**common, "accuracy": results,
            "chat": {"question": CHAT_COUNT_QUESTION, "answer": chat, "reference": reference}}


def _nlvr_results(folder: Path, nlvr: NLVRProfile, nlvr_data: Path) -> dict[str, Any]:
    from eval.metrics.nlvr import majority_class_baseline, score_nlvr
    from eval.nlvr import load_nlvr_split

    results: dict[str, Any] = {}
    for name, key in (("image", "model"), ("no-image", "no_image")):
        metrics = folder / "eval" / name / "metrics.json"
        if metrics.is_file():
            results[key] = json.loads(metrics.read_text(encoding="utf-8"))["metrics"]
    test = nlvr_data / "test"
    if test.is_dir():
        examples = load_nlvr_split(test)  # file order, as vlm eval --limit takes them
        examples = examples if nlvr.eval_limit is None else examples[: nlvr.eval_limit]
        label, share = majority_class_baseline(examples)
        constant = score_nlvr((example, label) for example in examples)
        results["majority"] = {"label": "true" if label else "false", "accuracy": share,
                               "consistency": constant.consistency, "num_images": len(examples)}
    return results


def _chat_reference(profile: Profile) -> str:
    """The true answer to the chat question: the number of shapes in held-out scene 0 (seed 0)."""
    from eval.shapes import SceneConfig, sample_scene, scene_seed

    return str(len(sample_scene(scene_seed(0, "eval", 0), SceneConfig(max_shapes=profile.max_shapes)).shapes))


def render_summary(summary: dict[str, Any]) -> str:
    steps = summary["steps"]
    total = sum(s["seconds"] or 0 for s in steps)  # recorded times of reused steps included
    lines = [f"## vlm demo ({summary['profile']['name']}): {summary['workdir']}", ""]
    if "hardware" in summary:  # summaries written before the hardware was recorded lack it
        lines += [f"Stage 2 on {Hardware(**summary['hardware']).describe()}.", ""]
    lines += [
        "| step | status | wall time | peak RSS (all processes) |",
        "|---|---|---:|---:|",
    ]
    for s in steps:
        rss = "-" if s["peak_rss_mib"] is None else f"{s['peak_rss_mib']:,.0f} MiB"
        lines.append(f"| {s['name']} | {s['status']} | {_duration(s['seconds'])} | {rss} |")
    peak = max((s["peak_rss_mib"] or 0 for s in steps), default=0)
    reused = sum(s["status"] == "reused" for s in steps)
    note = f" (this invocation: {_duration(summary['wall_seconds'])}, {reused} steps reused)" if reused else ""
    lines.append(f"| **total** | | **{_duration(total)}**{note} | **{peak:,.0f} MiB** (largest step) |")
    if "nlvr" in summary:
        results = summary["nlvr"]
        rows = [("model", "merged model, image"), ("no_image", "base LLM, no image")]
        lines += ["", "NLVR test (one prediction per PNG; consistency = sentences with every image right):", "",
                  "| | images | accuracy % | consistency % | unparseable % |", "|---|---:|---:|---:|---:|"]
        for key, title in rows:
            if key in results:
                m = results[key]
                lines.append(f"| {title} | {m['num_images']} | {m['accuracy']:.1f} | {m['consistency']:.1f} | {m['unparseable']:.1f} |")
        if "majority" in results:
            m = results["majority"]
            lines.append(f"| majority class (always {m['label']}) | {m['num_images']} | {m['accuracy']:.1f} | {m['consistency']:.1f} | 0.0 |")
        return "\n".join(lines) + "\n"
    accuracy = summary["accuracy"]
    if accuracy:
        columns = [("model", "merged model, image"), ("blank", "merged model, blank image"),
                   ("no_image", "base LLM, no image")]
        columns = [(key, title) for key, title in columns if key in accuracy]
        lines += ["", "Held-out shapes questions, exact-match accuracy (%):", "",
                  "| task | questions | " + " | ".join(title for _, title in columns) + " |",
                  "|---|---:|" + "---:|" * len(columns)]
        first = accuracy[columns[0][0]]
        for task, tally in first["per_task"].items():
            cells = [f"{accuracy[key]['per_task'].get(task, {}).get('accuracy', float('nan')):.1f}" for key, _ in columns]
            lines.append(f"| {task} | {tally['total']} | " + " | ".join(cells) + " |")
        cells = [f"**{accuracy[key]['accuracy']:.1f}**" for key, _ in columns]
        lines.append(f"| **overall** | {first['total']} | " + " | ".join(cells) + " |")
    chat = summary["chat"]
    if chat["answer"] is not None:
        lines += ["", f"Chat about a held-out image: \"{chat['question']}\" -> {chat['answer']!r}"
                  + (f" (reference: {chat['reference']})" if chat["reference"] is not None else "")]
    return "\n".join(lines) + "\n"


# -------------------------------------------------------------------------------------- entry


def choose_profiles(quick: bool, recipe: str, stage1_steps: int | None = None,
                    stage2_steps: int | None = None) -> tuple[Profile, NLVRProfile | None]:
    """The shapes profile and, for ``recipe="nlvr"``, the NLVR one, with step counts replaced where given.

    ``stage2_steps`` is the recipe's own stage 2 (shapes or NLVR). The defaults are sized for a
    2-core CPU and miss the accuracy targets; a machine with more time can raise them."""
    if recipe not in ("shapes", "nlvr"):
        raise DemoError(f"unknown recipe {recipe!r}; choose shapes or nlvr")
    for name, value in (("stage1-steps", stage1_steps), ("stage2-steps", stage2_steps)):
        if value is not None and value < 1:
            raise DemoError(f"--{name} must be a positive number of steps, got {value}")
    profile = PROFILES["quick" if quick else "full"]
    if stage1_steps is not None:
        profile = replace(profile, stage1_steps=stage1_steps)
    if recipe == "shapes":
        return (profile if stage2_steps is None else replace(profile, stage2_steps=stage2_steps)), None
    nlvr = NLVR_PROFILES[profile.name]
    return profile, (nlvr if stage2_steps is None else replace(nlvr, steps=stage2_steps))


def run_demo(workdir: str | os.PathLike, quick: bool = False, fresh: bool = False,
             log: Callable[[str], None] = print, recipe: str = "shapes",
             nlvr_data: str | os.PathLike = DEFAULT_NLVR_DATA, stage1_steps: int | None = None,
             stage2_steps: int | None = None, procs: int | None = None) -> dict[str, Any]:
    """Run (or finish) the shapes demo, or the NLVR recipe, in ``workdir``; return the summary (also written there).

    ``stage1_steps`` / ``stage2_steps``: see ``choose_profiles``; ``procs``: see ``detect_hardware``."""
    workdir = Path(workdir)
    profile, nlvr_profile = choose_profiles(quick, recipe, stage1_steps, stage2_steps)
    hardware = detect_hardware(procs)
    nlvr = None
    if nlvr_profile is not None:
        nlvr_data = Path(nlvr_data)
        missing = [p for p in (nlvr_data / "dev", nlvr_data / "test") if not p.is_dir()]
        if missing:
            raise DemoError(f"NLVR v1 not found: {', '.join(map(str, missing))} missing. Get the dev and test folders of "
                            f"{NLVR_URL} (folder nlvr/) and pass --nlvr-data DIR")
        nlvr = (nlvr_profile, nlvr_data.resolve())
    # Planned before the workdir is touched: a plan that cannot run (e.g. --procs 3) leaves nothing behind.
    steps = plan(workdir, profile, hardware=hardware) if nlvr is None else plan_nlvr(workdir, profile, *nlvr, hardware=hardware)
    if fresh and workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    state = read_state(workdir)
    if state.get("profile") not in (None, profile.name):
        raise DemoError(f"{workdir} holds a {state['profile']} demo run; use another --workdir (or --fresh) for {profile.name}")
    state["profile"] = profile.name
    atomic_write_json(workdir / STATE_FILE, state)
    if profile.clip_config is not None:
        atomic_write_json(workdir / "clip_config.json", profile.clip_config)
    prefix = "" if nlvr is None else "nlvr-"
    start = time.perf_counter()
    try:
        run_steps(workdir, steps, log)
    finally:
        summary = summarize(workdir, steps, profile, time.perf_counter() - start, nlvr, hardware)
        atomic_write_json(workdir / (prefix + SUMMARY_JSON), summary)
        atomic_write_text(workdir / (prefix + SUMMARY_MD), render_summary(summary))
    log("")
    log(render_summary(summary))
    return summary


def build_tiny_llm(out: str | os.PathLike, seed: int = 0) -> Path:
    """A 2-layer Llama with random weights and SmolLM2-135M-Instruct's tokenizer (offline)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from vlm.llm_source import default_cache_dir, packaged_gguf_path

    gguf = packaged_gguf_path("smollm2-135m-instruct")
    # The tokenizer of an earlier full conversion loads in a second; from the GGUF it takes ~10 s.
    cached = default_cache_dir() / "llm"
    converted = next((p for p in cached.glob(f"{gguf.stem}-*") if (p / "tokenizer_config.json").is_file()), None)
    if converted is not None:
        tokenizer = AutoTokenizer.from_pretrained(str(converted))
    else:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, **TINY_LLM)
    model = LlamaForCausalLM(config)
    with atomic_directory(Path(out), overwrite=True) as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
    return Path(out)




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


if __name__ == "__main__":
    sys.exit(main())
