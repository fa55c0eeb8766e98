"""Issue 8 speed benchmark: our VLM against transformers' LLaVA holding the same weights, on this machine.

Usage::

    python -m benchmarks.speed                  # full shapes, every row (~15 min on 2 CPU cores)
    python -m benchmarks.speed --quick          # tiny shapes, fp32 and bf16: a CI smoke run
    python benchmarks/speed.py --rows stage1 full --steps 5 --out runs/benchmarks/speed.json
    python -m benchmarks.speed --rows full --impls ours --profile   # + the top ops of one step

Shapes (full): open_clip ViT-B-16 (random weights: speed does not depend on them), 196 patch
tokens from block -2, LLaVA-1.5's projector (``mlp2x_gelu``; our default ``linear`` would reach
LLaVA as ``linear_1`` plus an identity ``linear_2``, an extra matmul for the reference; the conversion is
``vlm export``'s, ``apps/export``), SmolLM2-135M-Instruct (the offline weights). Sequences are
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

This file is the command (flags, the run, one worker process per row); its parts are in
``benchmarks/speedbench/``: settings, machine (peaks), prepare (models, batches), worker,
training / inference (what is timed), timing, flops, memory, report.

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
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python benchmarks/speed.py`: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from benchmarks.speedbench.machine import machine_info, measure_matmul_peak
from benchmarks.speedbench.prepare import prepare
from benchmarks.speedbench.report import render_report, summarize
from benchmarks.speedbench.settings import DTYPES, IMPLS, ROWS, TRAIN_ROWS, Settings
from benchmarks.speedbench.worker import run_worker
from vlm.atomic import atomic_write_json

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULT_MARK = "BENCH_RESULT "


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
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        # written after every row too: an interrupted or failing run keeps what it measured
        report = run_benchmark(settings, in_process=args.in_process, save=lambda partial: atomic_write_json(out, partial, indent=2))
    finally:
        if args.keep_workdir:
            print(f"work folder kept: {settings.workdir}", file=sys.stderr)
        else:
            shutil.rmtree(settings.workdir, ignore_errors=True)
    atomic_write_json(out, report, indent=2)
    print(render_report(report))
    print(f"\nJSON: {out}")
    for failure in report["failures"]:
        print(f"row {failure['row']} / {failure['impl']} / {failure['dtype']} failed: {failure['error']}", file=sys.stderr)
    return report


# --------------------------------------------------------------------------------------------
# The run: machine, peaks, models and batches, one worker per (row, impl, dtype), the table
# --------------------------------------------------------------------------------------------


def run_benchmark(
    settings: Settings, in_process: bool = False, save: Callable[[dict[str, Any]], None] | None = None
) -> dict[str, Any]:
    """Every (dtype, row, impl) of ``settings``; ``save`` gets the report so far after each one.

    A row that fails is noted in ``failures`` (its error's last line) and the run goes on.
    """
    started = time.time()
    if settings.threads:
        torch.set_num_threads(settings.threads)
    machine = machine_info()
    print(f"machine: {machine['cpu_model']}, {machine['cores']} cores, load {machine['load_before']}", file=sys.stderr)
    peaks = {name: measure_matmul_peak(DTYPES[name], settings.quick) for name in ("fp32", "bf16")}
    print(f"matmul peaks: fp32 {peaks['fp32']['gflops']:.1f} GFLOP/s, bf16 {peaks['bf16']['gflops']:.2f} GFLOP/s", file=sys.stderr)
    shapes = prepare(settings)
    results: list[dict[str, Any]] = []
    failures: list[dict[str, str]] = []

    def report(complete: bool) -> dict[str, Any]:
        return {
            "settings": {k: v for k, v in asdict(settings).items() if k != "workdir"},
            "machine": machine,
            "matmul_peak": peaks,
            "shapes": shapes,
            "results": results,
            "failures": failures,
            "summary": summarize(results, peaks),
            "complete": complete,
            "wall_s": round(time.time() - started, 1),
        }

    for dtype in settings.dtypes:
        for row in settings.rows:
            for impl in settings.impls:
                if impl in ("ours-plain", "ours-fast") and row not in TRAIN_ROWS:
                    continue  # these optimizations only change training steps
                print(f"running {row} / {impl} / {dtype} ...", file=sys.stderr)
                try:
                    records = (run_worker if in_process else run_worker_process)(settings, row, impl, dtype)
                except Exception as error:  # noqa: BLE001 - one row's failure must not lose the others
                    last = (str(error).strip().splitlines() or [type(error).__name__])[-1]
                    failures.append({"row": row, "impl": impl, "dtype": dtype, "error": last})
                    print(f"  {row} / {impl} / {dtype} failed: {last}", file=sys.stderr)
                    records = []
                results.extend(records)
                for record in records:
                    print(f"  {record['row']} {impl}: {1e3 * record['median_s']:.1f} ms (median of "
                          f"{[round(1e3 * t) for t in record['times_s']]}), load {record['load_1m']}", file=sys.stderr)
                if save is not None:
                    save(report(complete=False))
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
    return report(complete=True)


def run_worker_process(settings: Settings, row: str, impl: str, dtype: str) -> list[dict[str, Any]]:
    spec = json.dumps({"settings": asdict(settings), "row": row, "impl": impl, "dtype": dtype})
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error", "TQDM_DISABLE": "1"}
    done = subprocess.run([sys.executable, "-m", "benchmarks.speed", "--worker", spec], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT_MARK)]
    if done.returncode or not lines:
        raise RuntimeError(f"worker {row}/{impl}/{dtype} failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    return json.loads(lines[-1][len(RESULT_MARK):])


if __name__ == "__main__":
    sys.exit(1 if main().get("failures") else 0)
