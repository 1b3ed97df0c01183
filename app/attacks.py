"""The hostile clients of ``worldstream soak`` (app/soak.py), one coroutine per attack, each
against a play server's websocket URL on loopback and each returning what it saw:

    fuzz               hostile messages under the rate limit (each must get an error reply)
    churn              connections dropped cleanly, by FIN, by RST, mid-recording
    slow               a client that reads nothing (its frames must be dropped, not queued)
    flood              input at 5x the limit, then as fast as possible until closed
    recording_faults   record on/off in one tick, while paused; a reset mid-recording
    key_toggle         a key toggled ~90 times a second (must not speed up anyone's world)
    command_burst      150 record on/off at once, 64 resets after a record (every one answered)

Attacks below the message layer (raw frames, handshakes, routes) are in app/wire.py.

``hostile_messages`` makes the fuzz corpus (only messages the parser must refuse).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import socket
import struct
import time
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from app import wire
from app.play.protocol import ProtocolError, parse


def hostile_messages(n: int, seed: int) -> list[str | bytes]:
    """``n`` messages a parser must refuse: binary, random text, valid messages with fields
    broken, removed or added, truncated JSON, huge numbers, deep nesting, oversized."""
    rng = random.Random(seed)
    valid = [{"type": "input", "seq": 1, "ts": 1.0, "keys": ["KeyW"]}, {"type": "reset", "seed": 1},
             {"type": "pause", "paused": True}, {"type": "record", "on": True}, {"type": "stats"}]
    junk = [None, True, -1, 2**70, 10**400, 1e308, "", "x" * 50, [], {}, [1, [2, [3]]], {"a": {"b": 1}},
            "\u202e\u0000", "ü" * 30]
    out: list[str | bytes] = []
    while len(out) < n:
        r = rng.random()
        if r < 0.1:
            m: str | bytes = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64)))
        elif r < 0.2:
            m = "".join(chr(rng.randrange(32, 0x2FFF)) for _ in range(rng.randrange(0, 80)))
        elif r < 0.23:
            m = "[" * 5000 + "]" * 5000 if rng.random() < 0.5 else '{"type": "stats", "pad": "' + "x" * 5000 + '"}'
        else:
            msg = dict(rng.choice(valid))
            for _ in range(rng.randrange(1, 4)):
                op = rng.random()
                if op < 0.4 and msg:
                    msg[rng.choice(list(msg))] = rng.choice(junk)
                elif op < 0.7:
                    msg[rng.choice(["type", "seq", "ts", "keys", "zzz", "gamepad", "on", "seed"])] = rng.choice(junk)
                elif msg:
                    msg.pop(rng.choice(list(msg)))
            text = json.dumps(msg)
            m = text[: rng.randrange(len(text) + 1)] if rng.random() < 0.2 else text
        try:
            parse(m)
        except ProtocolError:
            out.append(m)  # keep only what must be refused (valid ones would pause, reset, record)
    return out


async def open_ws(url: str, rcvbuf: int | None = None, max_queue: int = 64) -> ClientConnection:
    """A session (retrying while the server is full: a dropped peer's slot frees a moment later)."""
    deadline = time.monotonic() + 10
    while True:
        sock = socket.create_connection(("127.0.0.1", port_of(url)))
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        ws = await connect(url, sock=sock, proxy=None, max_queue=max_queue, compression=None, max_size=2**22)
        hello = json.loads(await ws.recv())
        if hello.get("type") == "hello":
            return ws
        await ws.close()
        if hello.get("code") != "server_full" or time.monotonic() > deadline:
            raise RuntimeError(f"no session: {hello}")
        await asyncio.sleep(0.05)


async def drop(ws: ClientConnection, how: str) -> None:
    """Leave: "clean" (close handshake), "fin" (TCP close, no close frame), "rst" (reset)."""
    if how == "clean":
        await ws.close()
        return
    if ws.transport.is_closing():  # the server closed it already (its keepalive, a limit)
        ws.transport.abort()
        return
    sock = ws.transport.get_extra_info("socket")
    if how == "rst" and sock is not None:
        with contextlib.suppress(OSError):  # closed under us just now
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    ws.transport.abort() if how == "rst" else ws.transport.close()


async def until(ws: ClientConnection, kind: str, limit: float = 10.0) -> dict[str, Any]:
    async with asyncio.timeout(limit):
        while True:
            msg = await ws.recv()
            if isinstance(msg, str) and (obj := json.loads(msg)).get("type") == kind:
                return obj


async def fuzz(url: str, messages: list[str | bytes]) -> dict[str, Any]:
    ws = await open_ws(url, max_queue=4096)
    errors = 0

    async def count() -> None:
        nonlocal errors
        async for msg in ws:
            if isinstance(msg, str) and '"type": "error"' in msg:
                errors += 1

    counter = asyncio.create_task(count())
    for i, m in enumerate(messages):
        await ws.send(m)
        if i % 50 == 49:
            await asyncio.sleep(0.6)  # under the 100 messages/s limit: every message must be answered
    await asyncio.sleep(1.0)
    await ws.send(json.dumps({"type": "stats"}))
    await asyncio.sleep(0.5)
    counter.cancel()
    alive = not ws.close_code
    await drop(ws, "clean")
    return {"messages": len(messages), "errors": errors, "alive": alive}


async def churn(url: str, n: int) -> dict[str, Any]:
    kinds = ["clean", "fin", "rst", "recording"]
    done = 0
    for i in range(n):
        ws = await open_ws(url)
        kind = kinds[i % len(kinds)]
        if kind == "recording":
            await ws.send(json.dumps({"type": "record", "on": True}))
            await until(ws, "recording")
            await asyncio.sleep(0.3)
        await drop(ws, "rst" if kind == "recording" else kind)
        done += 1
    return {"messages": done}


def health(url: str) -> dict[str, Any]:
    return wire.health(port_of(url))


def port_of(url: str) -> int:
    return int(url.split(":")[2].split("/")[0])


async def slow(url: str, seconds: float) -> dict[str, Any]:
    """A client that reads one message and then nothing, while asking for stats 50 times a second
    (the replies fill its buffers even when frames are small), until the server frees its slot or
    ``seconds`` pass; then it resets. Its frames must be dropped, not queued, and the server's
    keepalive must close it (``freed_after_s``: None if it did not within ``seconds``)."""
    before = health(url)
    ws = await open_ws(url, rcvbuf=4096, max_queue=1)

    async def ask() -> None:  # a send blocks once the server stops reading this client
        with contextlib.suppress(ConnectionClosed):
            while True:
                await ws.send(json.dumps({"type": "stats"}))
                await asyncio.sleep(0.02)

    asking = asyncio.create_task(ask())
    t0, freed, after = time.monotonic(), None, before
    while freed is None and time.monotonic() < t0 + seconds:
        await asyncio.sleep(0.25)
        after = health(url)
        if after["sessions"] <= before["sessions"]:
            freed = round(time.monotonic() - t0, 1)
    asking.cancel()
    await drop(ws, "rst")
    return {"messages": 1, "frames_dropped": after["frames_dropped"] - before["frames_dropped"], "freed_after_s": freed}


async def flood(url: str, seconds: float) -> dict[str, Any]:
    """Input at 500 messages/s (5x the limit: dropped, answered with a few errors, the session
    goes on) for ``seconds``; then as fast as possible until the server closes the connection."""
    ws = await open_ws(url, max_queue=4096)
    sent, t0 = 0, time.monotonic()
    while time.monotonic() < t0 + seconds:
        for _ in range(50):
            await ws.send(json.dumps({"type": "input", "seq": sent + 1, "ts": 0.0, "keys": ["KeyW"]}))
            sent += 1
        await asyncio.sleep(0.1)
    await asyncio.sleep(2.5)  # the rate limit's bucket refills: the stats request gets through
    await ws.send(json.dumps({"type": "stats"}))
    dropped = (await until(ws, "stats", limit=30))["dropped_messages"]
    blast = 0
    try:
        async with asyncio.timeout(30):
            while True:
                await ws.send(json.dumps({"type": "input", "seq": 1, "ts": 0.0, "keys": []}))
                blast += 1
                if blast % 100 == 0:
                    await asyncio.sleep(0)
    except ConnectionClosed:
        pass
    return {"messages": sent + blast, "limited": f"{dropped}/{sent}",
            "blast_closed": f"{ws.close_code} after {blast}"}


async def recording_faults(url: str) -> dict[str, Any]:
    ws = await open_ws(url)
    await ws.send(json.dumps({"type": "pause", "paused": True}))
    for on in (True, False):
        await ws.send(json.dumps({"type": "record", "on": on}))
    empty = [await until(ws, "recording"), await until(ws, "recording")]
    await ws.send(json.dumps({"type": "pause", "paused": False}))
    for on in (True, False):  # in one tick while playing
        await ws.send(json.dumps({"type": "record", "on": on}))
    await until(ws, "recording")
    await until(ws, "recording")
    await ws.send(json.dumps({"type": "record", "on": True}))
    await until(ws, "recording")
    await asyncio.sleep(1.0)
    await drop(ws, "rst")  # mid-recording
    return {"messages": 7, "empty_recording_frames": empty[1].get("frames")}


async def key_toggle(url: str, seconds: float, rate: float = 90.0) -> dict[str, Any]:
    """A key pressed and released ``rate`` times a second (under the message limit): it must not
    make anyone's world run faster than the server's FPS (the player's frame rate shows it)."""
    ws = await open_ws(url)
    reading = asyncio.create_task(_drain(ws))
    sent, t0 = 0, time.monotonic()
    while time.monotonic() < t0 + seconds:
        sent += 1
        await ws.send(json.dumps({"type": "input", "seq": sent, "ts": 0.0, "keys": ["KeyW"] if sent % 2 else []}))
        await asyncio.sleep(1.0 / rate)
    reading.cancel()
    await drop(ws, "clean")
    return {"messages": sent}


async def command_burst(url: str, n: int = 150, limit: float = 20.0) -> dict[str, Any]:
    """``n`` record on/off at once while paused (within the burst limit), then a record before 64
    resets: every command must get its reply (carried out, or refused with ``busy``)."""
    ws = await open_ws(url, max_queue=4096)
    await ws.send(json.dumps({"type": "pause", "paused": True}))
    await until(ws, "paused")
    for i in range(n):
        await ws.send(json.dumps({"type": "record", "on": i % 2 == 0}))
    replies = refused = 0
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(limit):
            while replies < n:
                msg = await ws.recv()
                if isinstance(msg, str) and (obj := json.loads(msg))["type"] in ("recording", "error"):
                    replies += 1
                    refused += obj.get("code") == "busy"
    await ws.send(json.dumps({"type": "record", "on": False}))
    await ws.send(json.dumps({"type": "record", "on": True}))
    for i in range(64):
        await ws.send(json.dumps({"type": "reset", "seed": i}))
    started = False
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(limit):
            while not started:
                msg = await ws.recv()
                started = isinstance(msg, str) and '"state": "started"' in msg
    await drop(ws, "rst")
    return {"messages": n + 66, "unanswered": n - replies, "refused_busy": refused, "record_after_resets": started}


async def _drain(ws: ClientConnection) -> None:
    with contextlib.suppress(ConnectionClosed):
        async for _ in ws:
            pass
