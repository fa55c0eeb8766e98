"""Dynamic batching: the requests waiting at the same moment share one ``generate`` call.

One engine thread owns the model. Request handlers ``submit`` a ``Job`` to a bounded waiting
list (``QueueFull`` when it is full) and receive its text as ``Delta`` events, then one
``Finished`` or ``Failed``, through the job's ``deliver`` callback (called from the engine
thread). The engine takes the oldest waiting job, waits up to ``batch_wait_s`` for more, and
runs every waiting job with the same sampling settings as the oldest, up to
``max_batch_size``, as one left-padded ``vlm.chat.generate`` call:

- greedy jobs all batch together (greedy rows of a left-padded batch answer as they do alone);
- sampled jobs batch with jobs of the same ``temperature`` and ``top_p``; a sampled job with a
  ``seed`` runs alone, after ``torch.manual_seed(seed)``, so it replays ``vlm chat --seed``;
- rows differ freely in ``max_tokens`` and ``stop``: ``RowStreamer`` ends each row on its own,
  and ``RowStopper`` tells ``generate`` a row is done (its own length, a stop string, its
  client gone, its time limit passed), so a finished row no longer holds the batch.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from PIL import Image
from torch import nn
from transformers import StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from vlm.chat import generate
from vlm.processing import VLMProcessor

log = logging.getLogger("vlm.serve")


@dataclass
class Delta:
    text: str


@dataclass
class Finished:
    finish_reason: str
    """``stop`` (end of turn or a stop string) or ``length`` (max_tokens or the context)."""
    completion_tokens: int


@dataclass
class Failed:
    status: int
    message: str
    code: str


Event = Delta | Finished | Failed


@dataclass
class Job:
    """One request's generation, as the engine runs it."""

    prompt: str
    images: list[Image.Image]
    prompt_tokens: int
    max_tokens: int
    deliver: Callable[[Event], None]
    """Called from the engine thread with each event; must not block."""
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    deadline: float = float("inf")
    """``time.monotonic()`` after which the job fails with a timeout."""
    cancelled: threading.Event = field(default_factory=threading.Event)
    """Set by the request's side when its client is gone: the row stops at the next token."""

    def batch_key(self) -> tuple:
        if self.temperature == 0:
            return ("greedy",)
        if self.seed is not None:
            return ("seeded", id(self))
        return ("sampled", self.temperature, self.top_p)


class QueueFull(Exception):
    """The waiting list is full."""


class EngineClosed(Exception):
    """The engine is shutting down."""


@dataclass
class EngineStats:
    generate_calls: int = 0
    rows: int = 0
    """Jobs that went into a generate call."""
    largest_batch: int = 0
    completed: int = 0
    cancelled: int = 0
    timed_out: int = 0
    failed: int = 0
    refused: int = 0
    """Jobs refused because the waiting list was full."""
    decode_steps: int = 0
    """Tokens generated per row, summed over generate calls (a cancelled batch stops adding to it)."""


def _timeout_failure(job: Job, limit_s: float | None) -> Failed:
    limit = f" of {limit_s:g} s" if limit_s else ""
    return Failed(504, f"the request ran past the server's time limit{limit} (--request-timeout) before its reply was "
                  "done; ask for fewer max_tokens, or retry when the server is less busy", "timeout")


# --- one batch ----------------------------------------------------------------------------------


class _Row:
    """A job's state during its generate call: its tokens, the text sent so far, whether it is done."""

    def __init__(self, job: Job, tokenizer, eos_ids: set[int]):
        self.job, self.tokenizer, self.eos_ids = job, tokenizer, eos_ids
        self.ids: list[int] = []
        self.count = 0
        self.sent = 0
        self.done = False
        self.finished = False
        """The reply was delivered whole (not cancelled, timed out or failed)."""
        self.longest_stop = max((len(s) for s in job.stop), default=0)

    def accept(self, token: int) -> None:
        self.count += 1
        if token in self.eos_ids:
            self.finish("stop")
            return
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if self.job.stop:
            cut = min((i for i in (text.find(s) for s in self.job.stop) if i >= 0), default=-1)
            if cut >= 0:
                self.send(text[:cut])
                self.finish("stop")
                return
        if self.count >= self.job.max_tokens:
            self.send(text)
            self.finish("length")
            return
        if text.endswith("\ufffd"):  # a character split across tokens: wait for the rest
            return
        self.send(text[: len(text) - self._held_back(text)])

    def _held_back(self, text: str) -> int:
        """Characters at the end of ``text`` that may be the start of a stop string, kept until it is known."""
        for size in range(min(self.longest_stop - 1, len(text)), 0, -1):
            if any(s.startswith(text[-size:]) for s in self.job.stop):
                return size
        return 0

    def send(self, text: str) -> None:
        if len(text) > self.sent:
            self.job.deliver(Delta(text[self.sent:]))
            self.sent = len(text)

    def finish(self, reason: str) -> None:
        self.done = self.finished = True
        self.job.deliver(Finished(reason, self.count))

    def flush(self) -> None:
        """Generation ended without this row ending itself: the model's length limit (context) was reached."""
        if not self.done:
            self.send(self.tokenizer.decode(self.ids, skip_special_tokens=True))
            self.finish("length")


class RowStreamer(BaseStreamer):
    """Hands each row of a batched ``generate`` its new token; rows already done ignore theirs (padding)."""

    def __init__(self, rows: Sequence[_Row]):
        self.rows = rows
        self.steps = 0
        self.prompt_width: int | None = None
        """The width of the ids ``generate`` started from (its first ``put``)."""

    def put(self, value: torch.Tensor) -> None:
        if self.prompt_width is None and value.dim() == 2:
            self.prompt_width = value.shape[1]
            return
        self.steps += 1
        for row, token in zip(self.rows, value.reshape(-1).tolist()):
            if not row.done:
                row.accept(token)

    def end(self) -> None:
        for row in self.rows:
            row.flush()


class RowStopper(StoppingCriteria):
    """Per-row stop flags for ``generate``: rows done, cancelled, past their deadline or their own max_tokens."""

    def __init__(self, rows: Sequence[_Row], streamer: RowStreamer, on_timeout: Callable[[_Row], None],
                 on_cancel: Callable[[_Row], None]):
        self.rows, self.streamer, self.on_timeout, self.on_cancel = rows, streamer, on_timeout, on_cancel

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        now = time.monotonic()
        generated = input_ids.shape[1] - (self.streamer.prompt_width or input_ids.shape[1])
        stop = []
        for row in self.rows:
            if not row.done and row.job.cancelled.is_set():
                row.done = True
                self.on_cancel(row)
            elif not row.done and now > row.job.deadline:
                row.done = True
                self.on_timeout(row)
            # generated counts the token the streamer is about to receive: a row at its own
            # max_tokens stops here instead of one step later
            stop.append(row.done or (self.streamer.prompt_width is not None and generated >= row.job.max_tokens))
        return torch.tensor(stop, dtype=torch.bool, device=input_ids.device)


# --- the engine ---------------------------------------------------------------------------------


class BatchingEngine:
    """Runs submitted jobs on one model, batching those that wait together. Start it with ``start()``."""

    def __init__(self, model: nn.Module, processor: VLMProcessor, max_batch_size: int = 8, max_waiting: int = 64,
                 batch_wait_s: float = 0.005, request_timeout_s: float | None = None):
        if max_batch_size < 1 or max_waiting < 1:
            raise ValueError(f"max_batch_size and max_waiting must be >= 1, got {max_batch_size}, {max_waiting}")
        self.model, self.processor = model, processor
        self.max_batch_size, self.max_waiting, self.batch_wait_s = max_batch_size, max_waiting, batch_wait_s
        self.request_timeout_s = request_timeout_s
        eos = model.generation_config.eos_token_id
        eos = processor.tokenizer.eos_token_id if eos is None else eos
        self.eos_ids = set(eos if isinstance(eos, (list, tuple)) else [eos]) - {None}
        self.stats = EngineStats()
        self.running = 0
        """Jobs in the generate call now running."""
        self._waiting: deque[Job] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="vlm-serve-engine", daemon=True)
        self._thread.start()

    def close(self, timeout: float | None = 30.0) -> None:
        """Stop taking jobs, cancel the waiting ones and the running batch, and join the thread."""
        with self._cond:
            self._closed = True
            waiting, self._waiting = list(self._waiting), deque()
            self._cond.notify_all()
        for job in waiting:
            job.deliver(Failed(503, "the server is shutting down; retry on another server or later", "shutting_down"))
            job.cancelled.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def submit(self, job: Job) -> None:
        """Queue ``job``; ``QueueFull`` if ``max_waiting`` jobs wait already, ``EngineClosed`` when shutting down."""
        with self._cond:
            if self._closed:
                raise EngineClosed()
            if len(self._waiting) >= self.max_waiting:
                self.stats.refused += 1
                raise QueueFull()
            self._waiting.append(job)
            self._cond.notify_all()

    def _next_batch(self) -> list[Job] | None:
        with self._cond:
            while not self._waiting and not self._closed:
                self._cond.wait()
            if self._closed:
                return None
            until = time.monotonic() + self.batch_wait_s
            while len(self._waiting) < self.max_batch_size and not self._closed:
                left = until - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            if self._closed:
                return None
            key = self._waiting[0].batch_key()
            batch = [job for job in self._waiting if job.batch_key() == key][: self.max_batch_size]
            taken = set(map(id, batch))
            self._waiting = deque(job for job in self._waiting if id(job) not in taken)
            self.running = len(batch)
            return batch

    def _loop(self) -> None:
        while (batch := self._next_batch()) is not None:
            try:
                self._run(batch)
            finally:
                self.running = 0

    def _run(self, jobs: list[Job]) -> None:
        now = time.monotonic()
        live = []
        for job in jobs:
            if job.cancelled.is_set():
                self.stats.cancelled += 1
            elif now > job.deadline:
                self.stats.timed_out += 1
                job.deliver(_timeout_failure(job, self.request_timeout_s))
            else:
                live.append(job)
        if not live:
            return
        rows = [_Row(job, self.processor.tokenizer, self.eos_ids) for job in live]
        streamer = RowStreamer(rows)
        stopper = RowStopper(rows, streamer, on_timeout=self._timed_out, on_cancel=self._cancelled)
        first = live[0]
        self.stats.generate_calls += 1
        self.stats.rows += len(live)
        self.stats.largest_batch = max(self.stats.largest_batch, len(live))
        try:
            generate(
                self.model, self.processor, [job.prompt for job in live], [job.images for job in live],
                max_new_tokens=max(job.max_tokens for job in live), temperature=first.temperature, top_p=first.top_p,
                seed=first.seed if first.temperature > 0 else None,
                streamer=streamer, stopping_criteria=StoppingCriteriaList([stopper]),
            )
        except Exception as err:  # a failure of the model must not end the engine: fail this batch's rows only
            log.exception("generate failed for a batch of %d", len(live))
            for row in rows:
                if not row.done:
                    row.done = True
                    self.stats.failed += 1
                    row.job.deliver(Failed(500, f"generation failed ({type(err).__name__}: {err}); the server log has "
                                           "the traceback, and the server goes on answering", "generation_failed"))
            return
        finally:
            self.stats.decode_steps += streamer.steps
        self.stats.completed += sum(row.finished for row in rows)

    def _timed_out(self, row: _Row) -> None:
        self.stats.timed_out += 1
        row.job.deliver(_timeout_failure(row.job, self.request_timeout_s))

    def _cancelled(self, row: _Row) -> None:
        self.stats.cancelled += 1
