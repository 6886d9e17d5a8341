"""llama-server's --timeout on uvicorn's HTTP/1.1 connections: a client that sends nothing while the server waits for
its request, or reads nothing of an answer the server is writing, for that many seconds is disconnected. uvicorn
alone keeps a connection that never sends a whole request open for good: a few hundred of them (one per socket
opened and left) use up the process's file descriptors, and the server takes no more connections."""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.h11_impl import H11Protocol


class TimedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with read and write timeouts of `timeout` seconds (timed_protocol sets it)."""

    timeout: float = 600.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._write_timer: asyncio.TimerHandle | None = None
        self._read_timer: asyncio.TimerHandle | None = None
        self._await_client()

    def data_received(self, data: bytes) -> None:
        self._await_client()
        super().data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        for timer in (self._read_timer, self._write_timer):
            if timer is not None:
                timer.cancel()
        super().connection_lost(exc)

    def pause_writing(self) -> None:
        """The client's socket is full: it has `timeout` seconds to read on before it is dropped."""
        super().pause_writing()
        if self._write_timer is None:
            self._write_timer = self.loop.call_later(self.timeout, self.transport.abort)  # close() would wait to send

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None

    def _await_client(self) -> None:
        """(Re)starts the wait for the client's next bytes."""
        if self._read_timer is not None:
            self._read_timer.cancel()
        self._read_timer = self.loop.call_later(self.timeout, self._read_timed_out)

    def _read_timed_out(self) -> None:
        """Closes the connection where the server waits for the client: before a request, or inside its line, headers
        or body. A request whose body has come is being answered: its client has nothing to send meanwhile."""
        cycle = self.cycle
        if cycle is None or cycle.response_complete or cycle.more_body:
            self.transport.close()


def timed_protocol(seconds: float) -> type[TimedH11Protocol]:
    """The protocol class for uvicorn.Config(http=...) with timeouts of seconds."""
    return type("TimedH11Protocol", (TimedH11Protocol,), {"timeout": seconds})
