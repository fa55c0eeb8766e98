"""Put a VLM behind an OpenAI-compatible HTTP API, with a web chat page, in one process.

  POST /v1/chat/completions   OpenAI's Chat Completions: text and image_url parts (data: URLs),
                              system messages, multi-turn, stream: true (server-sent events)
  GET  /v1/models             the served model
  GET  /health                status, queue and batching counters (no API key needed)
  GET  /                      the web chat page (offline: no CDN)

Requests that wait together share one generate call (dynamic batching, up to --max-batch-size
rows; greedy requests all batch together, sampled ones with equal temperature and top_p, a
seeded sampled one alone). A full waiting list answers 429; a request past --request-timeout
answers 504; a client that disconnects has its generation stopped. Greedy replies equal
`vlm chat`'s for the same images and prompt. Every refused request gets an OpenAI error
object ({"error": {"message", "type", "param", "code"}}) with a 4xx.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import socket
import sys
from pathlib import Path

DEFAULT_PORT = 8000


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", metavar="DIR", type=Path, required=True,
                   help="model folder, LoRA output/checkpoint, or training run folder (what `vlm chat --model` takes)")
    p.add_argument("--host", metavar="HOST", default="127.0.0.1",
                   help="address to listen on (default: 127.0.0.1, this machine only; 0.0.0.0 exposes it: use --api-key)")
    p.add_argument("--port", metavar="PORT", type=int, default=DEFAULT_PORT, help=f"port (default: {DEFAULT_PORT}; 0 picks a free one)")
    p.add_argument("--api-key", metavar="KEY", default=os.environ.get("VLM_API_KEY"),
                   help="require 'Authorization: Bearer KEY' on every /v1 request (default: $VLM_API_KEY, else none)")
    p.add_argument("--served-model-name", metavar="NAME", help="the model's name in the API (default: the --model folder's name)")
    p.add_argument("--max-batch-size", metavar="N", type=int, default=8, help="most requests in one generate call (default: 8)")
    p.add_argument("--batch-wait-ms", metavar="MS", type=float, default=5.0,
                   help="how long a request waits for others to batch with when the model is idle (default: 5)")
    p.add_argument("--max-queue", metavar="N", type=int, default=64, help="most requests waiting for the model; more get 429 (default: 64)")
    p.add_argument("--request-timeout", metavar="SECONDS", type=float, default=300.0,
                   help="seconds from a request's arrival to the end of its reply, waiting included; then 504 (default: 300)")
    p.add_argument("--max-tokens", metavar="N", type=int, default=512,
                   help="most tokens in one reply, and the default when a request gives none (default: 512)")
    p.add_argument("--max-images", metavar="N", type=int, default=8, help="most images in one request (default: 8)")
    p.add_argument("--max-image-pixels", metavar="N", type=int, default=16_777_216,
                   help="most pixels (width x height) of one image, checked before decoding (default: 16777216 = 4096^2)")
    p.add_argument("--max-image-bytes", metavar="BYTES", type=int, default=10 * 1024 * 1024, help="largest encoded image (default: 10 MiB)")
    p.add_argument("--max-body-mb", metavar="MB", type=float, default=32.0, help="largest request body in MiB (default: 32)")
    p.add_argument("--allow-remote-images", action="store_true",
                   help="fetch http(s) image URLs (default: refused; only data: URLs are read)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available, else cpu)")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                   help="weight dtype (default: bfloat16 on GPU, float32 on CPU)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"],
                   help="server log level (default: info: one line per request)")


def settings_from_args(args: argparse.Namespace):
    from apps.serve.images import ImageLimits
    from apps.serve.settings import ServeSettings

    for name in ("max_batch_size", "max_queue", "max_tokens", "max_images", "max_image_pixels", "max_image_bytes"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    for name in ("request_timeout", "max_body_mb"):
        if getattr(args, name) <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.batch_wait_ms < 0:
        raise ValueError(f"--batch-wait-ms must be >= 0, got {args.batch_wait_ms}")
    if args.api_key is not None and not args.api_key.strip():
        raise ValueError("--api-key is empty; give a key or leave the option out")
    return ServeSettings(
        model_name=args.served_model_name or args.model.resolve().name, api_key=args.api_key,
        max_batch_size=args.max_batch_size, max_waiting=args.max_queue, batch_wait_s=args.batch_wait_ms / 1000,
        request_timeout_s=args.request_timeout, max_tokens=args.max_tokens, max_images=args.max_images,
        max_body_bytes=int(args.max_body_mb * 1024 * 1024),
        images=ImageLimits(max_pixels=args.max_image_pixels, max_bytes=args.max_image_bytes,
                           allow_remote=args.allow_remote_images),
    )


def listen(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port``, or a ``RuntimeError`` that says what to change."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise RuntimeError(f"cannot listen on {host}:{port} ({err.strerror}); choose another --port or --host") from None
    sock.listen(2048)
    return sock


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from apps.serve.app import create_app
    from vlm.chat import load_for_chat

    settings = settings_from_args(args)
    if not args.model.exists():
        raise FileNotFoundError(f"--model {args.model}: no such folder")
    sock = listen(args.host, args.port)  # before the model loads: a taken port fails at once
    if not _is_loopback(args.host) and settings.api_key is None:
        print(f"vlm serve: warning: listening on {args.host} without --api-key: anyone who can reach it can use it",
              file=sys.stderr)
    model, processor = load_for_chat(args.model, device=args.device, dtype=args.dtype)
    app = create_app(model, processor, settings)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    print(f"vlm serve: {settings.model_name} on http://{shown}:{port}/ (web page), http://{shown}:{port}/v1 (API)",
          file=sys.stderr, flush=True)
    logging.getLogger("vlm.serve").setLevel(args.log_level.upper())
    server = uvicorn.Server(uvicorn.Config(app, log_level=args.log_level, timeout_graceful_shutdown=5))
    server.run(sockets=[sock])
    return 0
