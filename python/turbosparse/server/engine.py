"""The decoding loop: generations in --parallel slots, advanced together one token per step.

One thread owns the model's evaluations. A step advances every running generation by a token; the ones whose
prompt is in their slot decode together in one forward pass (Model.forward), then each samples its token. Requests
beyond the slots wait in a bounded queue; a cancelled generation (its client went away) leaves its slot at the next
step. Constrained generations sample on threads of their own (llama.cpp's grammar engine may take seconds to match a
token): the next forward pass waits for them only as long as a pass takes, then goes on without them."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass

from turbosparse.generation import Generation
from turbosparse.model import Model

logger = logging.getLogger(__name__)

# how long the next forward pass waits for a constrained generation still sampling, once: as long as the last pass
# took, within these bounds (its usual step, a grammar question and the sampling, takes ~0.5 ms; the last pass may
# have been a long prompt's)
_MIN_WAIT_S = 0.005
_MAX_WAIT_S = 0.1


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
    def __init__(self, model: Model, *, queue_size: int, slots: int | None = None) -> None:
        """slots: generations run at once (default: one per sequence of the model; fewer leave sequences free, as
        the server's embeddings take one)."""
        self.model = model
        self.slots = model.n_seq if slots is None else slots
        self.queue_size = queue_size
        self.counters = EngineCounters()
        self._waiting: deque[Job] = deque()
        self._running: list[Job] = []
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="turbosparse-engine", daemon=True)
        # constrained generations sample here, beside the next forward pass (engine thread only)
        self._sampler = ThreadPoolExecutor(max_workers=self.slots, thread_name_prefix="turbosparse-sampling")
        self._sampling: dict[int, _Sampling] = {}  # by id(job)
        self._last_pass_s = 0.0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join(timeout=30)
        if not self._thread.is_alive():  # samplings in flight use the model's tokenizer: ended before it may close
            wait([s.future for s in self._sampling.values()])  # (each is bounded by the grammar's time limits)
        self._sampler.shutdown(wait=False, cancel_futures=True)

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
        """The jobs to step now (running, not sampling); waits while there are none and no sampling has ended
        (returns at once when stopping)."""
        with self._cond:
            while True:
                for job in self._running:
                    gen = job.generation
                    if gen.cancelled and gen.finish_reason is None and id(job) not in self._sampling:
                        self.counters.requests_cancelled += 1  # its client left (counted once: dropped here)
                # a job keeps its slot while its sampling runs (that thread still moves its generation on)
                self._running = [j for j in self._running if not j.generation.done or id(j) in self._sampling]
                while self._waiting and len(self._running) < self.slots:
                    job = self._waiting.popleft()
                    if job.generation.cancelled:  # its client left while it waited
                        self.counters.requests_cancelled += 1
                    elif job.generation.finish_reason is not None:  # nothing to generate (max_tokens = 0)
                        self.counters.requests_finished += 1
                        job.emit(Event(finished=True))
                    else:
                        self._running.append(job)
                ready = [j for j in self._running if id(j) not in self._sampling]
                if ready or self._stopping or any(s.future.done() for s in self._sampling.values()):
                    return ready
                self._cond.wait()

    def _loop(self) -> None:
        while True:
            jobs = self._admit()
            if self._stopping:
                return
            if self._sampling:
                # a constrained generation still sampling joins this pass if it ends within about as long as a pass
                # takes; one that did not (its grammar is slow to match) is not waited for again: it costs the others
                # one pass's time, not its own
                self._collect(wait_s=min(max(self._last_pass_s, _MIN_WAIT_S), _MAX_WAIT_S))
                jobs = self._admit()
                if self._stopping:
                    return
                if not jobs:
                    continue
            self._step(jobs)

    def _step(self, jobs: list[Job]) -> None:
        start = time.perf_counter()
        try:
            steps = self.model.forward([job.generation for job in jobs])
        except Exception as exc:  # an engine failure ends these requests, not the server
            logger.exception("a decoding step failed")
            for job in jobs:
                self._fail(job, exc)
            return
        self._last_pass_s = time.perf_counter() - start
        c = self.counters
        c.steps += 1
        c.busy_slots += len(jobs)
        for job, step in zip(jobs, steps, strict=True):
            if step is None:
                continue
            gen = job.generation
            n = gen.n_generated
            if gen.constrained:  # llama.cpp's grammar engine may take a while: the next pass need not wait
                future = self._sampler.submit(gen.take, step)
                self._sampling[id(job)] = _Sampling(job, future, n)
                future.add_done_callback(self._wake)
                continue
            try:
                text = gen.take(step)
            except Exception as exc:
                logger.exception("sampling failed")
                self._fail(job, exc)
                continue
            self._took(job, text, n)
        c.step_seconds += time.perf_counter() - start

    def _collect(self, wait_s: float) -> None:
        """Takes the samplings that have ended, waiting up to wait_s seconds for those not waited for before."""
        deadline = time.monotonic() + wait_s
        awaited = [s for s in self._sampling.values() if not s.late]
        with self._cond:
            while not all(s.future.done() for s in awaited) and not self._stopping:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
        for sampling in awaited:
            sampling.late = not sampling.future.done()
        for key, sampling in list(self._sampling.items()):
            if not sampling.future.done():
                continue
            del self._sampling[key]
            exc = sampling.future.exception()
            if exc is not None:
                logger.error("sampling failed", exc_info=exc)
                self._fail(sampling.job, exc)
            else:
                self._took(sampling.job, sampling.future.result(), sampling.n_generated)

    def _took(self, job: Job, text: str, n_generated_before: int) -> None:
        gen = job.generation
        self.counters.tokens_predicted += gen.n_generated - n_generated_before
        if text:
            job.emit(Event(text=text))
        if gen.finish_reason is not None:
            self.counters.requests_finished += 1
            job.emit(Event(finished=True))

    def _fail(self, job: Job, exc: BaseException) -> None:
        with self._cond:
            self._running = [j for j in self._running if j is not job]
        job.generation.cancel()
        job.emit(Event(error=f"{type(exc).__name__}: {exc}"))

    def _wake(self, _: Future[str]) -> None:
        with self._cond:
            self._cond.notify()


@dataclass
class _Sampling:
    """A constrained generation's next token, being sampled on another thread."""

    job: Job
    future: Future[str]
    n_generated: int  # before it
    late: bool = False  # a pass waited for it already
