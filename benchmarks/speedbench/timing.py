"""Timing one step: warm-up (the first counting FLOPs), timed repetitions, autocast, a profile."""

from __future__ import annotations

import time
from contextlib import nullcontext

import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.speedbench.flops import CPU_ATTENTION_FLOPS


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
