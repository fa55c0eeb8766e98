"""Running the steps: each command printed, run with its peak memory measured, finished steps reused."""

from __future__ import annotations

import json
import os
import re
import shlex
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from apps.demo.step import DemoError, Step
from vlm.atomic import atomic_write_json, atomic_write_text

STATE_FILE = "demo.json"
_PYTHON_NAME = re.compile(r"(?<=/)python[0-9.]*$")


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


def recorded_commands(commands: list[list[str]]) -> list[list[str]]:
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
            if recorded is not None and _comparable(recorded["commands"]) != _comparable(recorded_commands(step.commands)):
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
        state["steps"][step.name] = {"commands": recorded_commands(step.commands), "seconds": round(step.seconds, 1),
                                     "peak_rss_mib": round(peak, 1)}
        atomic_write_json(workdir / STATE_FILE, state)
        log(f"  {step.name}: {duration(step.seconds)}, peak RSS {peak:,.0f} MiB")


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{seconds:.1f}s"
