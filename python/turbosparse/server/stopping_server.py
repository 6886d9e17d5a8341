"""uvicorn's server, telling the app when it is told to stop (SIGINT / SIGTERM), and gone at a second signal."""

from __future__ import annotations

import os
import sys
import threading
from types import FrameType

import uvicorn


class StoppingServer(uvicorn.Server):
    """Sets stopping (the app's app.state.stopping) when told to stop: the answers then running end within uvicorn's
    grace period with an error saying so (a stream's last event, a non-streamed answer's 503), not as cancelled tasks
    (a stream that just ends, a plain-text 500)."""

    def __init__(self, config: uvicorn.Config, stopping: threading.Event) -> None:
        super().__init__(config)
        self._stopping = stopping

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._stopping.is_set():
            # a second signal: out now, as llama-server. uvicorn's own answer (cancelling the running requests, then
            # returning while the engine thread may still be inside a C call) printed pages of tracebacks, answered
            # a plain-text 500 and at times crashed the exiting interpreter.
            print("turbosparse serve: a second signal, exiting at once", file=sys.stderr, flush=True)
            os._exit(1)
        self._stopping.set()
        super().handle_exit(sig, frame)
