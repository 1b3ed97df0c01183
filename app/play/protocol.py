"""The play websocket's messages: strict parsing of what clients send, and a flood limit.

Client -> server: text frames, one JSON object each, at most ``MAX_MESSAGE_BYTES``::

    {"type": "input", "seq": 17, "ts": 1234.5, "keys": ["KeyW"], "gamepad": {"axes": [...], "buttons": [...]}}
    {"type": "reset", "seed": 3, "start": "map05"}   both optional (default: a fresh random seed, the
                                            session's current start scene; "generated": no scene)
    {"type": "pause", "paused": true}
    {"type": "record", "on": true}          start (true) / stop (false) recording
    {"type": "stats"}                        ask for the server-side stats now

Server -> client: a text ``{"type": "frame", ...}`` (index, echoed input seq/ts, per-stage ms)
followed by the frame as one binary JPEG message; text ``hello``, ``stats``, ``recording``,
``paused``, ``error`` messages. Anything malformed is answered with ``error`` and the session goes on.

Close codes: 1007 a text message that is not UTF-8; 1008 wrong or missing token, an input flood
far over the rate limit (``RateLimit``), or too many control/continuation frames (app/play/guard.py);
1009 a message over 64 KiB (the websocket layer); 1011 a server error (details only in the server's
log); 1013 the server is full, try again later; 1011 also when a client answers no keepalive ping
for ``--keepalive`` seconds (one that stopped reading). A client that reads slower than frames are
made is not closed: it gets the newest frame, the others are dropped.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from typing import Any

from app.play.controls import Gamepad

MAX_MESSAGE_BYTES = 4096
MAX_KEYS = 32
MAX_AXES = 16
MAX_BUTTONS = 32
MAX_SEED = 2**31 - 1
MAX_NUMBER = 1e15  # |ts| (client clock, ms): a millisecond clock reaches 1e15 in 30,000 years


class ProtocolError(ValueError):
    """A client message that cannot be used; the text is sent back to the client."""


@dataclass(frozen=True)
class Input:
    seq: int  # client's counter, echoed with the first frame that used this input
    ts: float  # client's clock (ms), echoed for key-to-photon latency
    keys: tuple[str, ...]
    gamepad: Gamepad | None


@dataclass(frozen=True)
class Reset:
    seed: int | None
    start: str | None = None  # a start scene name (the server checks it is one it offers)


@dataclass(frozen=True)
class Pause:
    paused: bool


@dataclass(frozen=True)
class Record:
    on: bool


@dataclass(frozen=True)
class Stats:
    pass


Message = Input | Reset | Pause | Record | Stats

# type -> (required fields, optional fields)
FIELDS: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    "input": (frozenset({"seq", "ts", "keys"}), frozenset({"gamepad"})),
    "reset": (frozenset(), frozenset({"seed", "start"})),
    "pause": (frozenset({"paused"}), frozenset()),
    "record": (frozenset({"on"}), frozenset()),
    "stats": (frozenset(), frozenset()),
}


def parse(text: str | bytes | None) -> Message:
    """One client message -> a typed message; ``ProtocolError`` says what is wrong."""
    if text is None or isinstance(text, bytes | bytearray):
        raise ProtocolError("binary messages are not accepted; send JSON text")
    if len(text.encode("utf-8", "replace")) > MAX_MESSAGE_BYTES:
        raise ProtocolError(f"message too large (limit {MAX_MESSAGE_BYTES} bytes)")
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):  # ValueError: JSONDecodeError, or an integer over Python's digit limit
        raise ProtocolError("malformed JSON") from None
    if not isinstance(obj, dict):
        raise ProtocolError("a message must be a JSON object with a \"type\"")
    kind = obj.get("type")
    if not isinstance(kind, str) or kind not in FIELDS:
        raise ProtocolError(f"unknown message type {_short(kind)}; types are {sorted(FIELDS)}")
    required, optional = FIELDS[kind]
    fields = set(obj) - {"type"}
    if missing := required - fields:
        raise ProtocolError(f"{kind}: missing field(s) {sorted(missing)}")
    if unknown := fields - required - optional:
        raise ProtocolError(f"{kind}: unknown field(s) {sorted(_short(u) for u in unknown)}")
    if kind == "input":
        return Input(seq=_int(obj, "seq", 0, 2**53), ts=_number(obj, "ts"), keys=_keys(obj["keys"]),
                     gamepad=_gamepad(obj["gamepad"]) if obj.get("gamepad") is not None else None)
    if kind == "reset":
        start = obj.get("start")
        if start is not None and (not isinstance(start, str) or not 0 < len(start) <= 64):
            raise ProtocolError("reset.start must be a scene name (a string of 1..64 characters)")
        return Reset(seed=_int(obj, "seed", 0, MAX_SEED) if obj.get("seed") is not None else None, start=start)
    if kind == "pause":
        return Pause(paused=_bool(obj, "paused"))
    if kind == "record":
        return Record(on=_bool(obj, "on"))
    return Stats()


def _short(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _int(obj: dict, name: str, lo: int, hi: int) -> int:
    v = obj[name]
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise ProtocolError(f"{obj['type']}.{name} must be an integer in [{lo}, {hi}]")
    return v


def _number(obj: dict, name: str, limit: float = MAX_NUMBER) -> float:
    """A JSON number in [-limit, limit]. Integers are compared before any float conversion:
    a 400-digit integer is out of range, not an OverflowError."""
    v = obj[name]
    if isinstance(v, bool) or not isinstance(v, int | float) or not -limit <= v <= limit:
        raise ProtocolError(f"{obj['type']}.{name} must be a finite number in [-{limit:g}, {limit:g}]")
    return float(v)


def _bool(obj: dict, name: str) -> bool:
    v = obj[name]
    if not isinstance(v, bool):
        raise ProtocolError(f"{obj['type']}.{name} must be true or false")
    return v


def _keys(v: Any) -> tuple[str, ...]:
    if not isinstance(v, list) or len(v) > MAX_KEYS or not all(isinstance(k, str) and 0 < len(k) <= 32 for k in v):
        raise ProtocolError(f"input.keys must be a list of at most {MAX_KEYS} key codes (strings)")
    return tuple(v)


def _gamepad(v: Any) -> Gamepad:
    if not isinstance(v, dict) or set(v) - {"axes", "buttons"}:
        raise ProtocolError("input.gamepad must be {\"axes\": [...], \"buttons\": [...]}")
    axes, buttons = v.get("axes", []), v.get("buttons", [])
    if not _numbers(axes, MAX_AXES, -1.0, 1.0):
        raise ProtocolError(f"input.gamepad.axes must be at most {MAX_AXES} numbers in [-1, 1]")
    if not _numbers(buttons, MAX_BUTTONS, 0.0, 1.0):
        raise ProtocolError(f"input.gamepad.buttons must be at most {MAX_BUTTONS} numbers in [0, 1]")
    return Gamepad(tuple(float(a) for a in axes), tuple(float(b) for b in buttons))


def _numbers(v: Any, limit: int, lo: float, hi: float) -> bool:
    return (isinstance(v, list) and len(v) <= limit
            and all(not isinstance(x, bool) and isinstance(x, int | float) and lo <= x <= hi for x in v))


class RateLimit:
    """Token bucket: ``rate`` messages per second, bursts up to ``burst``. ``allow()`` is False
    for a message over the limit; ``should_warn()`` is True at most once a second, so a flood
    gets a few error messages rather than one per dropped message. ``abusive`` turns True when
    more than ``max(1000, 20 * rate)`` messages were dropped within one second: no browser sends
    that, and reading such a flood would cost the other players CPU (the server then closes)."""

    def __init__(self, rate: float = 100.0, burst: float = 200.0) -> None:
        self.rate, self.burst = rate, burst
        self.tokens = burst
        self.dropped = 0
        self.abusive = False
        self._last = time.monotonic()
        self._warned = -math.inf
        self._window = (self._last, 0)  # (start, drops since)

    def allow(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self._last) * self.rate)
        self._last = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        self.dropped += 1
        start, drops = self._window
        self._window = (start, drops + 1) if now - start < 1.0 else (now, 1)
        self.abusive = self.abusive or self._window[1] > max(1000.0, 20 * self.rate)
        return False

    def should_warn(self) -> bool:
        now = time.monotonic()
        if now - self._warned >= 1.0:
            self._warned = now
            return True
        return False
