"""uvicorn's server, telling the app when it is told to stop (SIGINT / SIGTERM / SIGHUP), gone at a second signal."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from types import FrameType

import uvicorn


class StoppingServer(uvicorn.Server):
    """Sets stopping (the app's app.state.stopping) when told to stop: the answers then running end within uvicorn's
    grace period with an error saying so (a stream's last event, a non-streamed answer's 503), not as cancelled tasks
    (a stream that just ends, a plain-text 500)."""

    def __init__(self, config: uvicorn.Config, stopping: threading.Event) -> None:
        super().__init__(config)
        self._stopping = stopping

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """uvicorn's SIGINT / SIGTERM handling, and SIGHUP's too (a closed terminal: stopped as SIGTERM stops it), put
        back before uvicorn raises the signals it caught again (the command then ends by its signal)."""
        with super().capture_signals():
            hangup = (threading.current_thread() is threading.main_thread()
                      and signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN)  # fmt: skip
            previous = signal.signal(signal.SIGHUP, self.handle_exit) if hangup else None
            try:
                yield
            finally:
                if hangup:
                    signal.signal(signal.SIGHUP, previous)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._stopping.is_set():
            # a second signal: out now, as llama-server. uvicorn's own answer (cancelling the running requests, then
            # returning while the engine thread may still be inside a C call) printed pages of tracebacks, answered
            # a plain-text 500 and at times crashed the exiting interpreter.
            try:  # not print(): a closed terminal or pipe would raise here, and os._exit never be reached
                os.write(2, b"turbosparse serve: a second signal, exiting at once\n")
            except OSError:
                pass
            os._exit(1)
        self._stopping.set()
        super().handle_exit(sig, frame)
