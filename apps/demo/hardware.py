"""Where the demo trains: the device and the number of stage-2 processes, found on this machine."""

from __future__ import annotations

import os
from dataclasses import dataclass

from apps.demo.step import DemoError


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
