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
- rows differ freely in ``max_tokens`` and ``stop``: each row ends on its own (``apps.serve.rows``),
  its reply complete as soon as it is; until the call ends, a finished row only pads. A new
  request waits for the running call to end (dynamic, not continuous, batching: transformers'
  ``generate`` takes no rows mid-call).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass

from torch import nn
from transformers import StoppingCriteriaList

from apps.serve.jobs import Failed, Job, timeout_failure
from apps.serve.rows import Row, RowStopper, RowStreamer
from vlm.chat import generate
from vlm.processing import VLMProcessor

log = logging.getLogger("vlm.serve")


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
        self._current: list[Job] = []
        """The jobs of the generate call now running."""
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
            stopped, self._waiting = list(self._waiting) + self._current, deque()
            self._cond.notify_all()
        for job in stopped:
            if not job.cancelled.is_set():
                job.cancelled.set()
                job.deliver(Failed(503, "the server is shutting down; retry on another server or later", "shutting_down"))
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
            self.running, self._current = len(batch), batch
            return batch

    def _loop(self) -> None:
        while (batch := self._next_batch()) is not None:
            try:
                self._run(batch)
            finally:
                with self._cond:
                    self.running, self._current = 0, []

    def _run(self, jobs: list[Job]) -> None:
        now = time.monotonic()
        live = []
        for job in jobs:
            if job.cancelled.is_set():
                self.stats.cancelled += 1
            elif now > job.deadline:
                self.stats.timed_out += 1
                job.deliver(timeout_failure(job, self.request_timeout_s))
            else:
                live.append(job)
        if not live:
            return
        rows = [Row(job, self.processor.tokenizer, self.eos_ids) for job in live]
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

    def _timed_out(self, row: Row) -> None:
        self.stats.timed_out += 1
        row.job.deliver(timeout_failure(row.job, self.request_timeout_s))

    def _cancelled(self, row: Row) -> None:
        self.stats.cancelled += 1
