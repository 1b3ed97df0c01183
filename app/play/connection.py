"""One play websocket's connection: a receive loop that only updates the session's input and
queues its commands, and one sender task; frames pass through a one-frame mailbox (the newest frame
wins). The hub's tick loop (app/play/server.py) makes the frames."""

from __future__ import annotations

import asyncio
import collections
import json
import logging
from typing import TYPE_CHECKING

from fastapi import WebSocket

from app.play.protocol import Input, Pause, ProtocolError, RateLimit, Record, Reset, Stats, parse
from app.play.session import FrameOut, PlaySession, Tick

if TYPE_CHECKING:
    from app.play.server import Hub

log = logging.getLogger("worldstream.server")
CLOSE_POLICY = 1008  # wrong or missing token; an input flood (app/play/protocol.py RateLimit)
MAX_PENDING = 256  # control messages queued for a client that does not read


class Connection:
    """One websocket: a receive loop (input, commands), a producer making frames at the session's
    FPS, and one sender. Frames pass through a one-frame mailbox: a client that reads slower than
    frames are made gets the newest frame and misses the others (memory stays bounded, and its
    pace slows neither its own world nor anyone else's). Control messages queue, at most
    ``MAX_PENDING`` (beyond that the oldest are dropped and counted)."""

    def __init__(self, ws: WebSocket, hub: Hub, session: PlaySession) -> None:
        self.ws, self.hub, self.session = ws, hub, session
        self.paused = False
        self.ready = asyncio.Event()  # something to send
        self.limit = RateLimit(hub.args.rate_limit, 2 * hub.args.rate_limit)
        self.told = False  # the pause state last acknowledged to the client
        self.failed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.outbox: collections.deque[str] = collections.deque()
        self.latest: FrameOut | None = None
        self.frames_dropped = 0
        self.messages_dropped = 0

    def post(self, tick: Tick) -> None:
        for m in tick.messages:
            if len(self.outbox) >= MAX_PENDING:
                self.outbox.popleft()
                self.messages_dropped += 1
            self.outbox.append(m)
        if tick.frame is not None:
            old, self.latest = self.latest, tick.frame
            if old is not None:  # never sent: the client is behind
                self.frames_dropped += 1
                self.hub.frames_dropped += 1
                if old.meta["seq"] is not None and tick.frame.meta["seq"] is None:  # keep the input's echo
                    tick.frame.meta.update(seq=old.meta["seq"], ts=old.meta["ts"])
        self.ready.set()

    def error(self, message: str) -> None:
        self.post(Tick([json.dumps({"type": "error", "message": message})]))

    async def sender(self) -> None:
        """The only task that writes to the socket (a frame's meta and JPEG stay adjacent)."""
        while True:
            await self.ready.wait()
            self.ready.clear()
            while self.outbox:
                await self.ws.send_text(self.outbox.popleft())
            frame, self.latest = self.latest, None
            if frame is not None:
                await self.ws.send_text(json.dumps(frame.meta))
                await self.ws.send_bytes(frame.jpeg)

    async def frames(self) -> None:
        """The session's first frame, then the hub's tick loop makes the others; returns (with
        the error) only if the engine failed for this session."""
        self.post(await self.hub.run(self.session.start, self.hub.args.seed))
        self.hub.attach(self)
        await self.failed

    def acknowledge_pause(self) -> None:
        """Called by the tick loop before a tick: after "paused: true" no stepped frame comes."""
        if self.paused != self.told:
            self.told = self.paused
            self.post(Tick([json.dumps({"type": "paused", "paused": self.told})]))

    def deliver(self, result: Tick | BaseException) -> None:
        if isinstance(result, BaseException):
            self.hub.detach(self)
            if not self.failed.done():
                self.failed.set_exception(result)
        else:
            self.post(result)

    async def receive(self) -> None:
        while True:
            msg = await self.ws.receive()
            if msg["type"] == "websocket.disconnect":
                return
            if not self.limit.allow():
                if self.limit.abusive:
                    log.warning("session %s: closed for an input flood (%d messages dropped)", self.session.id,
                                self.limit.dropped)
                    await self.ws.close(CLOSE_POLICY, "input flood")
                    return
                if self.limit.should_warn():
                    self.error(f"too many messages: limit {self.limit.rate:.0f}/s; {self.limit.dropped} dropped so far")
                continue
            try:
                m = parse(msg.get("text") if msg.get("text") is not None else msg.get("bytes"))
            except ProtocolError as e:
                self.error(str(e))
                continue
            if isinstance(m, Input):
                if self.session.set_input(m):
                    self.hub.input_changed.set()
            elif isinstance(m, Reset | Record):
                if (refusal := self.session.command(m)) is not None:  # applied by the next tick (paused or not)
                    self.post(Tick([refusal]))
            elif isinstance(m, Pause):
                self.paused = m.paused  # the tick loop acknowledges it once the tick in flight is done
            elif isinstance(m, Stats):
                h = self.hub.health()
                stats = self.session.stats(sessions=h["sessions"], max_sessions=h["max_sessions"],
                                           server_cpu_cores=h["server_cpu_cores"], queue_depth=h["queue_depth"],
                                           paused=self.paused, dropped_messages=self.limit.dropped,
                                           frames_dropped=self.frames_dropped,
                                           replies_dropped=self.messages_dropped, compile=h["compile"])
                self.post(Tick([json.dumps(stats)]))
