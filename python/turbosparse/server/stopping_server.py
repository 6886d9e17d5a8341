"""uvicorn's server, telling the app when it is told to stop (SIGINT / SIGTERM)."""

from __future__ import annotations

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
        self._stopping.set()
        super().handle_exit(sig, frame)
