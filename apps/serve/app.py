"""The FastAPI application: the OpenAI-compatible routes, ``/health`` and the web page.

``create_app(model, processor, settings)`` serves one model already in memory. A request is
validated (``schema``), its images decoded and its prompt built (``conversation``) in a worker
thread, its length checked against the model's context, and then it waits for the batching
engine (``engine``), which streams its text back. Everything that can go wrong on the way is an
OpenAI error object with a 4xx (``errors``); the client leaving cancels its generation.
"""

from __future__ import annotations

import asyncio
import copy
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import ValidationError
from sse_starlette import EventSourceResponse
from starlette.concurrency import run_in_threadpool
from torch import nn

from apps.serve.conversation import Prompt, build_prompt, count_images
from apps.serve.engine import BatchingEngine, EngineClosed, QueueFull
from apps.serve.errors import APIError, install_error_handlers, validation_error
from apps.serve.images import decode_image_url
from apps.serve.jobs import Delta, Event, Failed, Finished, Job
from apps.serve.middleware import APIKeyCheck, BodySizeLimit
from apps.serve.schema import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Choice,
    ChunkChoice,
    ModelCard,
    ModelList,
    Usage,
    completion_id,
    now,
)
from apps.serve.schema import Delta as ChunkDelta
from apps.serve.settings import ServeSettings
from vlm.chat import ContextLengthError, check_prompt_length, context_length, prompt_length
from vlm.processing import VLMProcessor

STATIC = Path(__file__).parent / "static"
DISCONNECT_POLL_S = 0.25


def create_app(model: nn.Module, processor: VLMProcessor, settings: ServeSettings) -> FastAPI:
    engine = BatchingEngine(model, processor, max_batch_size=settings.max_batch_size, max_waiting=settings.max_waiting,
                            batch_wait_s=settings.batch_wait_s, request_timeout_s=settings.request_timeout_s)
    created = now()
    limit = context_length(model)
    # Requests build and count their prompts in worker threads while the engine's generate call
    # pads a batch: a fast tokenizer must not change its padding state under another thread, so
    # the request side has its own copy (always unpadded).
    request_processor = copy.deepcopy(processor)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine.start()
        yield
        await run_in_threadpool(engine.close)

    # No /docs: Swagger UI loads from a CDN, and the page must work offline.
    app = FastAPI(title="vlm serve", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.engine, app.state.settings = engine, settings
    install_error_handlers(app)
    app.add_middleware(APIKeyCheck, api_key=settings.api_key)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "model": settings.model_name, "waiting": engine.waiting, "running": engine.running,
                "api_key_required": settings.api_key is not None, **vars(engine.stats)}

    @app.get("/v1/models")
    async def models() -> ModelList:
        return ModelList(data=[ModelCard(id=settings.model_name, created=created)])

    @app.get("/v1/models/{model_id:path}")
    async def model_card(model_id: str) -> ModelCard:
        _check_model(model_id, settings)
        return ModelCard(id=settings.model_name, created=created)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        arrived = time.monotonic()
        try:
            body = ChatCompletionRequest.model_validate_json(await request.body())
        except ValidationError as err:
            raise validation_error(err) from None
        if body.model is not None:
            _check_model(body.model, settings)
        max_tokens = _max_tokens(body, settings)
        images = count_images(body.messages)
        if images > settings.max_images:
            raise APIError(400, f"the conversation has {images} images; this server takes at most {settings.max_images} "
                           "per request (--max-images)", param="messages", code="too_many_images")
        prompt, prompt_tokens = await run_in_threadpool(_prepare, request_processor, body, settings, limit)

        loop, events = asyncio.get_running_loop(), asyncio.Queue()
        job = Job(
            prompt.text, prompt.images, prompt_tokens, max_tokens,
            deliver=lambda event: loop.call_soon_threadsafe(events.put_nowait, event),
            temperature=body.temperature or 0.0, top_p=1.0 if body.top_p is None else body.top_p, seed=body.seed,
            stop=body.stop_sequences(), deadline=arrived + settings.request_timeout_s,
        )
        try:
            engine.submit(job)
        except QueueFull:
            raise APIError(429, f"the server is busy: {settings.max_waiting} requests are waiting already (--max-queue); "
                           "retry in a moment", code="queue_full", headers={"Retry-After": "1"}) from None
        except EngineClosed:
            raise APIError(503, "the server is shutting down", code="shutting_down") from None

        first = await _next_event(events, job, request, settings)
        if first is None:
            return Response(status_code=499)  # the client has gone; nobody reads this
        if isinstance(first, Failed):
            raise APIError(first.status, first.message, code=first.code)
        reply = _Reply(completion_id(), settings.model_name, prompt_tokens)
        if body.stream:
            include_usage = body.stream_options is not None and body.stream_options.include_usage
            return EventSourceResponse(_stream(reply, first, events, job, include_usage), sep="\n")
        return await _collect(reply, first, events, job, request, settings)

    return app


def _prepare(processor: VLMProcessor, body: ChatCompletionRequest, settings: ServeSettings,
             limit: int | None) -> tuple[Prompt, int]:
    """Decode the images, build the prompt and count its tokens (``APIError`` if it does not fit the context)."""
    prompt = build_prompt(processor, body.messages, lambda url, where: decode_image_url(url, settings.images, where))
    prompt_tokens = prompt_length(processor, prompt.text)
    try:
        check_prompt_length(prompt_tokens, limit)
    except ContextLengthError as err:
        raise APIError(400, str(err), param="messages", code="context_length_exceeded") from None
    return prompt, prompt_tokens


def _check_model(name: str, settings: ServeSettings) -> None:
    if name != settings.model_name:
        raise APIError(404, f"the model {name!r} does not exist; this server serves {settings.model_name!r} "
                       "(GET /v1/models)", param="model", code="model_not_found")


def _max_tokens(body: ChatCompletionRequest, settings: ServeSettings) -> int:
    if body.max_tokens is not None and body.max_completion_tokens is not None and body.max_tokens != body.max_completion_tokens:
        raise APIError(400, f"max_tokens ({body.max_tokens}) and max_completion_tokens ({body.max_completion_tokens}) "
                       "disagree; send one of them", param="max_tokens")
    asked = body.max_completion_tokens or body.max_tokens
    if asked is not None and asked > settings.max_tokens:
        field = "max_completion_tokens" if body.max_completion_tokens else "max_tokens"
        raise APIError(400, f"{field} is {asked}, more than this server's limit of {settings.max_tokens} (--max-tokens); "
                       "ask for fewer", param=field, code="max_tokens_too_large")
    return asked or settings.max_tokens


async def _next_event(events: asyncio.Queue, job: Job, request: Request, settings: ServeSettings) -> Event | None:
    """The job's next event; None if the client left (the job is cancelled); a timeout ``Failed`` at the deadline."""
    while True:
        try:
            return await asyncio.wait_for(events.get(), timeout=DISCONNECT_POLL_S)
        except TimeoutError:
            if await request.is_disconnected():
                job.cancelled.set()
                return None
            if time.monotonic() > job.deadline + 1.0:  # the engine is busy with another batch: give up here
                job.cancelled.set()
                return Failed(504, f"the request waited past the server's time limit of {settings.request_timeout_s:g} s "
                              "(--request-timeout); retry when the server is less busy", "timeout")


class _Reply:
    """What a reply's chunks and its final object share."""

    def __init__(self, id_: str, model: str, prompt_tokens: int):
        self.id, self.model, self.prompt_tokens, self.created = id_, model, prompt_tokens, now()

    def usage(self, completion_tokens: int) -> Usage:
        return Usage(prompt_tokens=self.prompt_tokens, completion_tokens=completion_tokens,
                     total_tokens=self.prompt_tokens + completion_tokens)

    def chunk(self, delta: ChunkDelta | None = None, finish_reason: str | None = None, usage: Usage | None = None) -> str:
        choices = [] if delta is None else [ChunkChoice(delta=delta, finish_reason=finish_reason)]
        return ChatCompletionChunk(id=self.id, created=self.created, model=self.model, choices=choices,
                                   usage=usage).model_dump_json(exclude_none=False)


async def _collect(reply: _Reply, event: Event, events: asyncio.Queue, job: Job, request: Request,
                   settings: ServeSettings) -> JSONResponse | Response:
    text = []
    while not isinstance(event, Finished):
        if isinstance(event, Failed):
            raise APIError(event.status, event.message, code=event.code)
        text.append(event.text)
        event = await _next_event(events, job, request, settings)
        if event is None:
            return Response(status_code=499)
    completion = ChatCompletion(
        id=reply.id, created=reply.created, model=reply.model,
        choices=[Choice(message=AssistantMessage(content="".join(text)), finish_reason=event.finish_reason)],
        usage=reply.usage(event.completion_tokens),
    )
    return JSONResponse(completion.model_dump())


async def _stream(reply: _Reply, event: Event, events: asyncio.Queue, job: Job, include_usage: bool) -> AsyncIterator[str]:
    """OpenAI's chunks as SSE ``data:`` lines, ending with ``[DONE]``; the client leaving cancels the job."""
    try:
        yield reply.chunk(ChunkDelta(role="assistant", content=""))
        while True:
            if isinstance(event, Delta):
                yield reply.chunk(ChunkDelta(content=event.text))
            elif isinstance(event, Finished):
                yield reply.chunk(ChunkDelta(), finish_reason=event.finish_reason)
                if include_usage:
                    yield reply.chunk(usage=reply.usage(event.completion_tokens))
                break
            else:  # Failed mid-stream: the status is sent already, so the error goes in the stream, as OpenAI does
                yield APIError(event.status, event.message, code=event.code).response().body.decode()
                break
            event = await events.get()
        yield "[DONE]"
    finally:
        job.cancelled.set()  # a no-op once the reply is whole; stops the row if the client left mid-reply
