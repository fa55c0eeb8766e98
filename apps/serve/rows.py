"""Per-row streaming and stopping of one batched ``generate`` call.

``generate`` hands a streamer each step's new tokens for the whole batch, and asks its stopping
criteria which rows are done. ``RowStreamer`` gives each row its token: the row decodes its text,
sends what is new (holding back a character split across tokens, and text that may be the start of
a stop string), and ends itself at the end-of-turn token, a stop string or its own ``max_tokens``.
``RowStopper`` tells ``generate`` which rows are done, cancelled (client gone) or past their
deadline, so those rows get padding from then on and the call ends when every row has.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import torch
from transformers import StoppingCriteria
from transformers.generation.streamers import BaseStreamer

from apps.serve.jobs import Delta, Finished, Job


class Row:
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

    def __init__(self, rows: Sequence[Row]):
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

    def __init__(self, rows: Sequence[Row], streamer: RowStreamer, on_timeout: Callable[[Row], None],
                 on_cancel: Callable[[Row], None]):
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
