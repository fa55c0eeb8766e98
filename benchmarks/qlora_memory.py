"""QLoRA benchmark: peak memory and seconds per step of stage 2 with full fine-tuning, LoRA and QLoRA.

Usage::

    nice -n 10 python -m benchmarks.qlora_memory --out runs/benchmarks/qlora.json
    python -m benchmarks.qlora_memory --quick --out /tmp/qlora-quick.json     # tiny models: plumbing only
    python -m benchmarks.qlora_memory --rows smollm2-135m:full smollm2-135m:qlora-nf4 --merge-gap none

Each row is one real ``vlm train`` run (``train.run.run_training``) of stage 2 on the synthetic shapes
instructions, in its own worker process, from a stage-1 folder made by the benchmark (the LLM with a
random 4-block ViT, width 192, and a linear projector). Same batch within a model, no gradient
checkpointing, LoRA r 64 / alpha 128 on every LLM Linear without dropout; QLoRA is the same LoRA on
the LLM quantized on load (``quantization=nf4``, double quantization, compute in the run's dtype).

Models: ``smollm2-135m`` (the offline SmolLM2-135M-Instruct weights) and Llama configs with random
weights, for memory and speed only: ``llama-360m`` (SmolLM2-360M's shape) and ``llama-1b``
(Llama-3.2-1B's shape with SmolLM2's 49k vocabulary, 1.07B parameters).

How figures are made:
- peak memory: the worker's RSS high-water mark (``VmHWM``). ``load`` is the mark when training
  starts (model loaded, quantized, wrapped, data read); it is then reset (``/proc/self/clear_refs``)
  and ``train`` is the mark over the steps (weights, gradients, optimizer state, activations), read
  before the final model is saved. A worker whose RSS passes ``--max-rss-gib`` (default 8, this shared
  machine's budget) is stopped, and its row says so.
- time: the median seconds per optimizer step over the steps after the first (which allocates the
  optimizer state).
- merge gap (``--merge-gap``): for each quantization, a short QLoRA run is merged by ``vlm merge``
  onto the full-precision base, and the merge's own check reports the max |logit difference| between
  the merged model and the quantized model with the adapter (as trained), relative to
  max(1, max |logit|): what the quantization costs, the figure train/merge.py's tolerances are set from.

Results are printed as markdown tables and saved as JSON after every row.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from vlm.atomic import atomic_write_json

LLAMA_SHAPES = {  # random-weight Llamas: hidden, intermediate, layers, heads, kv heads
    "llama-360m": (960, 2560, 32, 15, 5),
    "llama-1b": (2048, 8192, 16, 32, 8),
    "llama-tiny": (64, 128, 2, 4, 2),  # --quick
}
METHODS = {"full": {}, "lora": {"lora": True}, "qlora-nf4": {"lora": True, "quantization": "nf4"},
           "qlora-fp4": {"lora": True, "quantization": "fp4"}, "qlora-int8": {"lora": True, "quantization": "int8"}}
DEFAULT_ROWS = ["smollm2-135m:full", "smollm2-135m:lora", "smollm2-135m:qlora-nf4",
                "llama-360m:full", "llama-360m:lora", "llama-360m:qlora-nf4", "llama-1b:lora", "llama-1b:qlora-nf4"]
BATCH = {"smollm2-135m": 4, "llama-360m": 2, "llama-1b": 2, "llama-tiny": 2}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Rows are MODEL:METHOD, methods: " + ", ".join(METHODS))
    p.add_argument("--rows", nargs="+", default=None, help="rows to run (default: every row that fits 8 GiB)")
    p.add_argument("--steps", type=int, default=4, help="optimizer steps per row (the first is not timed)")
    p.add_argument("--merge-gap", nargs="*", default=["nf4", "fp4", "int8"], help="quantizations to measure the merge gap of (on the first model)")
    p.add_argument("--workdir", type=Path, default=Path("runs/benchmarks/qlora"), help="bases, data and runs (large: ~6 GB with llama-1b)")
    p.add_argument("--out", type=Path, default=Path("runs/benchmarks/qlora.json"), help="JSON results, rewritten after each row")
    p.add_argument("--threads", type=int, default=2, help="torch threads per worker")
    p.add_argument("--max-rss-gib", type=float, default=8.0, help="stop a worker whose RSS passes this")
    p.add_argument("--quick", action="store_true", help="a tiny Llama, 2 steps: checks the plumbing in seconds")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        print("RESULT " + json.dumps(WORKERS[json.loads(args.worker)["kind"]](json.loads(args.worker))), flush=True)
        return 0
    rows = args.rows or (["llama-tiny:full", "llama-tiny:lora", "llama-tiny:qlora-nf4"] if args.quick else DEFAULT_ROWS)
    steps = 2 if args.quick else args.steps
    args.workdir.mkdir(parents=True, exist_ok=True)
    described, info = machine()
    results = {"machine": described, "machine_info": info, "date": time.strftime("%Y-%m-%d"), "threads": args.threads, "steps": steps,
               "rows": [], "merge_gap": []}
    common = {"workdir": str(args.workdir.absolute()), "threads": args.threads}
    data = str(args.workdir.absolute() / "shapes")
    worker(args, {"kind": "data", "out": data, **common})
    for row in rows:
        model, method = row.split(":")
        base = worker(args, {"kind": "base", "model": model, **common})
        spec = {"kind": "train", "model": model, "method": method, "base": base["path"], "data": data, "steps": steps,
                "batch": BATCH.get(model, 2), **common}
        results["rows"].append({"model": model, "method": method, "batch": spec["batch"], **guarded(args, spec)})
        save(args.out, results)
        print(memory_table(results), flush=True)
    gap_model = rows[0].split(":")[0]
    for kind in args.merge_gap:
        base = worker(args, {"kind": "base", "model": gap_model, **common})
        spec = {"kind": "merge_gap", "model": gap_model, "quantization": kind, "base": base["path"], "data": data,
                "steps": steps, "batch": BATCH.get(gap_model, 2), **common}
        results["merge_gap"].append({"model": gap_model, "quantization": kind, **guarded(args, spec)})
        save(args.out, results)
        print(gap_table(results), flush=True)
    print(f"\n{results['machine']}, {results['date']}, {args.threads} threads\n\n{memory_table(results)}\n\n{gap_table(results)}")
    return 0


def guarded(args: argparse.Namespace, spec: dict) -> dict:
    """A row's result, or its failure as the row's ``error`` (the other rows are still measured and saved)."""
    try:
        return worker(args, spec)
    except RuntimeError as err:
        return {"error": str(err)[:300]}


def worker(args: argparse.Namespace, spec: dict) -> dict:
    """Run one spec in a fresh process; stop it if its RSS passes the budget."""
    import psutil

    env = {**os.environ, "OMP_NUM_THREADS": str(spec["threads"]), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.qlora_memory", "--worker", json.dumps(spec)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    over = threading.Event()

    def watch() -> None:
        limit = args.max_rss_gib * 2**30
        while proc.poll() is None:
            try:
                if psutil.Process(proc.pid).memory_info().rss > limit:
                    over.set()
                    proc.kill()
                    return
            except psutil.NoSuchProcess:
                return
            time.sleep(0.2)

    threading.Thread(target=watch, daemon=True).start()
    out, err = proc.communicate()
    if over.is_set():
        return {"error": f"stopped: RSS passed {args.max_rss_gib:g} GiB"}
    found = [line for line in out.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not found:
        tail = err.strip().splitlines()[-1] if err.strip() else f"exit {proc.returncode}"
        raise RuntimeError(f"worker {spec['kind']} {spec.get('model', '')} {spec.get('method', '')} failed: {tail}")
    return json.loads(found[-1][len("RESULT "):])


# --- workers (each in its own process) -------------------------------------------------------


def make_data(spec: dict) -> dict:
    from eval.shapes import write_shapes_dataset

    if not (Path(spec["out"]) / "instruct.json").is_file():
        write_shapes_dataset(Path(spec["out"]), 64, seed=0, n_eval=1)
    return {"path": spec["out"]}


def make_base(spec: dict) -> dict:
    """A stage-1 folder for the model (made once, reused): the LLM, a random 4-block ViT, a linear projector."""
    import torch

    from train.config import SHIPPED_DIR
    from vlm.builder import build_vlm
    from vlm.llm_source import resolve_llm

    torch.set_num_threads(spec["threads"])
    folder = Path(spec["workdir"]) / "bases" / spec["model"]
    if (folder / "config.json").is_file():
        return {"path": str(folder)}
    llm = resolve_llm("smollm2-135m-instruct")
    if spec["model"] in LLAMA_SHAPES:  # random weights in the shape given, SmolLM2's tokenizer
        llm = str(Path(spec["workdir"]) / "llms" / spec["model"])
        if not (Path(llm) / "config.json").is_file():
            _random_llama(spec["model"], resolve_llm("smollm2-135m-instruct"), Path(llm))
    vision = json.loads((SHIPPED_DIR / "clip_vit_tiny.json").read_text())
    torch.manual_seed(0)
    model, processor = build_vlm(llm, vision_model=None, vision_model_config=vision)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return {"path": str(folder), "parameters": sum(p.numel() for p in model.language_model.parameters())}


def _random_llama(name: str, tokenizer_dir: str, out: Path) -> None:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    hidden, intermediate, layers, heads, kv_heads = LLAMA_SHAPES[name]
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=intermediate,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                         max_position_embeddings=8192, tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    LlamaForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)


def train_row(spec: dict) -> dict:
    import torch
    from transformers import TrainerCallback

    import train.run as run_module

    torch.set_num_threads(spec["threads"])
    marks: dict = {"step_seconds": []}

    class Clock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            marks["load_mib"] = _status_mib("VmHWM")
            Path("/proc/self/clear_refs").write_text("5")  # the high-water mark starts again here

        def on_step_begin(self, args, state, control, **kwargs):
            marks["start"] = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            marks["step_seconds"].append(time.perf_counter() - marks["start"])

        def on_train_end(self, args, state, control, **kwargs):
            marks["train_mib"] = _status_mib("VmHWM")

    original = run_module.VLMTrainer

    def with_clock(*args, **kwargs):
        trainer = original(*args, **kwargs)
        trainer.add_callback(Clock())
        return trainer

    run_module.VLMTrainer = with_clock
    run_dir = Path(spec["workdir"]) / "runs" / f"{spec['model']}-{spec.get('method') or 'qlora-' + spec['quantization']}"
    cfg = run_module.TrainConfig(
        stage="sft", init_from=spec["base"], data=[str(Path(spec["data"]) / "instruct.json")], max_length=512,
        per_device_train_batch_size=spec["batch"], max_steps=spec["steps"], learning_rate=1e-4, warmup_ratio=0.0,
        lora_r=64, lora_alpha=128, save_steps=10**6, logging_steps=1, output_dir=str(run_dir), overwrite_output_dir=True,
        seed=0, **METHODS[spec.get("method") or f"qlora-{spec['quantization']}"],
    )
    final = run_module.run_training(cfg)
    timed = marks["step_seconds"][1:] or marks["step_seconds"]
    return {"load_peak_mib": marks["load_mib"], "train_peak_mib": marks["train_mib"], "s_per_step": statistics.median(timed),
            "bf16": bool(run_module.training_arguments(cfg).bf16), "run": str(final.parent)}


def merge_gap(spec: dict) -> dict:
    from train.merge import merge, quantized_bound_for

    run = Path(train_row(spec)["run"])
    # The gap is what is measured: merge without its quantized check (an infinite tolerance), then
    # say whether the default bound (twice the base's own quantization cost) passes it.
    report = merge(run, run.parent / f"{run.name}-merged", overwrite=True, quantized_tolerance=float("inf"))
    scale = report.quantized_scale
    bound = quantized_bound_for(report.quantized_cost, scale)
    return {"max_abs_diff": report.quantized_diff, "relative": report.quantized_diff / scale,
            "base_cost": report.quantized_cost, "bound": bound, "passes": report.quantized_diff <= bound,
            "merge_check_fp32": report.max_abs_diff}


WORKERS = {"data": make_data, "base": make_base, "train": train_row, "merge_gap": merge_gap}


# --- reporting ---------------------------------------------------------------------------------


def _status_mib(field: str) -> float:
    found = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    return int(found.group(1)) / 1024 if found else float("nan")


def machine() -> tuple[str, dict]:
    """One line naming the CPU for the table, and the speed benchmark's full record of the machine."""
    from benchmarks.speedbench.machine import machine_info

    info = machine_info()
    kind = "AMX" if info["amx_bf16"] else "AVX512-bf16, no AMX" if info["avx512_bf16"] else "no AMX"
    return f"{info['cpu_model']}, {info['cores']} cores, {kind}", info


def memory_table(results: dict) -> str:
    lines = ["| model | method | batch | peak RSS, steps (MiB) | peak RSS, load (MiB) | s / step | dtype |",
             "|---|---|---:|---:|---:|---:|---|"]
    for r in results["rows"]:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['method']} | {r['batch']} | {r['error']} | | | |")
            continue
        lines.append(f"| {r['model']} | {r['method']} | {r['batch']} | {r['train_peak_mib']:,.0f} | {r['load_peak_mib']:,.0f} "
                     f"| {r['s_per_step']:.2f} | {'bf16' if r['bf16'] else 'fp32'} |")
    return "\n".join(lines)


def gap_table(results: dict) -> str:
    lines = ["| model | quantization | max abs logit diff, merged vs as trained | relative | the base alone, quantized vs not | "
             "default bound | passes | merged vs unmerged (fp32) |", "|---|---|---:|---:|---:|---:|---|---:|"]
    for r in results["merge_gap"]:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['quantization']} | {r['error']} | | | | | |")
            continue
        lines.append(f"| {r['model']} | {r['quantization']} | {r['max_abs_diff']:.3f} | {r['relative']:.4f} | {r['base_cost']:.3f} "
                     f"| {r['bound']:.3f} | {'yes' if r['passes'] else 'no'} | {r['merge_check_fp32']:.1e} |")
    return "\n".join(lines)


def save(path: Path, results: dict) -> None:
    atomic_write_json(path, results)


if __name__ == "__main__":
    sys.exit(main())
