"""One player's session: a rollout (an engine on its own cache slot), the latest input,
commands, recording.

Threading: the websocket's receive loop (event loop thread) only calls ``set_input`` and
``command``; everything that touches the engine runs in the server's one engine worker thread,
in two halves per tick: ``begin`` (commands; the action to step) and ``end`` (record, encode),
with the scheduler's batched step of every session in between. ``end`` returns the messages to
send (text JSON, then binary JPEG).

    receive loop ──set_input/command──> PlaySession ──begin()──> scheduler.step(all sessions)
                                                    <──end(frame)── Tick(messages, frame)

A recording that cannot be written (disk full, a folder gone) stops with a ``recording``
message of state ``failed``; the session goes on. Messages never carry a server path.
"""

from __future__ import annotations

import collections
import io
import json
import logging
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from app.play.controls import to_action
from app.play.protocol import MAX_SEED, Input, Record, Reset
from app.play.recorder import EventLog, Recorder, describe_error, event_reset, event_step
from app.scenes import GENERATED, SceneStarter
from engine.action import Action
from engine.engine import Engine
from engine.types import Frame

log = logging.getLogger("worldstream.session")
JPEG_QUALITY = 90
MAX_COMMANDS = 32  # commands (reset, record) waiting for the next tick; beyond, each is refused with a reply


@dataclass
class FrameOut:
    """One frame as sent: its meta (the ``frame`` message) and the JPEG that follows it."""

    meta: dict[str, Any]
    jpeg: bytes


@dataclass
class Tick:
    """What one tick produced: control messages (JSON text, each to be delivered) and at most
    one frame (which a slow client may miss: the newest frame wins)."""

    messages: list[str] = field(default_factory=list)
    frame: FrameOut | None = None


def jpeg_bytes(rgb: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
    """One frame as the page receives it."""
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


@dataclass
class Plan:
    """One session's part of a tick, between ``begin`` and ``end``."""

    out: Tick
    input: Input
    action: Action | None = None  # to step (the scheduler makes its frame)
    frame: Frame | None = None  # made by a reset in ``begin``, or the stepped one
    event: dict[str, Any] | None = None


@dataclass(frozen=True)
class SessionInfo:
    model: str  # shown on the page
    fps: float  # target frames per second
    engine: dict[str, Any]  # EngineSpec.describe(), stored with recordings
    recordings: Path  # where recordings are written
    jpeg_quality: int = JPEG_QUALITY
    start: str = GENERATED  # the start scene of a session's first rollout (app/scenes.py)
    starts: tuple[str, ...] = (GENERATED,)  # the scenes a player may pick (reset.start)
    starter: SceneStarter = field(default_factory=SceneStarter)  # shared: scenes encoded once


class PlaySession:
    def __init__(self, engine: Engine, info: SessionInfo, session_id: str | None = None) -> None:
        self.engine = engine
        self.info = info
        self.id = session_id or secrets.token_hex(8)
        self._lock = threading.Lock()  # guards the fields the receive loop writes
        self._input = Input(seq=0, ts=0.0, keys=(), gamepad=None)
        self._action = to_action((), None)  # the current input's action
        self.last_action: Action | None = None  # the action of the last frame stepped (worker side)
        self._commands: collections.deque[Reset | Record] = collections.deque()  # at most MAX_COMMANDS
        self._echoed_seq = 0  # seq 0: no input yet
        self.seed = 0
        self.start_scene = info.start  # changed by a reset that names another scene
        self.history = EventLog()  # events since the last reset (the replay prefix of a recording)
        self.recorder: Recorder | None = None
        self.recording_id: str | None = None
        self._stage_ms: collections.deque[dict[str, float]] = collections.deque(maxlen=30)
        self._sent: collections.deque[float] = collections.deque(maxlen=64)  # frame times
        self.frames = 0
        self._record_ms = 0.0

    # ------------------------------------------------------------------ event-loop side
    def set_input(self, msg: Input) -> bool:
        """Take the newest input; True if its action differs from the previous input's."""
        action = to_action(msg.keys, msg.gamepad)
        with self._lock:
            old, self._input, self._action = self._action, msg, action
        return action != old

    def changed(self) -> bool:
        """The input asks for another action than the last frame's (a frame is due now)."""
        with self._lock:
            action = self._action
        return self.last_action is not None and action != self.last_action

    def command(self, msg: Reset | Record) -> str | None:
        """Queue a command for the next tick; if ``MAX_COMMANDS`` already wait, refuse it: the
        refusal (an ``error`` message to send) is returned. Nothing is dropped silently."""
        with self._lock:
            if len(self._commands) < MAX_COMMANDS:
                self._commands.append(msg)
                return None
        kind = "reset" if isinstance(msg, Reset) else "record"
        return json.dumps({"type": "error", "code": "busy", "refused": kind,
                           "message": f"{kind} refused: {MAX_COMMANDS} commands are already waiting for the next "
                                      f"frame; send it again after a frame"})

    def latest(self) -> tuple[Input, Action]:
        """The input now and its action (read by a step in flight: a change preempts it)."""
        with self._lock:
            return self._input, self._action

    def _next_command(self) -> Reset | Record | None:
        with self._lock:
            return self._commands.popleft() if self._commands else None

    # ------------------------------------------------------------------ worker side
    def begin(self, step: bool) -> Plan:
        """A tick's first half: apply pending commands (a reset makes its frame here); the
        action to step if ``step`` (None: no frame wanted, or the reset's frame is this tick's)."""
        with self._lock:
            inp, action = self._input, self._action
        plan = Plan(Tick(), inp)
        # In order, up to and including the first reset: a reset's frame is this tick's frame, and
        # one reset per tick keeps a burst of them from stalling every session's tick.
        while plan.frame is None and (cmd := self._next_command()) is not None:
            if isinstance(cmd, Reset):
                if cmd.start is not None and cmd.start not in self.info.starts:
                    message = f"unknown start scene {cmd.start[:64]!r}; choose one of {list(self.info.starts)}"
                    plan.out.messages.append(json.dumps({"type": "error", "message": message}))
                    continue
                self.start_scene = cmd.start or self.start_scene
                plan.frame, plan.event = self._reset(cmd.seed)
            else:
                plan.out.messages += self._record(cmd.on)
        if plan.frame is None and step and self.engine.frame_index >= 0:
            plan.action = action
        return plan

    def end(self, plan: Plan, frame: Frame | None = None) -> Tick:
        """A tick's second half: ``frame`` is the one stepped for ``plan.action`` (by the
        scheduler, batched with every other session's); record it and encode it."""
        if plan.action is not None:
            if frame is None:
                raise ValueError("a planned step needs its frame")
            plan.frame, plan.event = frame, event_step(plan.action, frame.compiled)
            self.last_action = plan.action
            self.history.add(plan.event)
        if plan.frame is not None and plan.event is not None:
            plan.out.messages += self._keep(plan.frame, plan.event)
            plan.out.frame = self._emit(plan.frame, plan.input)
        return plan.out

    def tick(self, step: bool) -> Tick:
        """Both halves with this session's engine alone (headless use and tests)."""
        plan = self.begin(step)
        return self.end(plan, self.engine.step(plan.action) if plan.action is not None else None)

    def start(self, seed: int | None = None) -> Tick:
        """First frame of the session (x_0)."""
        frame, event = self._reset(seed)
        return Tick(self._keep(frame, event), self._emit(frame, self._input))

    def close(self) -> dict[str, Any] | None:
        """Finalise a recording in progress (disconnect); returns its meta."""
        if self.recorder is None:
            return None
        meta = self.recorder.close()
        self.recorder = None
        self.recording_id = None
        return meta

    def stats(self, **extra: Any) -> dict[str, Any]:
        sent = list(self._sent)
        fps = (len(sent) - 1) / (sent[-1] - sent[0]) if len(sent) > 1 and sent[-1] > sent[0] else 0.0
        stages: dict[str, list[float]] = {}
        for ms in list(self._stage_ms):
            for k, v in ms.items():
                stages.setdefault(k, []).append(v)
        return {"type": "stats", "fps": round(fps, 2), "target_fps": self.info.fps,
                "ms": {k: round(sum(v) / len(v), 2) for k, v in stages.items()},
                "frame": self.engine.frame_index, "frames_sent": self.frames,
                "recording": self.recording_id, **extra}

    # ------------------------------------------------------------------ internals
    def _reset(self, seed: int | None) -> tuple[Frame, dict[str, Any]]:
        self.seed = seed if seed is not None else secrets.randbelow(MAX_SEED + 1)
        frame = self.info.starter.reset(self.engine, self.seed, self.start_scene)
        event = event_reset(self.seed, self.start_scene, frame.compiled)
        self.history.reset(event)
        return frame, event

    def _record(self, on: bool) -> list[str]:
        if on and self.recorder is None:
            rid = secrets.token_hex(16)
            meta = {"engine": self.info.engine, "model": self.info.model, "session": self.id,
                    "seed": self.seed, "source": "play"}
            frame = self.engine.config.frame
            try:
                # Events before now are the replay prefix; the next frame is the first recorded one.
                self.recorder = Recorder(self.info.recordings / rid, meta, self.info.fps,
                                         frame_size=(frame.height, frame.width), history=self.history)
            except Exception as e:  # disk full, folder gone: no recording, the session goes on
                log.warning("session %s: cannot start recording %s", self.id, rid, exc_info=True)
                return [json.dumps({"type": "recording", "state": "failed", "id": rid,
                                    "message": f"cannot record: {describe_error(e)}"})]
            self.recording_id = rid
            return [json.dumps({"type": "recording", "state": "started", "id": rid})]
        if not on and self.recorder is not None:
            return [self._stopped()]
        state = "started" if on else "stopped"
        return [json.dumps({"type": "error", "message": f"recording already {state}"})]

    def _stopped(self) -> str:
        """Close the recording; its ``stopped`` (or ``failed``) message. Zero frames is a valid,
        complete, empty recording."""
        rid = self.recording_id
        meta = self.close()
        assert meta is not None and rid is not None
        msg = {"type": "recording", "state": "stopped" if meta["complete"] else "failed", "id": rid,
               "url": f"recordings/{rid}.mp4", "frames": meta["frames"], "seconds": round(meta["seconds"], 2)}
        if not meta["complete"]:
            msg["message"] = f"recording stopped: {meta.get('error')}; {meta['frames']} frames kept"
        return json.dumps(msg)

    def _keep(self, frame: Frame, event: dict[str, Any]) -> list[str]:
        """Record the frame if recording; a write error ends the recording, not the session."""
        if self.recorder is None:
            return []
        t0 = time.perf_counter()
        try:
            self.recorder.add(event, frame.index, frame.rgb)
        except Exception as e:
            log.warning("session %s: recording %s failed", self.id, self.recording_id, exc_info=True)
            self.recorder.fail(e)
            return [self._stopped()]
        self._record_ms = (time.perf_counter() - t0) * 1e3
        return []

    def _emit(self, frame: Frame, inp: Input) -> FrameOut:
        t0 = time.perf_counter()
        jpeg = jpeg_bytes(frame.rgb, self.info.jpeg_quality)
        ms = {**frame.timings_ms, "jpeg": (time.perf_counter() - t0) * 1e3}
        if self.recorder is not None:
            ms["record"] = self._record_ms
        self._stage_ms.append(ms)
        self._sent.append(time.monotonic())
        self.frames += 1
        # Echo the input only with the first frame that used it: that frame is its "photon".
        fresh = inp.seq != self._echoed_seq
        self._echoed_seq = inp.seq
        meta = {"type": "frame", "index": frame.index, "seq": inp.seq if fresh else None,
                "ts": inp.ts if fresh else None, "action": list(frame.action.names) if frame.action else [],
                "ms": {k: round(v, 2) for k, v in ms.items()}}
        return FrameOut(meta, jpeg)
