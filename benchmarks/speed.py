"""Issue 8 speed benchmark: our VLM against transformers' LLaVA holding the same weights, on this machine.

Usage::

    python -m benchmarks.speed                  # full shapes, every row (~15 min on 2 CPU cores)
    python -m benchmarks.speed --quick          # tiny shapes, fp32 and bf16: a CI smoke run
    python benchmarks/speed.py --rows stage1 full --steps 5 --out runs/benchmarks/speed.json
    python -m benchmarks.speed --rows full --impls ours --profile   # + the top ops of one step

Shapes (full): open_clip ViT-B-16 (random weights: speed does not depend on them), 196 patch
tokens from block -2, LLaVA's projector (``mlp2x_gelu``: LLaVA has no other, see
``benchmarks/llava_reference.py``), SmolLM2-135M-Instruct (the offline weights). Sequences are
real training samples of the synthetic shapes data (``eval/shapes/``) tokenized with the real
tokenizer and chat template by the training code (``train.dataset``): captions for stage 1,
1-3 turn QA for stage 2, eval questions for inference.

Rows: a stage 1 step (projector trainable), a stage 2 LoRA step and a stage 2 full step
(each forward + backward + AdamW step); time to first token and decode speed at batch 1 and 8.

Implementations: ``ours`` (VLMForCausalLM as training runs it by default: the LM head on
labeled positions only), ``ours-plain`` (the same with ``labeled_positions_only=False``: LM head
on every position), ``ours-fast`` (every optimization on: labeled positions, the vision-feature
cache (``feature_cache=``) and compiled LLM layers (``torch_compile=true``), its compile paid in
the warm-up steps) and ``reference`` (``LlavaForConditionalGeneration`` with the same weights,
wrapped the same way by peft). The ``ours-plain`` worker also alternates plain and
labeled-positions steps in one process, and the ``ours`` worker steps with pixels and with cached
features: paired A/Bs of one optimization each that load drift between workers cannot bias.

How figures are made:
- time: median of ``--steps`` timed repetitions after ``--warmup`` untimed ones. Inference
  times come from one ``generate`` of N new tokens per repetition, clocked at every step by a
  no-op logits processor: time to first token is the prefill (vision tower, projector, prompt
  forward); a decode step is the mean gap between later steps (a batch's one new token each).
- memory: each (row, implementation) runs in its own worker process. Peak memory is the RSS
  high-water mark (``VmHWM``) of that process over the row's warm-up and timed steps, reset
  (``/proc/self/clear_refs``) after the model is loaded and set up, so it counts weights,
  gradients, optimizer state and activations, but not loading transients. Where the reset is
  impossible it is the high-water mark since the worker started (``ru_maxrss``). The TTFT and
  decode rows of one batch size share one worker, hence one peak (prefill + decode).
- FLOPs: counted with ``torch.utils.flop_counter.FlopCounterMode`` during the first warm-up
  repetition, with formulas added for the CPU attention kernels it does not know. Model FLOPs
  of a row are those of the plain computation (``ours-plain`` for training rows, ``ours`` for
  inference) and serve as the numerator of every implementation's MFU, so MFU ratios are speed
  ratios. MFU is given against this machine's fp32 and bf16 matmul peaks, measured in the run.
- bf16 means ``torch.autocast("cpu", dtype=torch.bfloat16)`` over fp32 weights, as training's
  ``bf16=true`` does. Without AMX / AVX512-BF16 it is slower than fp32; the measured peaks
  (best over matmul sizes and operand layouts, which matter a lot for bf16 there) say by how much.
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import gc
import json
import os
import platform
import random
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python benchmarks/speed.py`: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

REPO_ROOT = Path(__file__).resolve().parents[1]
TRAIN_ROWS = ("stage1", "lora", "full")
INFER_ROWS = ("infer_b1", "infer_b8")
ROWS = TRAIN_ROWS + INFER_ROWS
IMPLS = ("ours", "ours-plain", "ours-fast", "reference")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
ROW_TITLES = {
    "stage1": "stage 1 step (projector)",
    "lora": "stage 2 LoRA step",
    "full": "stage 2 full step",
}
RESULT_MARK = "BENCH_RESULT "

# --quick: the same code paths on tiny models (the real tokenizer, 224 px / patch 16 -> 196 tokens).
QUICK_CLIP_CONFIG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 224, "patch_size": 16, "width": 64, "layers": 2, "head_width": 32, "mlp_ratio": 2.0},
    "text_cfg": {"context_length": 16, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1},
}
QUICK_LLM_OVERRIDES = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2}


@dataclass
class Settings:
    """What one run measures; the CLI's flags, and what every worker is told."""

    quick: bool
    rows: list[str]
    impls: list[str]
    dtypes: list[str]
    train_batch: int
    steps: int
    warmup: int
    new_tokens: int
    profile: bool
    threads: int | None = None
    workdir: str = ""


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.speed",
        description="Training-step and inference speed of our VLM vs transformers' LLaVA with the same weights (issue 8).",
        epilog="example: python -m benchmarks.speed --rows stage1 full infer_b1 --steps 5",
    )
    parser.add_argument("--quick", action="store_true", help="tiny models, few steps, fp32 and bf16: a CI smoke run")
    parser.add_argument("--rows", nargs="+", choices=ROWS, default=list(ROWS), help="rows to run (default: all)")
    parser.add_argument("--impls", nargs="+", choices=IMPLS, default=list(IMPLS), help="implementations (default: all)")
    parser.add_argument("--dtype", nargs="+", choices=list(DTYPES), default=None,
                        help="compute dtypes (default: fp32; --quick: fp32 bf16). bf16 = CPU autocast; without AMX several times slower than fp32")
    parser.add_argument("--train-batch", type=int, default=None, help="samples per training step (default 4; --quick 2)")
    parser.add_argument("--steps", type=int, default=None, help="timed repetitions per figure (default 3; --quick 2)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed repetitions first (>= 1; the first counts FLOPs)")
    parser.add_argument("--new-tokens", type=int, default=None, help="tokens generated for the decode figure (default 32; --quick 4)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads, peaks included (default: torch's, one per core). On a machine "
                             "shared with other work, 1 avoids the stalls of threads waiting for a descheduled sibling")
    parser.add_argument("--profile", action="store_true", help="also profile one step of `ours` per training row and print its top ops")
    parser.add_argument("--out", default="runs/benchmarks/speed.json", help="JSON results file (default: %(default)s)")
    parser.add_argument("--in-process", action="store_true",
                        help="run rows in this process instead of one worker process each (faster start; peak memory less isolated)")
    parser.add_argument("--keep-workdir", action="store_true", help="keep the saved models and batches (printed path)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # internal: one (row, impl, dtype) as JSON
    args = parser.parse_args(argv)
    if args.warmup < 1:
        parser.error("--warmup must be >= 1: the first warm-up repetition counts the FLOPs")
    return args


def settings_from_args(args: argparse.Namespace) -> Settings:
    quick = args.quick
    return Settings(
        quick=quick,
        rows=list(dict.fromkeys(args.rows)),
        impls=list(dict.fromkeys(args.impls)),
        dtypes=list(dict.fromkeys(args.dtype or (["fp32", "bf16"] if quick else ["fp32"]))),
        train_batch=args.train_batch or (2 if quick else 4),
        steps=args.steps or (2 if quick else 3),
        warmup=args.warmup,
        new_tokens=args.new_tokens or (4 if quick else 32),
        profile=args.profile,
        threads=args.threads,
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.worker:
        spec = json.loads(args.worker)
        print(RESULT_MARK + json.dumps(run_worker(Settings(**spec["settings"]), spec["row"], spec["impl"], spec["dtype"])))
        return {}
    settings = settings_from_args(args)
    settings.workdir = tempfile.mkdtemp(prefix="vlm-bench-")
    try:
        report = run_benchmark(settings, in_process=args.in_process)
    finally:
        if args.keep_workdir:
            print(f"work folder kept: {settings.workdir}", file=sys.stderr)
        else:
            shutil.rmtree(settings.workdir, ignore_errors=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(render_report(report))
    print(f"\nJSON: {out}")
    return report


# --------------------------------------------------------------------------------------------
# The run: machine, peaks, models and batches, one worker per (row, impl, dtype), the table
# --------------------------------------------------------------------------------------------


def run_benchmark(settings: Settings, in_process: bool = False) -> dict[str, Any]:
    started = time.time()
    if settings.threads:
        torch.set_num_threads(settings.threads)
    machine = machine_info()
    print(f"machine: {machine['cpu_model']}, {machine['cores']} cores, load {machine['load_before']}", file=sys.stderr)
    peaks = {name: measure_matmul_peak(DTYPES[name], settings.quick) for name in ("fp32", "bf16")}
    print(f"matmul peaks: fp32 {peaks['fp32']['gflops']:.1f} GFLOP/s, bf16 {peaks['bf16']['gflops']:.2f} GFLOP/s", file=sys.stderr)
    shapes = prepare(settings)
    results = []
    for dtype in settings.dtypes:
        for row in settings.rows:
            for impl in settings.impls:
                if impl in ("ours-plain", "ours-fast") and row not in TRAIN_ROWS:
                    continue  # these optimizations only change training steps
                print(f"running {row} / {impl} / {dtype} ...", file=sys.stderr)
                if in_process:
                    records = run_worker(settings, row, impl, dtype)
                else:
                    records = run_worker_process(settings, row, impl, dtype)
                results.extend(records)
                for record in records:
                    print(f"  {record['row']} {impl}: {1e3 * record['median_s']:.1f} ms (median of "
                          f"{[round(1e3 * t) for t in record['times_s']]}), load {record['load_1m']}", file=sys.stderr)
    machine["load_after"] = [round(x, 2) for x in os.getloadavg()]
    # Measured again at the end, keeping the faster: on a shared machine a burst of other work
    # during one measurement would understate the peak (and overstate MFU).
    for name in ("fp32", "bf16"):
        again = measure_matmul_peak(DTYPES[name], settings.quick)
        peaks[name]["gflops_start_end"] = [peaks[name]["gflops"], again["gflops"]]
        if again["gflops"] > peaks[name]["gflops"]:
            peaks[name].update(gflops=again["gflops"], n=again["n"], layout=again["layout"])
        for layout, gflops in again["by_layout"].items():
            peaks[name]["by_layout"][layout] = max(gflops, peaks[name]["by_layout"].get(layout, 0.0))
    return {
        "settings": {k: v for k, v in asdict(settings).items() if k != "workdir"},
        "machine": machine,
        "matmul_peak": peaks,
        "shapes": shapes,
        "results": results,
        "summary": summarize(results, peaks),
        "wall_s": round(time.time() - started, 1),
    }


def run_worker_process(settings: Settings, row: str, impl: str, dtype: str) -> list[dict[str, Any]]:
    spec = json.dumps({"settings": asdict(settings), "row": row, "impl": impl, "dtype": dtype})
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error", "TQDM_DISABLE": "1"}
    done = subprocess.run([sys.executable, "-m", "benchmarks.speed", "--worker", spec], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT_MARK)]
    if done.returncode or not lines:
        raise RuntimeError(f"worker {row}/{impl}/{dtype} failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    return json.loads(lines[-1][len(RESULT_MARK):])


def machine_info() -> dict[str, Any]:
    import open_clip
    import peft
    import transformers

    cpu_model = platform.processor() or "unknown"
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        found = re.search(r"model name\s*:\s*(.+)", cpuinfo)
        family = re.search(r"cpu family\s*:\s*(\d+)", cpuinfo)
        model = re.search(r"^model\s*:\s*(\d+)", cpuinfo, re.M)
        if found:
            cpu_model = found.group(1).strip() + (f" (family {family.group(1)}, model {model.group(1)})" if family and model else "")
        flags = re.search(r"flags\s*:\s*(.+)", cpuinfo)
        flags = set(flags.group(1).split()) if flags else set()
    except OSError:
        flags = set()
    return {
        "cpu_model": cpu_model,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "amx_bf16": "amx_bf16" in flags,
        "avx512_bf16": "avx512_bf16" in flags,
        "load_before": [round(x, 2) for x in os.getloadavg()],
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "peft": peft.__version__,
            "open_clip": open_clip.__version__,
        },
    }


# Operand layouts of a matmul: which of A and B is read transposed. They matter: without AMX,
# torch's CPU bf16 matmul is ~1 GFLOP/s for A @ B but ~20 for A.T @ B here; nn.Linear is A @ B.T.
MATMUL_LAYOUTS = {
    "nn": lambda a, b: a @ b,
    "nt": lambda a, b: a @ b.t(),
    "tn": lambda a, b: a.t() @ b,
    "tt": lambda a, b: a.t() @ b.t(),
}


def measure_matmul_peak(dtype: torch.dtype, quick: bool) -> dict[str, Any]:
    """GFLOP/s of the fastest square matmul over sizes and operand layouts: the peak for MFU.

    The fastest repetition, not the median: a peak is what the machine can do, and other work on
    a shared machine only ever slows a repetition down. Every layout's best is kept as well.
    """
    if dtype == torch.float32:
        sizes = [256, 512] if quick else [1024, 2048]
    else:  # the slow bf16 layouts would take minutes at large sizes
        sizes = [128, 256] if quick else [256, 512]
    best: dict[str, Any] = {"gflops": 0.0, "n": None, "layout": None, "by_layout": {}}
    for n in sizes:
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        for layout, matmul in MATMUL_LAYOUTS.items():
            matmul(a, b)  # warm-up
            times = []
            for _ in range(3 if quick else 5):
                start = time.perf_counter()
                matmul(a, b)
                times.append(time.perf_counter() - start)
            gflops = round(2 * n**3 / min(times) / 1e9, 3)
            best["by_layout"][layout] = max(gflops, best["by_layout"].get(layout, 0.0))
            if gflops > best["gflops"]:
                best.update(gflops=gflops, n=n, layout=layout)
    return best


# --------------------------------------------------------------------------------------------
# Preparation (once, in the parent): the two models saved, the batches tokenized and saved
# --------------------------------------------------------------------------------------------


def prepare(settings: Settings) -> dict[str, Any]:
    """Save our model, the LLaVA reference built from it, and every batch into the work folder."""
    from benchmarks.llava_reference import build_llava_reference
    from vlm import build_vlm

    work = Path(settings.workdir)
    torch.manual_seed(0)
    if settings.quick:
        llm = str(_quick_llm_folder(work / "quick-llm"))
        model, processor = build_vlm(llm, vision_model=None, vision_model_config=QUICK_CLIP_CONFIG, projector_type="mlp2x_gelu")
    else:
        model, processor = build_vlm("smollm2-135m-instruct", vision_model="ViT-B-16", projector_type="mlp2x_gelu")
    model.save_pretrained(work / "ours")
    processor.save_pretrained(work / "ours")
    reference = build_llava_reference(model)
    reference.save_pretrained(work / "reference")
    shapes = {
        "vision": model.config.vision_config["model_name"],
        "vision_width": model.vision_tower.hidden_size,
        "vision_layers": model.vision_tower.num_layers,
        "image_tokens": model.config.image_seq_length,
        "projector": model.config.projector_type,
        "llm": model.config.text_config.model_type,
        "llm_hidden": model.config.text_config.hidden_size,
        "llm_layers": model.config.text_config.num_hidden_layers,
        "vocab": model.config.text_config.vocab_size,
        "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
    }
    del model, reference
    batches, stats = make_batches(processor, work, settings.train_batch)
    torch.save(batches, work / "batches.pt")
    shapes["batches"] = stats
    return shapes


def _quick_llm_folder(folder: Path) -> Path:
    """A 2-layer, 64-wide Llama with SmolLM2's config, tokenizer and chat template, random weights."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from vlm.llm_source import resolve_llm

    source = resolve_llm("smollm2-135m-instruct")
    config = AutoConfig.from_pretrained(source)
    for key, value in QUICK_LLM_OVERRIDES.items():
        setattr(config, key, value)
    config.head_dim = config.hidden_size // config.num_attention_heads
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(source).save_pretrained(folder)
    return folder


def make_batches(processor, work: Path, train_batch: int) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, Any]]:
    """Training batches as the training code makes them, and left-padded generation prompts."""
    from eval.shapes import IMAGE_TOKEN, write_shapes_dataset
    from train.dataset import VLMCollator, prepare_dataset

    files = write_shapes_dataset(work / "data", n=64, seed=0, n_eval=8)
    rng = random.Random(0)
    collate = VLMCollator(processor.tokenizer.pad_token_id)
    batches, stats = {}, {}
    for name, part in (("stage1", "captions"), ("stage2", "instruct")):
        dataset, _ = prepare_dataset([str(files[part])], None, processor, max_length=2048, skip_bad=False, progress=False)
        batch = collate([dataset[i] for i in rng.sample(range(len(dataset)), train_batch)])
        batches[name] = batch
        lengths = batch["attention_mask"].sum(1)
        stats[name] = {
            "batch": train_batch,
            "tokens_per_sample": lengths.tolist(),
            "padded_length": batch["input_ids"].shape[1],
            "labeled_positions": int((batch["labels"][:, 1:] != -100).sum()),
        }
    records = json.loads(Path(files["eval"]).read_text())[:8]
    prompts = [processor.apply_chat_template([{"role": "user", "content": f"{IMAGE_TOKEN}\n{r['question']}"}]) for r in records]
    from PIL import Image

    images = [[Image.open(Path(files["eval"]).parent / r["image"]).convert("RGB")] for r in records]
    for batch_size in (1, 8):
        batch = dict(processor(text=prompts[:batch_size], images=images[:batch_size], padding_side="left"))
        batches[f"infer_b{batch_size}"] = batch
        stats[f"infer_b{batch_size}"] = {"batch": batch_size, "prompt_tokens": batch["attention_mask"].sum(1).tolist()}
    return batches, stats


# --------------------------------------------------------------------------------------------
# One worker: load one implementation, set it up for the row, time it
# --------------------------------------------------------------------------------------------


def run_worker(settings: Settings, row: str, impl: str, dtype: str) -> list[dict[str, Any]]:
    if settings.threads:
        torch.set_num_threads(settings.threads)
    torch.manual_seed(0)
    work = Path(settings.workdir)
    batches = torch.load(work / "batches.pt", weights_only=True)
    model = load_impl(work, impl)
    load = [round(x, 2) for x in os.getloadavg()]
    if row in TRAIN_ROWS:
        records = time_training(settings, model, row, impl, dtype, batches["stage1" if row == "stage1" else "stage2"])
    else:
        records = time_inference(settings, model, row, impl, dtype, batches[row])
    for record in records:
        record["load_1m"] = [load[0], round(os.getloadavg()[0], 2)]
    return records


def load_impl(work: Path, impl: str):
    if impl == "reference":
        from transformers import LlavaForConditionalGeneration

        return LlavaForConditionalGeneration.from_pretrained(work / "reference", dtype=torch.float32).eval()
    from vlm import VLMForCausalLM

    return VLMForCausalLM.from_pretrained(work / "ours", dtype=torch.float32).eval()


def setup_training(model, row: str, impl: str):
    """Freeze and wrap exactly as the stage does: our training code for ours, its LLaVA mirror for the reference."""
    from train.config import TrainConfig
    from train.stages import apply_stage

    stage_cfg = TrainConfig(stage="pretrain" if row == "stage1" else "sft", init_from=None if row == "stage1" else "(benchmark)",
                            data=["(benchmark)"], lora=row == "lora")
    if impl != "reference":
        return apply_stage(model, stage_cfg)
    model.requires_grad_(False)
    model.model.multi_modal_projector.requires_grad_(True)
    if row == "full":
        model.model.language_model.requires_grad_(True)
        model.lm_head.requires_grad_(True)
    if row == "lora":
        from peft import LoraConfig, get_peft_model

        head = model.get_output_embeddings()
        targets = [f"model.language_model.{name}" for name, module in model.model.language_model.named_modules()
                   if isinstance(module, torch.nn.Linear) and module is not head]
        lora = LoraConfig(r=stage_cfg.lora_r, lora_alpha=stage_cfg.lora_alpha, lora_dropout=stage_cfg.lora_dropout,
                          target_modules=targets, modules_to_save=["multi_modal_projector"], task_type="CAUSAL_LM")
        model = get_peft_model(model, lora)
    return model


def time_training(settings: Settings, model, row: str, impl: str, dtype: str, batch: dict[str, torch.Tensor]) -> list[dict[str, Any]]:
    model = setup_training(model, row, impl)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    # The fused kernel, as our training gets it from transformers' Trainer (optim="adamw_torch_fused")
    optimizer = torch.optim.AdamW(trainable, lr=1e-5, weight_decay=0.0, fused=True)
    inputs = dict(batch)
    if impl == "reference":
        inputs.pop("num_images")
    if impl == "ours-fast":
        from train.compile import compile_llm_layers

        inputs = _with_cached_features(model, inputs)
        compile_llm_layers(model)

    def step(labeled_positions_only: bool | None = None) -> None:
        optimizer.zero_grad(set_to_none=True)
        flag = {} if labeled_positions_only is None else {"labeled_positions_only": labeled_positions_only}
        with autocast(dtype):
            loss = model(**inputs, **flag).loss
        loss.backward()
        optimizer.step()

    rss_loaded = reset_peak_rss()
    paired = None
    if impl == "ours-fast":
        # The compile happens in the first steps (one graph, then one with dynamic shapes for the
        # layers whose input needs a gradient); FlopCounterMode would see only part of the compiled
        # work, so this worker counts no FLOPs (the plain computation's count is the model FLOPs).
        for _ in range(2):
            step()
        times, flops = timed(step, settings.warmup, settings.steps, count_flops=False)
    elif impl == "ours-plain":
        # The plain path's own figures, and a paired A/B of the optimization in this one process:
        # steps with the LM head on labeled positions only and on all of them alternate (in
        # alternating order), so both see the same machine load. `ours` (on) is the training default.
        times, flops = timed(lambda: step(False), settings.warmup, 0)
        step(True)  # warm the labeled path too
        plain, labeled = [], []
        for i in range(settings.steps):
            for flag in ((False, True) if i % 2 == 0 else (True, False)):
                start = time.perf_counter()
                step(flag)
                (labeled if flag else plain).append(time.perf_counter() - start)
        times = plain
        paired = {"plain_s": plain, "labeled_s": labeled,
                  "speedup": statistics.median(p / q for p, q in zip(plain, labeled))}
    else:
        times, flops = timed(step, settings.warmup, settings.steps)
    cache_ab = None
    if impl == "ours" and "pixel_values" in inputs:
        # The vision-feature cache (train.features): the tower's outputs, computed once, replace
        # the pixels; the tower is frozen in every stage. Steps with pixels and with cached
        # features alternate, as above.
        pixel_inputs = inputs
        cached_inputs = _with_cached_features(model, inputs)
        pixels_s, cached_s = [], []
        for i in range(settings.steps):
            for use_cache in ((False, True) if i % 2 == 0 else (True, False)):
                inputs = cached_inputs if use_cache else pixel_inputs
                start = time.perf_counter()
                step()
                (cached_s if use_cache else pixels_s).append(time.perf_counter() - start)
        inputs = pixel_inputs
        cache_ab = {"pixels_s": pixels_s, "cached_s": cached_s,
                    "speedup": statistics.median(p / q for p, q in zip(pixels_s, cached_s))}
    dropout_ab = None
    if impl == "ours" and row == "lora":
        # LoRA dropout 0.05 (LLaVA-1.5's recipe) against 0 (peft's and our default, the rows above):
        # steps with nn.Dropout(0.05) and with nn.Identity on every LoRA input alternate.
        with_s, without_s = [], []
        for i in range(settings.steps):
            for p in ((0.05, 0.0) if i % 2 == 0 else (0.0, 0.05)):
                _set_lora_dropout(model, p)
                start = time.perf_counter()
                step()
                (with_s if p else without_s).append(time.perf_counter() - start)
        _set_lora_dropout(model, 0.0)
        dropout_ab = {"dropout_s": with_s, "no_dropout_s": without_s,
                      "speedup": statistics.median(a / b for a, b in zip(with_s, without_s))}
    record = {
        "row": row, "impl": impl, "dtype": dtype, "batch": int(batch["input_ids"].shape[0]),
        "median_s": statistics.median(times), "times_s": times, "executed_flops": flops,
        "tokens": int(batch["attention_mask"].sum()), "labeled_positions": int((batch["labels"][:, 1:] != -100).sum()),
        "trainable_params": sum(p.numel() for p in trainable),
        "rss_loaded_mib": rss_loaded, "peak_rss_mib": peak_rss_mib(),
    }
    if paired:
        record["paired_ab"] = paired
    if cache_ab:
        record["feature_cache_ab"] = cache_ab
    if dropout_ab:
        record["lora_dropout_ab"] = dropout_ab
    if settings.profile and impl == "ours":
        record["profile"] = profile_one(step)
    return [record]


class StepClock:
    """A logits processor that only notes the time (and FLOPs so far) of every generation step.

    generate calls it once per new token, right after that token's forward pass: the first call
    ends the prefill (time to first token), the gaps between later calls are decode steps.
    """

    def __init__(self):
        self.counter: FlopCounterMode | None = None
        self.stamps: list[float] = []
        self.flops: list[int] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self.stamps.append(time.perf_counter())
        if self.counter is not None:
            self.flops.append(self.counter.get_total_flops())
        return scores


def time_inference(settings: Settings, model, row: str, impl: str, dtype: str, batch: dict[str, torch.Tensor]) -> list[dict[str, Any]]:
    from transformers import LogitsProcessorList

    inputs = {k: v for k, v in batch.items() if not (impl == "reference" and k == "num_images")}
    config = copy.deepcopy(model.generation_config)
    config.do_sample, config.num_beams = False, 1
    n = settings.new_tokens
    clock = StepClock()
    runs: list[tuple[float, float]] = []  # (time to first token, mean decode step) per repetition

    def generate() -> None:
        clock.stamps.clear()
        start = time.perf_counter()
        with autocast(dtype):
            model.generate(**inputs, generation_config=config, max_new_tokens=n, min_new_tokens=n,
                           logits_processor=LogitsProcessorList([clock]))
        assert len(clock.stamps) == n, f"generate made {len(clock.stamps)} steps, expected {n}"
        runs.append((clock.stamps[0] - start, (clock.stamps[-1] - clock.stamps[0]) / (n - 1)))

    rss_loaded = reset_peak_rss()
    with FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FLOPS) as counter:
        clock.counter = counter
        generate()  # warm-up 1, counting FLOPs
    clock.counter = None
    prefill_flops, total_flops = clock.flops[0], counter.get_total_flops()
    for _ in range(settings.warmup - 1):
        generate()
    del runs[:]
    for _ in range(settings.steps):
        generate()
    size = int(batch["input_ids"].shape[0])
    common = {"impl": impl, "dtype": dtype, "batch": size, "rss_loaded_mib": rss_loaded, "peak_rss_mib": peak_rss_mib(),
              "new_tokens": n}
    ttft = [first for first, _ in runs]
    decode = [step for _, step in runs]
    return [
        {**common, "row": f"ttft_b{size}", "median_s": statistics.median(ttft), "times_s": ttft,
         "executed_flops": prefill_flops, "tokens": int(batch["attention_mask"].sum())},
        {**common, "row": f"decode_b{size}", "median_s": statistics.median(decode), "times_s": decode,
         "executed_flops": (total_flops - prefill_flops) / (n - 1), "tokens": size},
    ]


def _set_lora_dropout(model, p: float) -> None:
    """Give every LoRA layer of a peft model dropout ``p`` on its input (``nn.Identity`` for 0, as peft builds it)."""
    for module in model.modules():
        dropouts = getattr(module, "lora_dropout", None)
        if isinstance(dropouts, torch.nn.ModuleDict):
            for name in list(dropouts):
                dropouts[name] = torch.nn.Dropout(p) if p else torch.nn.Identity()


def _with_cached_features(model, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The batch as training's feature cache feeds it: the frozen tower's outputs instead of pixels."""
    vlm = model.get_base_model() if hasattr(model, "get_base_model") else model
    with torch.no_grad():
        features = vlm.vision_tower(inputs["pixel_values"])  # [N_img, 196, D_vis]
    return {k: v for k, v in inputs.items() if k != "pixel_values"} | {"vision_features": features}


def autocast(dtype: str):
    return torch.autocast("cpu", dtype=torch.bfloat16) if dtype == "bf16" else nullcontext()


def timed(fn, warmup: int, steps: int, count_flops: bool = True) -> tuple[list[float], int]:
    """Run ``fn`` ``warmup`` times (counting FLOPs on the first, unless told not to), then ``steps`` timed times."""
    flops = 0
    if count_flops:
        with FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FLOPS) as counter:
            fn()
        flops = counter.get_total_flops()
    else:
        fn()
    for _ in range(warmup - 1):
        fn()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times, flops


def profile_one(step) -> str:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15, max_name_column_width=60)


# FlopCounterMode has formulas for the CUDA attention kernels only; these are the CPU ones.
def _cpu_sdpa_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query, key, value)


def _cpu_sdpa_backward_flops(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out, query, key, value)


def _native_mha_flops(query, key, value, embed_dim, num_heads, *args, out_shape=None, **kwargs) -> int:
    """nn.MultiheadAttention's inference fast path (open_clip's tower): in/out projections + attention."""
    batch, length, width = query
    source = key[1]
    return 2 * batch * width * width * (2 * length + 2 * source) + 4 * batch * length * source * width


CPU_ATTENTION_FLOPS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_sdpa_backward_flops,
    torch.ops.aten._native_multi_head_attention: _native_mha_flops,
}


def reset_peak_rss() -> float:
    """Return memory to the OS, reset the RSS high-water mark to the current RSS; return that RSS (MiB)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    return _proc_status_mib("VmRSS") or peak_rss_mib()


def peak_rss_mib() -> float:
    hwm = _proc_status_mib("VmHWM")
    if hwm is not None:
        return hwm
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _proc_status_mib(field: str) -> float | None:
    try:
        found = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    except OSError:
        return None
    return round(int(found.group(1)) / 1024, 1) if found else None


# --------------------------------------------------------------------------------------------
# Summary and table
# --------------------------------------------------------------------------------------------


def summarize(results: list[dict[str, Any]], peaks: dict[str, Any]) -> list[dict[str, Any]]:
    """One line per (row, ours variant, dtype): ours vs the reference, throughput, MFU, memory."""
    by_key = {(r["row"], r["impl"], r["dtype"]): r for r in results}
    lines = []
    order = [row for row in TRAIN_ROWS] + ["ttft_b1", "ttft_b8", "decode_b1", "decode_b8"]
    dtypes = list(dict.fromkeys(r["dtype"] for r in results))
    for dtype in dtypes:
        for row in order:
            for impl in ("ours", "ours-plain", "ours-fast"):
                ours = by_key.get((row, impl, dtype))
                if ours is None:
                    continue
                reference = by_key.get((row, "reference", dtype))
                model_source = by_key.get((row, "ours-plain", dtype)) or by_key.get((row, "ours", dtype))
                if model_source is None:
                    raise ValueError(f"row {row}: run `ours` or `ours-plain` too: `ours-fast` counts no FLOPs")
                model_flops = model_source["executed_flops"]  # the plain computation's, when measured
                seconds = ours["median_s"]
                decode = row.startswith("decode")
                lines.append({
                    "row": row, "impl": impl, "dtype": dtype, "batch": ours["batch"],
                    "ours_ms": 1e3 * seconds,
                    "reference_ms": 1e3 * reference["median_s"] if reference else None,
                    "ratio": seconds / reference["median_s"] if reference else None,
                    "samples_per_s": None if decode else ours["batch"] / seconds,
                    "tokens_per_s": ours["tokens"] / seconds,
                    "model_gflop": model_flops / 1e9,
                    "model_flops_from": model_source["impl"],
                    "load_1m": ours["load_1m"],
                    "reference_load_1m": reference["load_1m"] if reference else None,
                    "paired_speedup": (by_key.get((row, "ours-plain", dtype)) or {}).get("paired_ab", {}).get("speedup")
                    if impl == "ours" else None,
                    "mfu_fp32": model_flops / seconds / (peaks["fp32"]["gflops"] * 1e9),
                    "mfu_bf16": model_flops / seconds / (peaks["bf16"]["gflops"] * 1e9),
                    "peak_rss_mib": ours["peak_rss_mib"],
                    "reference_peak_rss_mib": reference["peak_rss_mib"] if reference else None,
                })
    return lines


def _title(line: dict[str, Any]) -> str:
    row = line["row"]
    if row in ROW_TITLES:
        if line["impl"] == "ours-fast":
            return f"{ROW_TITLES[row]}, all optimizations (labeled positions, feature cache, compiled LLM layers)"
        head = "labeled positions" if line["impl"] == "ours" else "all positions"
        return f"{ROW_TITLES[row]}, LM head on {head}"
    kind, batch = row.split("_b")
    return f"{'time to first token' if kind == 'ttft' else 'decode, per token'}, batch {batch}"


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _load(load: list[float] | None) -> str:
    return "-" if load is None else f"{load[0]:.1f}-{load[1]:.1f}"


def render_report(report: dict[str, Any]) -> str:
    machine, peaks, shapes, settings = report["machine"], report["matmul_peak"], report["shapes"], report["settings"]
    v = machine["versions"]
    lines = [
        f"machine: {machine['cpu_model']}, {machine['cores']} cores ({machine['torch_threads']} torch threads), "
        f"CPU capability {machine['cpu_capability']}, AMX-BF16 {'yes' if machine['amx_bf16'] else 'no'}, "
        f"AVX512-BF16 {'yes' if machine['avx512_bf16'] else 'no'}; load average (1/5/15 min) before "
        f"{machine['load_before']}, after {machine['load_after']}",
        f"versions: python {v['python']}, torch {v['torch']}, transformers {v['transformers']}, peft {v['peft']}, open_clip {v['open_clip']}",
        f"matmul peak measured in this run (fastest repetition, the better of start and end): fp32 "
        f"{peaks['fp32']['gflops']:.1f} GFLOP/s (n={peaks['fp32']['n']}, {peaks['fp32']['layout']}; start/end "
        f"{peaks['fp32'].get('gflops_start_end')}), bf16 {peaks['bf16']['gflops']:.2f} GFLOP/s (n={peaks['bf16']['n']}, "
        f"{peaks['bf16']['layout']}; start/end {peaks['bf16'].get('gflops_start_end')}): bf16 peak is "
        f"{peaks['fp32']['gflops'] / max(peaks['bf16']['gflops'], 1e-9):.1f}x below fp32 here; best GFLOP/s by operand layout "
        f"(nn = A @ B, nt = A @ B.T as in nn.Linear): fp32 {peaks['fp32']['by_layout']}, bf16 {peaks['bf16']['by_layout']}",
        f"model: {shapes['vision']} ({shapes['vision_layers']} layers, width {shapes['vision_width']}, random weights), "
        f"{shapes['image_tokens']} image tokens, {shapes['projector']} projector, {shapes['llm']} "
        f"({shapes['llm_layers']} layers, hidden {shapes['llm_hidden']}, vocab {shapes['vocab']}); {shapes['params_m']}M parameters",
    ]
    b = shapes["batches"]
    for name in ("stage1", "stage2"):
        s = b[name]
        lines.append(f"{name} batch: {s['batch']} samples of {s['tokens_per_sample']} tokens (padded to {s['padded_length']}), "
                     f"{s['labeled_positions']} labeled positions")
    lines.append(f"inference prompts (tokens): batch 1 {b['infer_b1']['prompt_tokens']}, batch 8 {b['infer_b8']['prompt_tokens']}; "
                 f"decode over {settings['new_tokens']} new tokens")
    lines.append(f"each figure: median of {settings['steps']} timed repetitions after {settings['warmup']} warm-up")
    lines += [
        "",
        "| row | dtype | ours ms | reference ms | ours/ref | samples/s | tokens/s | model GFLOP | MFU vs fp32 peak | MFU vs bf16 peak | peak RSS ours MiB | peak RSS ref MiB | on/off paired | load ours / ref |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for line in report["summary"]:
        lines.append(
            f"| {_title(line)} | {line['dtype']} | {_fmt(line['ours_ms'], '.1f')} | {_fmt(line['reference_ms'], '.1f')} | "
            f"{_fmt(line['ratio'], '.2f')} | {_fmt(line['samples_per_s'], '.2f')} | {_fmt(line['tokens_per_s'], '.1f')} | "
            f"{line['model_gflop']:.1f} | {line['mfu_fp32']:.1%} | {line['mfu_bf16']:.0%} | "
            f"{_fmt(line['peak_rss_mib'], '.0f')} | {_fmt(line['reference_peak_rss_mib'], '.0f')} | "
            f"{_fmt(line['paired_speedup'], '.2f')}{'x' if line['paired_speedup'] else ''} | "
            f"{_load(line['load_1m'])} / {_load(line['reference_load_1m'])} |"
        )
    lines.append("")
    lines.append("tokens/s: non-padding tokens of the batch per second (training, TTFT); new tokens per second (decode). "
                 "Decode ms is per step of the whole batch. ours/ref < 1: ours is faster. on/off paired: plain step time / "
                 "labeled-positions step time, median over pairs of alternating steps in one process (robust to load "
                 "drift, unlike comparing two rows). Model GFLOP: of the plain "
                 "computation (LM head on all positions), per step / prefill / decode step. load: 1-min load average at "
                 "the worker's start and end (2 cores; other work on the machine slows every figure, and an MFU above 100% "
                 "means the peak was measured while other work ran).")
    # The paired A/Bs of one optimization each: (record key, what is compared, slow side, fast side).
    paired_abs = (
        ("feature_cache_ab", "with the vision-feature cache (feature_cache=DIR) vs pixels", "pixels_s", "cached_s"),
        ("lora_dropout_ab", "without LoRA dropout (the rows above) vs 0.05 (LLaVA-1.5's recipe)", "dropout_s", "no_dropout_s"),
    )
    for key, what, slow, fast in paired_abs:
        for record in report["results"]:
            if record.get(key):
                ab = record[key]
                lines.append(
                    f"{ROW_TITLES[record['row']]} {what} ({record['dtype']}): {1e3 * statistics.median(ab[fast]):.1f} ms "
                    f"per step vs {1e3 * statistics.median(ab[slow]):.1f} ms, {ab['speedup']:.2f}x faster "
                    "(median over pairs of alternating steps in one process)"
                )
    lines.append(f"wall time {report['wall_s']:.0f} s")
    for record in report["results"]:
        if record.get("profile"):
            lines += ["", f"profile of one {record['row']} step (ours, {record['dtype']}):", record["profile"]]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
