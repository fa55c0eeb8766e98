"""`vlm serve`: a real uvicorn server on 127.0.0.1, driven by real clients (the openai package, httpx, Chromium).

The tiny Qwen2-style VLM of test_chat answers differently for every prompt and image, so equal
answers mean equal prompts. References are `vlm chat`'s own engine (``answer_once`` for one
question, ``ChatSession`` for a conversation; test_chat checks the command prints the same) and
``model.generate`` itself for the token counts. Everything runs in fp32 (``load_for_chat``'s CPU
default), whatever the CPU.
"""

from __future__ import annotations

import base64
import copy
import functools
import http.server
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest
import uvicorn
from PIL import Image

from apps.cli import main
from apps.serve.app import create_app
from apps.serve.command import listen
from apps.serve.images import ImageLimits
from apps.serve.settings import ServeSettings
from tiny import build_tiny_vlm, make_image
from vlm.chat import ChatSession, answer_once, load_for_chat, prompt_length, question_prompt

REPO = Path(__file__).parents[1]
KEY = "test-key"
NAME = "tiny-vlm"
MAX_TOKENS = 12


class LiveServer:
    """An app served by uvicorn in a thread, on a free port of 127.0.0.1."""

    def __init__(self, app):
        sock = listen("127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        self.app = app
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.02)

    def health(self) -> dict:
        return httpx.get(f"{self.url}/health").json()

    def wait_for(self, predicate, timeout: float = 20.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            health = self.health()
            if predicate(health):
                return health
            time.sleep(0.02)
        raise AssertionError(f"the server did not get there in {timeout} s: {self.health()}")

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)


def data_url(image: Image.Image, fmt: str = "PNG") -> str:
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(buffer.getvalue()).decode()


def user(text: str | None, *images: Image.Image) -> dict:
    parts = [{"type": "image_url", "image_url": {"url": data_url(image)}} for image in images]
    if text is not None:
        parts.append({"type": "text", "text": text})
    return {"role": "user", "content": parts}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, qwen2_dir) -> Path:
    root = tmp_path_factory.mktemp("serve") / "model"
    model, processor = build_tiny_vlm(qwen2_dir)
    model.save_pretrained(root)
    processor.save_pretrained(root)
    return root


@pytest.fixture(scope="module")
def loaded(model_dir):
    return load_for_chat(model_dir)


@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    return [make_image(seed) for seed in range(8)]


@pytest.fixture(scope="module")
def server(loaded):
    """The server most tests use: an API key, a 50 ms batching window and small limits to test against."""
    settings = ServeSettings(
        model_name=NAME, api_key=KEY, max_batch_size=8, batch_wait_s=0.05, max_tokens=64, max_images=3,
        max_body_bytes=1024 * 1024, images=ImageLimits(max_pixels=1_000_000, max_bytes=200_000),
    )
    live = LiveServer(create_app(*loaded, settings))
    yield live
    live.close()


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def endless(loaded):
    """The same model with its end-of-turn token switched off: every reply runs to max_tokens (a long reply on demand)."""
    model, processor = loaded
    endless = copy.copy(model)  # the same weights; only the generation config differs
    endless.generation_config = copy.deepcopy(model.generation_config)
    endless.generation_config.eos_token_id = None
    return endless, processor


def generated_tokens(model, processor, prompt: str, pictures, max_new_tokens: int) -> tuple[int, str]:
    """Reference usage from ``model.generate`` itself: tokens generated up to and with the end-of-turn token, and why it stopped."""
    inputs = processor(text=[prompt], images=[pictures] if pictures else None)
    output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                            pad_token_id=processor.tokenizer.pad_token_id)
    new = output[0, inputs["input_ids"].shape[1]:].tolist()
    eos = model.generation_config.eos_token_id
    if eos in new:
        return new.index(eos) + 1, "stop"
    return len(new), "length"


def streamed(client: openai.OpenAI, **request) -> tuple[str, str, object, int]:
    """Text, finish reason, usage and number of content chunks of a streamed completion."""
    pieces, finish, usage = [], None, None
    for chunk in client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **request):
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            if choice.delta.content:
                pieces.append(choice.delta.content)
            finish = choice.finish_reason or finish
    return "".join(pieces), finish, usage, len(pieces)


# --- answers ------------------------------------------------------------------------------------


QUESTIONS = [
    ("describe the picture", 1),
    ("how many shapes are there", 2),
    ("yes or no", 0),
]


@pytest.mark.parametrize("question,num_images", QUESTIONS)
def test_greedy_answers_equal_vlm_chat_streamed_or_not_with_right_usage(client, loaded, images, question, num_images):
    model, processor = loaded
    pictures = images[:num_images]
    expected = answer_once(model, processor, question, images=pictures, max_new_tokens=MAX_TOKENS)
    prompt = question_prompt(processor, question, num_images)
    completion_tokens, finish = generated_tokens(model, processor, prompt, pictures, MAX_TOKENS)
    request = dict(model=NAME, messages=[user(question, *pictures)], max_tokens=MAX_TOKENS)

    reply = client.chat.completions.create(**request)
    assert reply.choices[0].message.content == expected
    assert reply.choices[0].finish_reason == finish
    assert reply.model == NAME
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (prompt_length(processor, prompt), completion_tokens)
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    assert reply.usage.prompt_tokens > num_images * processor.image_seq_length  # each image counts as its 196 tokens

    text, stream_finish, usage, chunks = streamed(client, **request)
    assert (text, stream_finish) == (expected, finish)
    assert usage.model_dump() == reply.usage.model_dump()
    assert chunks > 1  # the reply came in pieces


def test_a_conversation_with_a_system_prompt_and_an_image_added_later_equals_a_chat_session(client, loaded, images):
    model, processor = loaded
    session = ChatSession(model, processor, system="you are a helpful assistant", max_new_tokens=MAX_TOKENS)
    session.pending.append((Path("a.png"), images[0]))
    first = session.ask("what colour is the circle")
    session.pending.append((Path("b.png"), images[1]))
    second = session.ask("and in this image")
    third = session.ask("how many shapes")

    messages = [{"role": "system", "content": "you are a helpful assistant"}, user("what colour is the circle", images[0])]
    answers = []
    for follow_up in [user("and in this image", images[1]), {"role": "user", "content": "how many shapes"}, None]:
        answer = client.chat.completions.create(model=NAME, messages=messages, max_tokens=MAX_TOKENS)
        answers.append(answer.choices[0].message.content)
        messages += [{"role": "assistant", "content": answers[-1]}] + ([follow_up] if follow_up else [])
    assert answers == [first, second, third]
    assert streamed(client, model=NAME, messages=messages[:-1], max_tokens=MAX_TOKENS)[0] == third


def test_a_seeded_sampled_reply_equals_vlm_chat_with_that_seed(client, loaded, images):
    model, processor = loaded
    expected = answer_once(model, processor, "describe the picture", images=[images[2]], max_new_tokens=MAX_TOKENS,
                           temperature=0.9, seed=7)
    request = dict(model=NAME, messages=[user("describe the picture", images[2])], max_tokens=MAX_TOKENS,
                   temperature=0.9, seed=7)
    assert client.chat.completions.create(**request).choices[0].message.content == expected
    assert streamed(client, **request)[0] == expected
    other = answer_once(model, processor, "describe the picture", images=[images[2]], max_new_tokens=MAX_TOKENS,
                        temperature=0.9, seed=8)
    assert other != expected  # the seed matters, so the equality above says something


def test_stop_sequences_cut_the_reply_before_them(client, loaded, images):
    model, processor = loaded
    full = answer_once(model, processor, "describe the picture", images=[images[3]], max_new_tokens=40)
    stop = full[5:7]
    assert stop and full.find(stop) == 5
    request = dict(model=NAME, messages=[user("describe the picture", images[3])], max_tokens=40, stop=[stop, "never"])
    reply = client.chat.completions.create(**request)
    assert (reply.choices[0].message.content, reply.choices[0].finish_reason) == (full[:5], "stop")
    assert streamed(client, **request)[:2] == (full[:5], "stop")  # nothing of the stop string was streamed


def test_concurrent_requests_are_batched_and_answer_as_one_at_a_time(client, server, loaded, images):
    model, processor = loaded
    requests = [dict(model=NAME, messages=[user(q, images[i])], max_tokens=MAX_TOKENS + i)
                for i, q in enumerate(["describe the picture", "what colour is the circle", "how many shapes are there",
                                       "is the red square at the top left", "yes or no", "left or right"])]
    alone = [answer_once(model, processor, r["messages"][0]["content"][1]["text"], images=[images[i]],
                         max_new_tokens=r["max_tokens"]) for i, r in enumerate(requests)]
    before = server.health()

    def ask(i: int) -> str:
        if i % 2:
            return streamed(client, **requests[i])[0]
        return client.chat.completions.create(**requests[i]).choices[0].message.content

    with ThreadPoolExecutor(len(requests)) as pool:
        together = list(pool.map(ask, range(len(requests))))
    after = server.health()
    assert together == alone
    calls = after["generate_calls"] - before["generate_calls"]
    assert calls < len(requests), f"{len(requests)} concurrent requests took {calls} generate calls: not batched"
    assert after["largest_batch"] > 1
    assert after["completed"] - before["completed"] == len(requests)


# --- the API's surface --------------------------------------------------------------------------


def test_models_health_and_the_api_key(client, server):
    assert [m.id for m in client.models.list().data] == [NAME]
    assert client.models.retrieve(NAME).id == NAME
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4o")
    bad = openai.OpenAI(base_url=f"{server.url}/v1", api_key="wrong-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError, match="invalid API key"):
        bad.chat.completions.create(model=NAME, messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
    missing = httpx.post(f"{server.url}/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})
    assert missing.status_code == 401 and "Authorization: Bearer" in missing.json()["error"]["message"]
    assert httpx.get(f"{server.url}/health").json()["status"] == "ok"  # outside /v1: no key
    page = httpx.get(f"{server.url}/")
    assert page.status_code == 200 and "vlm chat" in page.text
    assert httpx.get(f"{server.url}/static/app.js").status_code == 200


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def _b64(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def _image_request(url: str) -> dict:
    return {"model": NAME, "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                                                       {"type": "text", "text": "what is it"}]}]}


def _malformed(images) -> list[tuple[str, object, int, str]]:
    """(what, body (a dict is sent as JSON, bytes as they are), status, a phrase the error message must have)."""
    ok = {"model": NAME, "messages": [{"role": "user", "content": "hi"}]}
    png = _png_bytes(images[0])
    bomb = io.BytesIO()
    Image.new("1", (3000, 3000)).save(bomb, "PNG")  # 9 Mpixels over the 1 M cap, ~2 kB encoded
    noisy = Image.frombytes("RGB", (300, 300), os.urandom(300 * 300 * 3))  # ~270 kB as PNG, over the 200 kB cap
    return [
        ("not JSON", b"{bad json", 400, "not valid JSON"),
        ("empty body", b"", 400, "not valid JSON"),
        ("a JSON array", b"[1, 2]", 400, "must be a JSON object"),
        ("no messages", {"model": NAME}, 400, "messages: required field missing"),
        ("empty messages", {**ok, "messages": []}, 400, "at least 1 item"),
        ("messages not a list", {**ok, "messages": "hi"}, 400, "messages: "),
        ("unknown role", {**ok, "messages": [{"role": "robot", "content": "hi"}]}, 400, "messages[0].role"),
        ("content a number", {**ok, "messages": [{"role": "user", "content": 5}]}, 400, "a string, or an array of parts"),
        ("unknown part type", {**ok, "messages": [{"role": "user", "content": [{"type": "audio"}]}]}, 400, "'text', 'image_url'"),
        ("text part without text", {**ok, "messages": [{"role": "user", "content": [{"type": "text"}]}]}, 400,
         "messages[0].content[0].text: required field missing"),
        ("image_url a string", {**ok, "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": "x"}]}]},
         400, "messages[0].content[0].image_url"),
        ("image_url without url", {**ok, "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
         400, "image_url.url: required field missing"),
        ("max_tokens a string", {**ok, "max_tokens": "5"}, 400, "max_tokens: Input should be a valid integer"),
        ("max_tokens 0", {**ok, "max_tokens": 0}, 400, "max_tokens: Input should be greater than or equal to 1"),
        ("max_tokens over the limit", {**ok, "max_tokens": 10_000}, 400, "limit of 64 (--max-tokens)"),
        ("negative temperature", {**ok, "temperature": -1}, 400, "temperature"),
        ("top_p 0", {**ok, "top_p": 0}, 400, "top_p"),
        ("n 2", {**ok, "n": 2}, 400, "only n=1 is supported"),
        ("logprobs", {**ok, "logprobs": True}, 400, "logprobs are not supported"),
        ("five stop strings", {**ok, "stop": ["a", "b", "c", "d", "e"]}, 400, "at most 4 stop sequences"),
        ("stream not a bool", {**ok, "stream": "yes"}, 400, "stream: Input should be a valid boolean"),
        ("tools", {**ok, "tools": []}, 400, "tools: unknown or unsupported field"),
        ("a typo", {**ok, "max_token": 5}, 400, "max_token: unknown or unsupported field"),
        ("unknown model", {**ok, "model": "gpt-4o"}, 404, "does not exist; this server serves 'tiny-vlm'"),
        ("remote image", _image_request("https://example.com/cat.png"), 400, "--allow-remote-images"),
        ("a local path", _image_request("/etc/passwd"), 400, "file paths"),
        ("a file: URL", _image_request("file:///etc/passwd"), 400, "only data: URLs are read"),
        ("data URL not base64", _image_request("data:image/png,rawbytes"), 400, "must be base64-encoded"),
        ("broken base64", _image_request("data:image/png;base64,!!!notbase64"), 400, "base64 is not valid"),
        ("not an image type", _image_request(_b64(b"hello", "text/plain")), 400, "not an image"),
        ("undecodable image", _image_request(_b64(b"hello, not a picture")), 400, "not a readable image"),
        ("truncated PNG", _image_request(_b64(png[: len(png) // 2])), 400, "not a readable image"),
        ("decompression bomb", _image_request(_b64(bomb.getvalue())), 400, "exceeds the limit of 1000000"),
        ("image too many bytes", _image_request(_b64(_png_bytes(noisy))), 400, "limit of 200000 (--max-image-bytes)"),
        ("too many images", {**ok, "messages": [user("hi", *images[:4])]}, 400, "at most 3 per request (--max-images)"),
        ("an image from the assistant", {**ok, "messages": [
            user("hi"), {"role": "assistant", "content": [{"type": "image_url", "image_url": {"url": _b64(png)}}]},
            user("and")]}, 400, "images may only be in user messages"),
        ("ends with the assistant", {**ok, "messages": [user("hi"), {"role": "assistant", "content": "hello"}]}, 400,
         "the last message must be the user's"),
        ("two user messages", {**ok, "messages": [user("hi"), user("again")]}, 400, "expected a 'assistant' message"),
        ("system not first", {**ok, "messages": [user("hi"), {"role": "system", "content": "x"}]}, 400,
         "a system message may only come first"),
        ("image mark in text", {**ok, "messages": [user("look <image> here")]}, 400, "send each image as an image_url part"),
        ("over the context", {**ok, "messages": [user(" ".join(["yes"] * 1100))]}, 400, "the model's context is 2048 tokens"),
        ("body too large", b"{" + b" " * (1024 * 1024 + 10) + b"}", 413, "limit of 1048576 (--max-body-mb)"),
    ]


def _deep_png() -> bytes:
    deep = io.BytesIO()
    Image.new("I;16", (16, 16), 40000).save(deep, "PNG")
    return deep.getvalue()


def test_malformed_requests_get_a_4xx_that_says_what_to_fix_and_the_server_goes_on(client, server, images, loaded):
    cases = _malformed(images)
    assert len(cases) >= 25
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    with httpx.Client(base_url=server.url, headers=headers, timeout=30) as http:
        for what, body, status, phrase in cases:
            content = body if isinstance(body, bytes) else json.dumps(body).encode()
            response = http.post("/v1/chat/completions", content=content)
            assert response.status_code == status, f"{what}: {response.status_code} {response.text}"
            error = response.json()["error"]
            assert set(error) == {"message", "type", "param", "code"}, what
            assert phrase in error["message"], f"{what}: {error['message']!r} lacks {phrase!r}"
            assert "Traceback" not in response.text
        # the wrong method and an unknown path are OpenAI errors too
        wrong_method = http.get("/v1/chat/completions")
        assert wrong_method.status_code == 405 and "GET is not allowed" in wrong_method.json()["error"]["message"]
        assert http.post("/v1/completions", json={}).json()["error"]["code"] == "not_found"
        # a 16-bit greyscale image is not refused: it is scaled to 8 bits, as vlm chat and predict do
        deep = http.post("/v1/chat/completions", content=json.dumps(_image_request(_b64(_deep_png()))).encode())
        assert deep.status_code == 200, deep.text
    assert server.health()["status"] == "ok"
    model, processor = loaded
    expected = answer_once(model, processor, "describe the picture", images=[images[0]], max_new_tokens=MAX_TOKENS)
    reply = client.chat.completions.create(model=NAME, messages=[user("describe the picture", images[0])], max_tokens=MAX_TOKENS)
    assert reply.choices[0].message.content == expected
    assert server.health()["failed"] == 0


# --- many clients: the queue, the time limit, a client that leaves ------------------------------


@pytest.fixture(scope="module")
def small_server(endless):
    """One row at a time, one waiting, remote images allowed; replies run to max_tokens."""
    settings = ServeSettings(model_name=NAME, max_batch_size=1, max_waiting=1, batch_wait_s=0, max_tokens=100_000,
                             images=ImageLimits(allow_remote=True))
    live = LiveServer(create_app(*endless, settings))
    yield live
    live.close()


def test_a_client_that_leaves_has_its_generation_stopped(small_server):
    before = small_server.health()
    with httpx.stream("POST", f"{small_server.url}/v1/chat/completions", timeout=30,
                      json={"messages": [{"role": "user", "content": "describe"}], "max_tokens": 1500, "stream": True}) as r:
        lines = r.iter_lines()
        assert next(line for line in lines if line.startswith("data:"))  # the reply has started
    after = small_server.wait_for(lambda h: h["running"] == 0 and h["cancelled"] > before["cancelled"])
    steps = after["decode_steps"] - before["decode_steps"]
    assert steps < 1000, f"the generation went on for {steps} tokens after its client left"


def test_a_full_queue_answers_429_and_the_waiting_request_is_answered_after(small_server):
    long = {"messages": [{"role": "user", "content": "describe"}], "max_tokens": 3000, "stream": True}
    with httpx.stream("POST", f"{small_server.url}/v1/chat/completions", json=long, timeout=60) as running:
        lines = running.iter_lines()  # kept: a dropped line iterator closes the response
        next(line for line in lines if line.startswith("data:"))  # the only row is taken
        with ThreadPoolExecutor(1) as pool:
            waiting = pool.submit(httpx.post, f"{small_server.url}/v1/chat/completions", timeout=60,
                                  json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3})
            small_server.wait_for(lambda h: h["waiting"] == 1)
            refused = httpx.post(f"{small_server.url}/v1/chat/completions",
                                 json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3})
            assert refused.status_code == 429
            assert "busy" in refused.json()["error"]["message"] and refused.headers["retry-after"] == "1"
            running.close()  # the client leaves: its row stops, the waiting request runs
            answered = waiting.result(timeout=60)
    assert answered.status_code == 200 and answered.json()["usage"]["completion_tokens"] == 3


def test_requests_past_the_time_limit_get_504(endless):
    settings = ServeSettings(model_name=NAME, max_tokens=100_000, request_timeout_s=0.5)
    live = LiveServer(create_app(*endless, settings))
    try:
        client = openai.OpenAI(base_url=f"{live.url}/v1", api_key="none", max_retries=0)
        request = dict(model=NAME, messages=[{"role": "user", "content": "describe"}], max_tokens=50_000)
        started = time.monotonic()
        with pytest.raises(openai.APIStatusError, match="time limit of 0.5 s") as refused:
            client.chat.completions.create(**request)
        assert refused.value.status_code == 504 and time.monotonic() - started < 10
        with pytest.raises(openai.APIError, match="time limit"):  # streamed: the error comes in the stream
            streamed(client, **request)
        assert live.wait_for(lambda h: h["running"] == 0)["timed_out"] == 2
    finally:
        live.close()


def test_remote_images_are_fetched_only_behind_the_flag(small_server, images):
    png = _png_bytes(images[4])

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.end_headers()
            self.wfile.write(png)

        def log_message(self, *args):
            pass

    host = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=host.serve_forever, daemon=True).start()
    try:
        client = openai.OpenAI(base_url=f"{small_server.url}/v1", api_key="none", max_retries=0)
        answers = []
        for url in [f"http://127.0.0.1:{host.server_address[1]}/cat.png", _b64(png)]:
            messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                                     {"type": "text", "text": "describe the picture"}]}]
            answers.append(client.chat.completions.create(model=NAME, messages=messages, max_tokens=8).choices[0].message.content)
        assert answers[0] == answers[1]
    finally:
        host.shutdown()


# --- the command ----------------------------------------------------------------------------------


def test_vlm_serve_command_serves_and_refuses_a_taken_port(model_dir, capsys):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "apps", "serve", "--model", str(model_dir), "--port", "0",
                                "--log-level", "warning", "--api-key", KEY], cwd=REPO, env=env, stderr=subprocess.PIPE,
                               text=True)
    try:
        address = None
        for line in process.stderr:
            if match := re.search(r"on (http://127\.0\.0\.1:(\d+))/ \(web page\)", line):
                address, port = match[1], int(match[2])
                break
        assert address, "vlm serve did not say where it listens"
        assert httpx.get(f"{address}/health", timeout=30).json()["model"] == "model"
        assert httpx.get(f"{address}/v1/models").status_code == 401
        # The same command on the taken port (in this process: the command line is the same code) fails at once.
        assert main(["serve", "--model", str(model_dir), "--port", str(port)]) == 2
        assert f"vlm serve: error: cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err
    finally:
        process.terminate()
        process.wait(30)
    assert main(["serve", "--model", str(model_dir), "--max-batch-size", "0"]) == 2
    assert "--max-batch-size must be at least 1" in capsys.readouterr().err


# --- the web page in a real browser ---------------------------------------------------------------


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    driver_path = shutil.which("chromedriver") or "/usr/bin/chromedriver"
    if not Path(driver_path).exists():
        if os.environ.get("CI"):
            pytest.fail("chromedriver is missing: apt-get install -y chromium chromium-driver (.ci/run does)")
        pytest.skip("no chromedriver here: apt-get install -y chromium chromium-driver to run the browser test")
    profile = tempfile.mkdtemp(prefix="vlm-serve-chromium-")
    options = webdriver.ChromeOptions()
    for flag in ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--window-size=1100,1400", f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)  # a Service path: no Selenium Manager download
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def _screenshot_path(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("VLM_TEST_ARTIFACTS", tmp_path))
    folder.mkdir(parents=True, exist_ok=True)
    return folder / "serve-web-page.png"


def test_the_web_page_streams_answers_in_a_conversation_with_images(browser, server, loaded, images, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    model, processor = loaded
    session = ChatSession(model, processor, max_new_tokens=MAX_TOKENS)
    files = []
    for i in (5, 6):
        files.append(tmp_path / f"scene{i}.png")
        images[i].save(files[-1])
    wait = WebDriverWait(browser, 30)
    find = functools.partial(browser.find_element, By.ID)

    browser.get(server.url + "/")
    wait.until(EC.visibility_of_element_located((By.ID, "key-box")))  # the server has a key: the page asks for it
    find("api-key").send_keys(KEY)
    find("save-key").click()
    wait.until(EC.text_to_be_present_in_element((By.ID, "model-name"), NAME))
    assert not find("key-box").is_displayed()
    browser.execute_script("document.getElementById('max-tokens').value = arguments[0]", MAX_TOKENS)
    # Record every text the answer bubbles show, to see the reply arrive in pieces.
    browser.execute_script("""
        window.seen = [];
        new MutationObserver(() => document.querySelectorAll('.message.assistant .text')
            .forEach(t => window.seen.push(t.textContent))).observe(
            document.getElementById('messages'), {subtree: true, childList: true, characterData: true});""")

    def ask(text: str, image: Path | None) -> str:
        done = len(browser.find_elements(By.CSS_SELECTOR, ".message.assistant[data-done]"))
        if image is not None:
            find("file-input").send_keys(str(image))
            wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#pending img"))
        find("prompt").send_keys(text)
        find("send").click()
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".message.assistant[data-done]")) > done)
        errors = browser.find_elements(By.CSS_SELECTOR, ".message.error")
        assert not errors, errors[0].text
        return browser.execute_script(
            "const all = document.querySelectorAll('.message.assistant .text'); return all[all.length - 1].textContent")

    session.pending.append((files[0], images[5]))
    assert ask("describe the picture", files[0]) == session.ask("describe the picture")
    session.pending.append((files[1], images[6]))
    assert ask("and this one", files[1]) == session.ask("and this one")  # an image added mid-conversation
    assert ask("how many shapes", None) == session.ask("how many shapes")
    partial = [t for t in browser.execute_script("return window.seen") if t]
    assert len(set(partial)) > 3, "the answers did not stream in"
    assert len(browser.find_elements(By.CSS_SELECTOR, ".message.user img")) == 2
    shot = _screenshot_path(tmp_path)
    browser.save_screenshot(str(shot))
    print(f"web page screenshot: {shot}")

    find("reset").click()
    assert not browser.find_elements(By.CSS_SELECTOR, ".message")
    session.reset()
    session.pending.append((files[1], images[6]))
    assert ask("describe the picture", files[1]) == session.ask("describe the picture")  # no history after reset
