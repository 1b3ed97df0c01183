"""The play socket below the message layer: uvicorn's sans-I/O websocket protocol (the ``websockets``
library's parser), with the limits a hostile peer needs and the library does not set.

Why a subclass and not another stack: of uvicorn's three implementations only the sans-I/O one makes
``send`` wait while the socket's buffer is full (the newest-frame mailbox of app/play/server.py relies
on that), and none of them bounds what a peer can make the server do below a message (docs/reliability.md,
"Below the message layer"). What this class adds, each measured against an attack in `worldstream soak`:

- **Bounded parsing.** Bytes are parsed in slices of ``SLICE``; parsing stops (and the socket stops
  being read) while a complete message waits for the app, while the outgoing buffer is over its high-water
  mark, or once the connection is condemned. A peer can make the server hold at most one socket read
  (<= 256 KiB) beyond that, whatever it sends.
- **A budget for the frames no message limit sees**: continuation frames, unfinished data frames, pings
  and pongs (``Limits.frame_rate``/``frame_burst``), and, once the server has sent its close frame,
  every frame. Over budget: close 1008 and the connection is dropped. Fragments of an endless message
  and ping floods end here.
- **Backpressure on control replies.** A ping is answered with a pong only by parsing it, and nothing
  is parsed while the peer does not read what it was sent: a peer that pings and never reads costs a
  bounded buffer, not 16 MB/s.
- **Closes that end.** ``asyncio``'s ``transport.close()`` waits for the buffer to drain, which a peer
  that does not read never lets happen: every close here is followed by ``abort()`` after
  ``Limits.close_grace`` seconds. The keepalive (``ws_ping_interval`` + ``ws_ping_timeout``, set from
  ``--keepalive``) therefore frees a silent client's slot on time.
- **One line, no traceback,** for a text message that is not UTF-8 (close 1007).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Request

from app.play.refusals import Refusals

log = Refusals(logging.getLogger("worldstream.guard"))
SLICE = 4096  # bytes parsed between checks: at most ~680 minimal frames


@dataclass(frozen=True)
class Limits:
    """What one websocket connection may make the server do below the message layer."""

    frame_rate: float = 20.0  # control / continuation frames per second (a browser sends ~1 pong per ping)
    frame_burst: float = 64.0
    close_grace: float = 2.0  # after a close starts, seconds until the TCP connection is dropped regardless

    def __post_init__(self) -> None:
        if self.frame_rate <= 0 or self.frame_burst < 1 or self.close_grace <= 0:
            raise ValueError("frame_rate and close_grace must be positive and frame_burst >= 1")


class _Transport:
    """The real transport, as uvicorn's protocol sees it: ``close()`` also schedules ``abort()``
    (a peer that does not read would otherwise keep the connection forever), and pausing or resuming
    reading goes through the guard, which alone decides whether the socket is read."""

    def __init__(self, real: asyncio.Transport, guard: GuardedProtocol) -> None:
        self._real, self._guard = real, guard

    def close(self) -> None:
        self._guard.condemn()
        self._real.close()

    def pause_reading(self) -> None:
        self._guard.sync_reading()

    def resume_reading(self) -> None:
        self._guard.feed()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


class GuardedProtocol(WebSocketsSansIOProtocol):
    """uvicorn's sans-I/O websocket protocol with ``Limits`` (pass the class as ``uvicorn.Config(ws=...)``;
    ``limits`` is a class attribute so that uvicorn can build it with its usual arguments)."""

    limits = Limits()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.close_timeout = self.limits.close_grace  # wait this long for the peer's close reply
        self._inbox = bytearray()  # received, not yet parsed
        self._real: asyncio.Transport | None = None
        self._dropping = False  # failed: nothing more is read; the connection ends after the grace period
        self._abort: asyncio.TimerHandle | None = None
        self._tokens = self.limits.frame_burst
        self._last = time.monotonic()

    # ------------------------------------------------------------------ transport events
    def connection_made(self, transport: Any) -> None:
        self._real = transport
        super().connection_made(_Transport(transport, self))

    def connection_lost(self, exc: Exception | None) -> None:
        if self._abort is not None:
            self._abort.cancel()
        self._inbox.clear()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._inbox += data
        self.feed()

    def pause_writing(self) -> None:
        super().pause_writing()  # clears ``writable``
        self.sync_reading()

    def resume_writing(self) -> None:
        super().resume_writing()
        self.feed()

    # ------------------------------------------------------------------ reading
    def _holding(self) -> bool:
        """Parse nothing now: a message waits for the app, or the peer is not reading what it was sent."""
        return self.read_paused or not self.writable.is_set() or self.disconnected or self._dropping

    def feed(self) -> None:
        """Parse what was received, a slice at a time, while nothing holds; then read the socket
        only if everything received was parsed."""
        while self._inbox and not self._holding():
            chunk = bytes(self._inbox[:SLICE])
            del self._inbox[:SLICE]
            self.conn.receive_data(chunk)
            if self.conn.parser_exc is not None:
                self._inbox.clear()
                self.handle_parser_exception()
                return
            if self.conn.handshake_exc is not None and not self.handshake_initiated:
                self._inbox.clear()
                self.handle_handshake_exception()
                return
            self.handle_events()
        self.sync_reading()

    def sync_reading(self) -> None:
        want = not self._inbox and not self._holding()
        if self._real is None or self._real.is_closing() or want == self._real.is_reading():
            return
        self._real.resume_reading() if want else self._real.pause_reading()

    # ------------------------------------------------------------------ frames
    def handle_events(self) -> None:
        for event in self.conn.events_received():
            if isinstance(event, Request):
                self.handle_connect(event)
            elif isinstance(event, Frame):
                if self._costly(event) and not self._allow():
                    self._refuse()
                    return
                if event.opcode == Opcode.CONT:
                    self.handle_cont(event)
                elif event.opcode == Opcode.TEXT:
                    self.handle_text(event)
                elif event.opcode == Opcode.BINARY:
                    self.handle_bytes(event)
                elif event.opcode == Opcode.PING:
                    self.handle_ping()
                elif event.opcode == Opcode.PONG:
                    self.handle_pong(event)
                elif event.opcode == Opcode.CLOSE:
                    self.handle_close(event)
            if self.disconnected or self._dropping or (self._real is not None and self._real.is_closing()):
                return

    def _costly(self, frame: Frame) -> bool:
        """A frame no message-level limit sees (every frame, once the server is closing)."""
        if self.close_sent:
            return frame.opcode != Opcode.CLOSE
        return frame.opcode in (Opcode.CONT, Opcode.PING, Opcode.PONG) or not frame.fin

    def _allow(self) -> bool:
        now = time.monotonic()
        self._tokens = min(self.limits.frame_burst, self._tokens + (now - self._last) * self.limits.frame_rate)
        self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    def _refuse(self) -> None:
        log.log("frames", "%s: closed: more control or continuation frames than %g a second (bursts of %g)",
                _peer(self.client), self.limits.frame_rate, self.limits.frame_burst)
        self._fail(1008, "too many control or continuation frames")

    def _fail(self, code: int, reason: str) -> None:
        """Send a close frame with ``code`` (unless one was sent), then the TCP FIN, and read nothing
        more; the connection is aborted after the grace period (the app hears a disconnect now).
        Not ``close()``: closing a socket with unread input sends RST, and the peer would lose the
        close frame and its code."""
        if not self.close_sent:
            self.queue.put_nowait({"type": "websocket.disconnect", "code": code, "reason": reason})
            self.conn.fail(code, reason)
            self.close_sent = True
        self._dropping = True
        self._inbox.clear()
        if self._real is not None and not self._real.is_closing():
            self._real.write(b"".join(self.conn.data_to_send()))
            if self._real.can_write_eof():
                self._real.write_eof()
        self.sync_reading()
        self.condemn()

    def send_receive_event_to_app(self) -> None:
        """As uvicorn's, but a text message that is not UTF-8 is one log line and close 1007."""
        data = self.frames[0] if len(self.frames) == 1 else b"".join(self.frames)
        self.frames = []
        if self.close_sent:
            return
        if self.curr_msg_data_type == "text":
            try:
                text = data.decode()
            except UnicodeDecodeError:
                log.log("utf8", "%s: closed: a text message that is not UTF-8", _peer(self.client))
                self._fail(1007, "invalid UTF-8")
                return
            self.queue.put_nowait({"type": "websocket.receive", "text": text})
        else:
            self.queue.put_nowait({"type": "websocket.receive", "bytes": data})
        self.read_paused = True  # until the app has taken it (uvicorn's receive() resumes)

    # ------------------------------------------------------------------ closing
    def condemn(self) -> None:
        """The connection is closing: drop it after the grace period whatever the peer does."""
        if self._abort is None and self._real is not None:
            self._abort = self.loop.call_later(self.limits.close_grace, self._real.abort)


def _peer(client: tuple[str, int] | None) -> str:
    return f"{client[0]}:{client[1]}" if client else "websocket"


def guarded(limits: Limits) -> type[GuardedProtocol]:
    """The protocol class with these limits (uvicorn builds one per connection)."""
    return type("GuardedProtocol", (GuardedProtocol,), {"limits": limits})
