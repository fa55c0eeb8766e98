"""The machine: CPU model and flags, versions, load, and its fp32 / bf16 matmul peaks (the MFU denominators)."""

from __future__ import annotations

import os
import platform
import re
import time
from pathlib import Path
from typing import Any

import torch


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
