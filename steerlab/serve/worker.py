"""One thread owns the model: generation jobs queue up, identical settings share a batch.

Steering hooks are state on the model, so every forward pass runs on the worker thread, one
batch at a time: a batch holds only jobs with the same steering and decoding settings (greedy
ones; a sampled job runs alone, so its seed means the same as in a solo run), and its steering is
removed before the next batch starts. Each job's text comes back as deltas through a callback as
the tokens are generated, with stop strings cut and held back exactly as a client expects.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from itertools import count
from typing import Any

import torch
from transformers import StoppingCriteria

from steerlab.model.generation import generate_batch
from steerlab.model.handle import ModelHandle
from steerlab.steering.setting import Composition


@dataclass(frozen=True)
class Decoding:
    """How to pick tokens: greedy when ``temperature`` is 0, else sampled (seeded when given)."""

    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


Event = tuple[Any, ...]
"""A job's news: ``("delta", text)``, ``("end", finish_reason, usage)``, ``("error", message)``."""

_ids = count()


@dataclass(eq=False)
class GenerationJob:
    """A prompt to continue under a steering (``steering_key`` names it) and decoding settings.

    ``emit`` receives the job's events (see :data:`Event`) from the worker thread; it must not
    block. :meth:`cancel` (e.g. when a client goes away) stops the job at its next token.
    """

    prompt_ids: list[int]
    decoding: Decoding
    emit: Callable[[Event], None]
    steering: Composition | None = None
    steering_key: Any = ()
    cancelled: bool = False
    number: int = field(default_factory=lambda: next(_ids))

    @property
    def batch_key(self) -> tuple:
        """Jobs with equal keys may share a batch: same steering, greedy, same length limit."""
        if not self.decoding.greedy:
            return ("sampled", self.number)
        return ("greedy", self.steering_key, self.decoding.max_new_tokens)

    def cancel(self) -> None:
        self.cancelled = True


class RowStream:
    """Turns a job's tokens into text deltas; ends it at EOS, a stop string or its token limit."""

    def __init__(self, job: GenerationJob, model: ModelHandle) -> None:
        self.job = job
        self.tokenizer = model.tokenizer
        self.eos = model.tokenizer.eos_token_id
        self.tokens: list[int] = []
        self.generated = 0
        self.sent = 0
        self.done = False

    def _send(self, text: str) -> None:
        if len(text) > self.sent:
            self.job.emit(("delta", text[self.sent :]))
            self.sent = len(text)

    def _end(self, reason: str, text: str) -> None:
        self._send(text)
        self.done = True
        usage = {"prompt_tokens": len(self.job.prompt_ids), "completion_tokens": self.generated}
        self.job.emit(("end", reason, {**usage, "total_tokens": sum(usage.values())}))

    def feed(self, token: int) -> bool:
        """Take the next generated token; whether this row is finished."""
        if self.done or self.job.cancelled:
            self.done = True
            return True
        self.generated += 1
        if token == self.eos:
            self._end("stop", self.text())
            return True
        self.tokens.append(token)
        text = self.text()
        stops = self.job.decoding.stop
        cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=None)
        if cut is not None:
            self._end("stop", text[:cut])
        elif self.generated >= self.job.decoding.max_new_tokens:
            self._end("length", text)
        else:
            self._send(text[: sendable_length(text, stops)])
        return self.done

    def close(self) -> None:
        """After generation: end a row that neither stopped nor hit its limit (never expected)."""
        if not self.done and not self.job.cancelled:
            self._end("length", self.text())

    def text(self) -> str:
        return self.tokenizer.decode(self.tokens, skip_special_tokens=True)


def sendable_length(text: str, stops: Sequence[str]) -> int:
    """How much of ``text`` is safe to send: not an unfinished UTF-8 character at the end
    (decoded as U+FFFD) and not an ending that a stop string could still complete."""
    end = len(text.rstrip("\ufffd"))
    safe = end
    for stop in stops:
        for size in range(min(len(stop) - 1, end), 0, -1):
            if text.endswith(stop[:size], 0, end):
                safe = min(safe, end - size)
                break
    return safe


class _Feed(StoppingCriteria):
    """Hands each step's new tokens to the rows; a finished row stops there, the rest go on."""

    def __init__(self, rows: Sequence[RowStream]) -> None:
        self.rows = rows

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        tokens = input_ids[:, -1].tolist()
        done = [row.feed(token) for row, token in zip(self.rows, tokens)]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


def take_batch(pending: list[GenerationJob], max_batch_size: int) -> list[GenerationJob]:
    """Remove and return the oldest job and the next queued ones that share its batch key."""
    key = pending[0].batch_key
    batch = [job for job in pending if job.batch_key == key][:max_batch_size]
    pending[:] = [job for job in pending if job not in batch]
    return batch


class QueueFull(RuntimeError):
    """The worker already holds its maximum of waiting jobs."""


class WorkerThread:
    """The one thread a generation worker runs on: ``start`` it, ``stop`` it (the jobs still
    waiting or running then hear that the server is shutting down). Subclasses give ``_run``
    (watching ``_stopping`` under ``_ready``) and ``_take_unfinished``."""

    thread_name = "steerlab-generation"

    def __init__(self) -> None:
        self._ready = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None

    def start(self) -> WorkerThread:
        """Start the thread (jobs submitted before wait for it)."""
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=self.thread_name, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Let the thread finish its step, end it, and fail every job left."""
        with self._ready:
            self._stopping = True
            self._ready.notify()
        if self._thread is not None:
            self._thread.join()
        for job in self._take_unfinished():
            job.emit(("error", "the server is shutting down"))

    def _run(self) -> None:
        raise NotImplementedError

    def _take_unfinished(self) -> list[GenerationJob]:
        """The jobs not yet answered, forgotten."""
        raise NotImplementedError


class GenerationWorker(WorkerThread):
    """The thread that runs every generation on ``model``, one batch at a time.

    ``submit`` queues a job (raising :class:`QueueFull` beyond ``max_pending`` waiting jobs);
    the worker takes the oldest job plus up to ``max_batch_size - 1`` queued jobs with the same
    batch key (waiting up to ``gather_s`` for them to arrive), applies the job's steering for
    that batch only, and streams every row's text.
    ``batches`` and ``jobs`` count what it has run (their ratio is the mean batch size).
    """

    def __init__(
        self,
        model: ModelHandle,
        max_batch_size: int = 8,
        max_pending: int = 256,
        gather_s: float = 0.0,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, got {max_batch_size}")
        super().__init__()
        self.model = model
        self.max_batch_size = max_batch_size
        self.max_pending = max_pending
        self.gather_s = gather_s
        self.batches = 0
        self.jobs = 0
        self._pending: list[GenerationJob] = []

    def _take_unfinished(self) -> list[GenerationJob]:
        taken, self._pending = self._pending, []
        return taken

    def submit(self, job: GenerationJob) -> None:
        """Queue a job; its events arrive through its ``emit`` callback."""
        with self._ready:
            self._drop_cancelled()
            if len(self._pending) >= self.max_pending:
                raise QueueFull(f"{len(self._pending)} requests are already waiting; retry later")
            self._pending.append(job)
            self._ready.notify()

    def _drop_cancelled(self) -> None:
        """Forget queued jobs whose clients have gone: they would only delay the others."""
        self._pending[:] = [job for job in self._pending if not job.cancelled]

    def _run(self) -> None:
        while True:
            with self._ready:
                while not self._pending and not self._stopping:
                    self._ready.wait()
                self._gather()
                if self._stopping:
                    return
                self._drop_cancelled()
                if not self._pending:
                    continue
                batch = take_batch(self._pending, self.max_batch_size)
            self.run_batch(batch)

    def _gather(self) -> None:
        """Wait up to ``gather_s`` for jobs that could join the oldest one's batch (clients
        that finished together send their next requests a few milliseconds apart)."""
        deadline = time.monotonic() + self.gather_s
        key = self._pending[0].batch_key if self._pending else None
        while not self._stopping and (left := deadline - time.monotonic()) > 0:
            if sum(job.batch_key == key for job in self._pending) >= self.max_batch_size:
                return
            self._ready.wait(left)

    def run_batch(self, batch: Sequence[GenerationJob]) -> None:
        """Generate one batch of jobs sharing a batch key, under the first job's steering."""
        self.batches += 1
        self.jobs += len(batch)
        rows = [RowStream(job, self.model) for job in batch]
        first = batch[0]
        try:
            with first.steering.apply(self.model) if first.steering else nullcontext():
                decoding = first.decoding
                generate_batch(
                    self.model,
                    [job.prompt_ids for job in batch],
                    decoding.max_new_tokens,
                    do_sample=not decoding.greedy,
                    temperature=decoding.temperature,
                    top_p=decoding.top_p if decoding.top_p < 1 else None,
                    seed=decoding.seed,
                    stopping_criteria=[_Feed(rows)],
                )
        except Exception as err:  # noqa: BLE001 - every client must hear of it; the worker goes on
            for row in rows:
                if not row.done:
                    row.done = True
                    row.job.emit(("error", f"generation failed: {type(err).__name__}: {err}"))
            return
        for row in rows:
            row.close()
