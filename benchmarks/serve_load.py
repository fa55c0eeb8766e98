"""Load benchmark of ``vlm serve``: many streaming clients against one, on a real server process.

Usage::

    nice -n 10 python -m benchmarks.serve_load --model runs/merged
    python -m benchmarks.serve_load --model M --clients 1 32 --requests 64 256 --max-tokens 32 --out runs/serve_load.json

For each number of clients (default: 1, then 32) the script starts ``vlm serve`` in its own
process (``python -m apps serve``, 127.0.0.1, a free port), sends one warm-up request, reads the
server's RSS, then has that many clients send ``--requests`` streamed chat completions between
them through the official ``openai`` client (``AsyncOpenAI``, no retries): each asks a question
about one picture of shapes (a different one per request, as a PNG data: URL), greedy, up to
``--max-tokens`` tokens. Each request is counted as answered (its stream ended with a finish
reason and ``[DONE]``), refused (an OpenAI error with a 4xx/5xx status, e.g. 429 when the queue
is full) or lost (anything else: a dropped connection, a stream without an end); none should be
lost. Time to first token is from sending the request to its first content chunk; latency to its
last chunk. The server's RSS is read again after the load, and its ``/health`` counters give the
generate calls and rows (so the mean batch). The clients run in this process, on the same CPU as
the server: on a 2-core machine they take some of its time.

It prints a markdown table and writes the rows as JSON to ``--out`` after each one finishes.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path
from typing import Any

import httpx
import openai
import psutil
from PIL import Image, ImageDraw

from vlm.atomic import atomic_write_json

QUESTIONS = ["What shapes are in the image?", "How many shapes are there?", "What colour is the largest shape?",
             "Describe the picture.", "Is there a circle in the image?", "Where is the square?"]
COLOURS = [(220, 40, 40), (40, 160, 60), (40, 80, 220), (230, 200, 40), (150, 60, 200), (240, 140, 30)]


def picture(seed: int) -> str:
    """A PNG data: URL of a few coloured shapes, different for each seed."""
    image = Image.new("RGB", (224, 224), (245, 245, 245))
    draw = ImageDraw.Draw(image)
    for k in range(1 + seed % 4):
        x, y = (37 * (seed + 3 * k)) % 170, (59 * (seed + 5 * k)) % 170
        box, colour = [x, y, x + 44, y + 44], COLOURS[(seed + k) % len(COLOURS)]
        (draw.ellipse if (seed + k) % 2 else draw.rectangle)(box, fill=colour)
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {"cpu": platform.processor() or "unknown", "cores": os.cpu_count()}
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        if found := re.search(r"model name\s*:\s*(.+)", cpuinfo):
            info["cpu"] = found[1].strip()
        flags = set(re.search(r"flags\s*:\s*(.+)", cpuinfo)[1].split())
        info["amx"] = "amx_bf16" in flags
        info["avx512"] = "avx512f" in flags
    except (OSError, TypeError):
        pass
    info["load_before"] = [round(x, 2) for x in os.getloadavg()]
    return info


class Server:
    """``vlm serve`` in its own process, on a free port of 127.0.0.1."""

    def __init__(self, model: Path, args: argparse.Namespace):
        command = [sys.executable, "-m", "apps", "serve", "--model", str(model), "--port", "0", "--log-level", "warning",
                   "--max-batch-size", str(args.max_batch_size), "--max-queue", str(args.max_queue),
                   "--max-tokens", str(args.max_tokens), "--request-timeout", str(args.request_timeout)]
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        self.process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env)
        self.url = None
        for line in self.process.stderr:
            if match := re.search(r"on (http://127\.0\.0\.1:\d+)/ \(web page\)", line):
                self.url = match[1]
                break
            sys.stderr.write(line)
        if self.url is None:
            raise RuntimeError(f"vlm serve exited ({self.process.wait()}) before listening")
        self.ps = psutil.Process(self.process.pid)

    def rss_mb(self) -> float:
        return self.ps.memory_info().rss / 2**20

    def health(self) -> dict[str, Any]:
        return httpx.get(f"{self.url}/health", timeout=60).json()

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()


async def one_request(client: openai.AsyncOpenAI, model: str, index: int, max_tokens: int) -> dict[str, Any]:
    messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": picture(index)}},
                                             {"type": "text", "text": QUESTIONS[index % len(QUESTIONS)]}]}]
    started = time.perf_counter()
    first = None
    finish = None
    tokens = 0
    try:
        stream = await client.chat.completions.create(model=model, messages=messages, max_tokens=max_tokens, stream=True,
                                                      stream_options={"include_usage": True})
        async for chunk in stream:
            if chunk.usage is not None:
                tokens = chunk.usage.completion_tokens
            for choice in chunk.choices:
                if choice.delta.content and first is None:
                    first = time.perf_counter()
                finish = choice.finish_reason or finish
    except openai.APIStatusError as err:
        return {"outcome": "refused", "status": err.status_code, "message": str(err)[:200]}
    except Exception as err:  # noqa: BLE001 (a lost request is what this counts)
        return {"outcome": "lost", "error": f"{type(err).__name__}: {err}"[:200]}
    end = time.perf_counter()
    if finish is None:
        return {"outcome": "lost", "error": "the stream ended without a finish reason"}
    return {"outcome": "answered", "ttft": (first or end) - started, "latency": end - started, "tokens": tokens}


async def load(url: str, model: str, clients: int, requests: int, max_tokens: int, offset: int) -> tuple[list[dict], float]:
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=3600,
                                http_client=openai.DefaultAsyncHttpxClient(limits=httpx.Limits(max_connections=clients + 4)))
    queue = iter(range(requests))
    results: list[dict] = []

    async def worker() -> None:
        for index in queue:
            results.append(await one_request(client, model, offset + index, max_tokens))

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(clients)))
    wall = time.perf_counter() - started
    await client.close()
    return results, wall


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def run_row(model: Path, clients: int, requests: int, args: argparse.Namespace) -> dict[str, Any]:
    server = Server(model, args)
    try:
        model_name = httpx.get(f"{server.url}/v1/models", timeout=60).json()["data"][0]["id"]
        asyncio.run(load(server.url, model_name, 1, 1, args.max_tokens, offset=10_000))  # warm-up
        rss_before = server.rss_mb()
        health_before = server.health()
        results, wall = asyncio.run(load(server.url, model_name, clients, requests, args.max_tokens, offset=0))
        rss_after = server.rss_mb()
        health = server.health()
    finally:
        server.close()
    answered = [r for r in results if r["outcome"] == "answered"]
    ttft = [r["ttft"] for r in answered]
    latency = [r["latency"] for r in answered]
    calls = health["generate_calls"] - health_before["generate_calls"]
    rows = health["rows"] - health_before["rows"]
    return {
        "clients": clients, "requests": len(results), "answered": len(answered),
        "refused": sum(r["outcome"] == "refused" for r in results), "lost": sum(r["outcome"] == "lost" for r in results),
        "wall_s": wall, "requests_per_s": len(answered) / wall, "tokens_per_s": sum(r["tokens"] for r in answered) / wall,
        "ttft_p50_s": percentile(ttft, 50), "ttft_p95_s": percentile(ttft, 95),
        "latency_p50_s": percentile(latency, 50), "latency_p95_s": percentile(latency, 95),
        "generate_calls": calls, "mean_batch": rows / calls if calls else None, "largest_batch": health["largest_batch"],
        "rss_before_mb": rss_before, "rss_after_mb": rss_after,
        "errors": sorted({r.get("message") or r.get("error") for r in results if r["outcome"] != "answered"})[:5],
    }


def table(rows: list[dict[str, Any]]) -> str:
    def f(value, digits=2):
        return "-" if value is None else f"{value:.{digits}f}"

    lines = ["| clients | requests | answered / refused / lost | req/s | tokens/s | TTFT p50 / p95 (s) | "
             "latency p50 / p95 (s) | generate calls (mean batch) | server RSS before / after (MB) |",
             "|---:|---:|---|---:|---:|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['clients']} | {r['requests']} | {r['answered']} / {r['refused']} / {r['lost']} | {f(r['requests_per_s'])} | "
            f"{f(r['tokens_per_s'], 1)} | {f(r['ttft_p50_s'])} / {f(r['ttft_p95_s'])} | {f(r['latency_p50_s'])} / "
            f"{f(r['latency_p95_s'])} | {r['generate_calls']} ({f(r['mean_batch'], 1)}) | "
            f"{r['rss_before_mb']:.0f} / {r['rss_after_mb']:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="what `vlm serve --model` takes")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 32], help="concurrent clients per row (default: 1 32)")
    parser.add_argument("--requests", type=int, nargs="+", default=[256],
                        help="requests per row: one number for every row, or one per --clients entry (default: 256)")
    parser.add_argument("--max-tokens", type=int, default=32, help="max_tokens of each request (default: 32)")
    parser.add_argument("--max-batch-size", type=int, default=8, help="the server's --max-batch-size (default: 8)")
    parser.add_argument("--max-queue", type=int, default=64, help="the server's --max-queue (default: 64)")
    parser.add_argument("--request-timeout", type=float, default=600.0, help="the server's --request-timeout (default: 600)")
    parser.add_argument("--out", type=Path, default=Path("runs/serve_load.json"), help="JSON results, rewritten after each row")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # killed: still stop the server (run_row's finally)
    if not args.model.exists():
        parser.error(f"--model {args.model}: no such folder")
    if len(args.requests) not in (1, len(args.clients)):
        parser.error(f"--requests takes one number or one per --clients entry ({len(args.clients)}), got {len(args.requests)}")
    requests = args.requests * len(args.clients) if len(args.requests) == 1 else args.requests
    report: dict[str, Any] = {"date": date.today().isoformat(), "machine": machine(), "model": str(args.model),
                              "settings": {k: v for k, v in vars(args).items() if k not in ("model", "out")}, "rows": []}
    print(f"# vlm serve under load: {args.model}, {report['machine']['cpu']} ({report['machine']['cores']} cores), "
          f"{requests} requests of up to {args.max_tokens} tokens for {args.clients} clients", file=sys.stderr)
    for clients, count in zip(args.clients, requests):
        row = run_row(args.model, clients, count, args)
        report["rows"].append(row)
        atomic_write_json(args.out, report)
        print(f"{clients} clients: {json.dumps({k: v for k, v in row.items() if k != 'errors'})}", file=sys.stderr)
    print(table(report["rows"]))
    lost = sum(r["lost"] for r in report["rows"])
    if lost:
        print(f"{lost} requests lost: {[r['errors'] for r in report['rows']]}", file=sys.stderr)
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main())
