"""llama-server's --timeout on uvicorn's HTTP/1.1 connections: a client that sends nothing while the server waits for
its request, or takes nothing of an answer the server is writing, for that many seconds is disconnected. uvicorn
alone keeps a connection that never sends a whole request open for good: a few hundred of them (one per socket
opened and left) use up the process's file descriptors, and the server takes no more connections."""

from __future__ import annotations

import asyncio
import struct

from uvicorn.protocols.http.h11_impl import H11Protocol

try:  # POSIX only
    import fcntl
    import termios
except ImportError:
    fcntl = termios = None  # type: ignore[assignment]

LOOKS_PER_TIMEOUT = 4  # a connection is looked at every timeout / 4: it ends within 1.25 timeouts of its last progress
# the ioctl giving the bytes a socket's send queue holds (Linux; elsewhere only asyncio's own buffer is seen, and a
# client taking an answer slower than the system's socket buffers empty in a timeout is cut)
SEND_QUEUE = getattr(termios, "TIOCOUTQ", None)


class TimedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with read and write timeouts of `timeout` seconds (timed_protocol sets it): a look
    every timeout / 4 closes the connection where

    - the server waits for the client (before a request, inside its line, headers or body, between requests) and
      has heard nothing from it for `timeout` seconds (timed from the last bytes it sent, or the end of the answer
      before, whichever is later); a request whose body has come is being answered, and is never timed;
    - an answer has bytes waiting for the client (in asyncio's buffer and the socket's send queue) that `timeout`
      seconds have not made fewer (a client reading slowly keeps its connection)."""

    timeout: float = 600.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        now = self.loop.time()
        self._heard_at = now  # the client's last bytes, or the end of the answer before: a wait is timed from it
        self._queued = 0  # the answer's bytes the client had not taken at the last look
        self._sent_at = now  # when those last became fewer (or none)
        self._look_timer = self.loop.call_later(self.timeout / LOOKS_PER_TIMEOUT, self._look)

    def data_received(self, data: bytes) -> None:
        self._heard_at = self.loop.time()
        super().data_received(data)

    def on_response_complete(self) -> None:
        self._heard_at = self.loop.time()
        super().on_response_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._look_timer.cancel()
        super().connection_lost(exc)

    def _look(self) -> None:
        unsent, closing = self.transport.get_write_buffer_size(), self.transport.is_closing()
        if closing and not unsent:
            return  # gone once the transport has closed
        now = self.loop.time()
        queued = unsent + self._socket_queue()
        if queued == 0 or queued < self._queued:
            self._sent_at = now
        self._queued = queued
        cycle = self.cycle
        # (a closing transport, "Connection: close" after its answer, waits only to send what is buffered)
        waiting = not closing and (cycle is None or cycle.response_complete or cycle.more_body)
        if now - self._sent_at >= self.timeout or (waiting and now - self._heard_at >= self.timeout):
            # close() would wait to send what is buffered, which a client that reads nothing never takes
            (self.transport.abort if unsent else self.transport.close)()
            return
        self._look_timer = self.loop.call_later(self.timeout / LOOKS_PER_TIMEOUT, self._look)

    def _socket_queue(self) -> int:
        """The bytes the socket's send queue holds (sent, not acknowledged yet, or not sent): those a client reading
        slowly takes before asyncio's buffer moves again; 0 where the system does not say."""
        sock = self.transport.get_extra_info("socket")
        if fcntl is None or SEND_QUEUE is None or sock is None:
            return 0
        try:
            return struct.unpack("i", fcntl.ioctl(sock.fileno(), SEND_QUEUE, b"\0\0\0\0"))[0]
        except OSError:  # closed meanwhile, or not a socket that says
            return 0


def timed_protocol(seconds: float) -> type[TimedH11Protocol]:
    """The protocol class for uvicorn.Config(http=...) with timeouts of seconds."""
    return type("TimedH11Protocol", (TimedH11Protocol,), {"timeout": seconds})
