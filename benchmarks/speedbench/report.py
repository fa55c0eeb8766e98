"""The summary (ours vs the reference, throughput, MFU, memory per row) and the Markdown report."""

from __future__ import annotations

import statistics
from typing import Any

from benchmarks.speedbench.settings import ROW_TITLES, TRAIN_ROWS


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
                # the plain computation's FLOPs, when measured (`ours-fast` runs compiled code, which counts none)
                model_flops = model_source["executed_flops"] if model_source else None
                seconds = ours["median_s"]
                decode = row.startswith("decode")
                lines.append({
                    "row": row, "impl": impl, "dtype": dtype, "batch": ours["batch"],
                    "ours_ms": 1e3 * seconds,
                    "reference_ms": 1e3 * reference["median_s"] if reference else None,
                    "ratio": seconds / reference["median_s"] if reference else None,
                    "samples_per_s": None if decode else ours["batch"] / seconds,
                    "tokens_per_s": ours["tokens"] / seconds,
                    "model_gflop": None if model_flops is None else model_flops / 1e9,
                    "model_flops_from": model_source["impl"] if model_source else None,
                    "load_1m": ours["load_1m"],
                    "reference_load_1m": reference["load_1m"] if reference else None,
                    "paired_speedup": (by_key.get((row, "ours-plain", dtype)) or {}).get("paired_ab", {}).get("speedup")
                    if impl == "ours" else None,
                    "mfu_fp32": _mfu(model_flops, seconds, peaks["fp32"]),
                    "mfu_bf16": _mfu(model_flops, seconds, peaks["bf16"]),
                    "peak_rss_mib": ours["peak_rss_mib"],
                    "reference_peak_rss_mib": reference["peak_rss_mib"] if reference else None,
                })
    return lines


def _mfu(flops: float | None, seconds: float, peak: dict[str, Any]) -> float | None:
    """Model FLOPs per second over a matmul peak; None where the row's FLOPs were not counted."""
    return None if flops is None else flops / seconds / (peak["gflops"] * 1e9)


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
            f"{_fmt(line['model_gflop'], '.1f')} | {_fmt(line['mfu_fp32'], '.1%')} | {_fmt(line['mfu_bf16'], '.0%')} | "
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
