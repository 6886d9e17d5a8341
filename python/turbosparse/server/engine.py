"""The decoding loop: generations in --parallel slots, advanced together one token per step.

One thread owns the model's evaluations. A step advances every running generation by a token; the ones whose
prompt is in their slot decode together in one forward pass (Model.step). Requests beyond the slots wait in a
bounded queue; a cancelled generation (its client went away) leaves its slot at the next step."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from turbosparse.generation import Generation
from turbosparse.model import Model

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Event:
    """What a request hears from the engine: released text, the end, or a failure."""

    text: str = ""
    finished: bool = False
    error: str | None = None


@dataclass
class Job:
    generation: Generation
    emit: Callable[[Event], None]  # must be callable from the engine thread


class QueueFullError(Exception):
    """Every slot is busy and the waiting queue is full."""


@dataclass
class EngineCounters:
    """Totals since the start, for /metrics."""

    steps: int = 0  # forward passes that advanced running generations
    busy_slots: int = 0  # summed over steps
    tokens_predicted: int = 0
    step_seconds: float = 0.0  # wall time of the steps
    requests_finished: int = 0
    requests_cancelled: int = 0
    requests_rejected: int = 0


class Engine:
    def __init__(self, model: Model, *, queue_size: int) -> None:
        self.model = model
        self.slots = model.n_seq
        self.queue_size = queue_size
        self.counters = EngineCounters()
        self._waiting: deque[Job] = deque()
        self._running: list[Job] = []
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="turbosparse-engine", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join(timeout=30)

    @property
    def processing(self) -> int:
        return len(self._running)

    @property
    def deferred(self) -> int:
        return len(self._waiting)

    def submit(self, job: Job) -> None:
        """Queues job for the next free slot; QueueFullError when queue_size requests already wait."""
        with self._cond:
            waiting = deque(j for j in self._waiting if not j.generation.cancelled)  # clients that left free places
            self.counters.requests_cancelled += len(self._waiting) - len(waiting)
            self._waiting = waiting
            # the free slots take waiting jobs at the next step; beyond them, queue_size may wait
            free = max(0, self.slots - len(self._running))
            if len(self._waiting) >= self.queue_size + free:
                self.counters.requests_rejected += 1
                raise QueueFullError
            self._waiting.append(job)
            self._cond.notify()

    def _admit(self) -> list[Job]:
        """The jobs to step now; waits while there are none (returns at once when stopping)."""
        with self._cond:
            while True:
                for job in self._running:
                    gen = job.generation
                    if gen.cancelled and gen.finish_reason is None:  # its client left (counted once: dropped here)
                        self.counters.requests_cancelled += 1
                self._running = [job for job in self._running if not job.generation.done]
                while self._waiting and len(self._running) < self.slots:
                    job = self._waiting.popleft()
                    if job.generation.cancelled:  # its client left while it waited
                        self.counters.requests_cancelled += 1
                    elif job.generation.finish_reason is not None:  # nothing to generate (max_tokens = 0)
                        self.counters.requests_finished += 1
                        job.emit(Event(finished=True))
                    else:
                        self._running.append(job)
                if self._running or self._stopping:
                    return list(self._running)
                self._cond.wait()

    def _loop(self) -> None:
        while True:
            jobs = self._admit()
            if self._stopping:
                return
            before = [job.generation.n_generated for job in jobs]
            start = time.perf_counter()
            try:
                texts = self.model.step([job.generation for job in jobs])
            except Exception as exc:  # an engine failure ends these requests, not the server
                logger.exception("a decoding step failed")
                with self._cond:
                    self._running = [job for job in self._running if job not in jobs]
                for job in jobs:
                    job.generation.cancel()
                    job.emit(Event(error=f"{type(exc).__name__}: {exc}"))
                continue
            c = self.counters
            c.step_seconds += time.perf_counter() - start
            c.steps += 1
            c.busy_slots += len(jobs)
            for job, text, n in zip(jobs, texts, before, strict=True):
                gen = job.generation
                c.tokens_predicted += gen.n_generated - n
                if text:
                    job.emit(Event(text=text))
                if gen.finish_reason is not None:
                    c.requests_finished += 1
                    job.emit(Event(finished=True))
