"""Recording sink: a rollout's frames -> fragmented MP4 + actions.jsonl + meta.json.

Files for a recording named STEM (live recordings: STEM = a random id under the server's folder;
``worldstream record --out X.mp4``: STEM = X)::

    STEM.mp4            H.264 (libx264, yuv420p), fragmented (frag_keyframe+empty_moov) with a
                        keyframe every second: if the process dies, all but the last second plays
    STEM.actions.jsonl  one event per line, flushed as written (see below)
    STEM.meta.json      model, sampler, dtype, fps, scale; rewritten at the end with frame counts

actions.jsonl replays the rollout from its reset, including frames before the recording began
(``"rec": false``), so that ``worldstream record --replay`` can regenerate it exactly::

    {"event": "reset", "seed": 3, "rec": false}
    {"event": "step", "buttons": ["forward"], "rec": false}
    {"event": "step", "buttons": ["forward", "turn_left"], "t": 2, "rec": true, "sha1": "9f2c..."}

``sha1`` is the hash of the frame's raw RGB bytes (before video compression), so a replay can
prove it produced the identical frames. Prefix lines carry neither ``t`` nor ``sha1``; a prefix
step held for n frames is one line with ``"repeat": n``.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np

from engine.action import BUTTONS, Action


def frame_sha1(rgb: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(rgb).tobytes()).hexdigest()


def event_reset(seed: int, start: str = "generated", compiled: bool = False) -> dict[str, Any]:
    """A rollout's start: the seed, and the start scene unless the first frame was generated
    (older recordings have no "start": generated). ``compiled``: see ``event_step``."""
    event: dict[str, Any] = {"event": "reset", "seed": int(seed)}
    if start != "generated":
        event["start"] = start
    if compiled:
        event["compiled"] = True
    return event


def event_step(action: Action, compiled: bool = False) -> dict[str, Any]:
    """A step under ``action``. ``compiled``: the frame came from the step compiled in the
    background (play --compile), whose float rounding differs from the eager step's: a replay
    runs each frame with the same step, so it stays exact across the swap."""
    event: dict[str, Any] = {"event": "step", "buttons": list(action.names)}
    if compiled:
        event["compiled"] = True
    return event


def paths(stem: str | Path) -> tuple[Path, Path, Path]:
    """(video, actions, meta) for a recording STEM."""
    stem = Path(stem)
    return stem.with_name(stem.name + ".mp4"), stem.with_name(stem.name + ".actions.jsonl"), \
        stem.with_name(stem.name + ".meta.json")


def stem_of(path: str | Path) -> Path:
    """STEM from any of its three files (or the stem itself)."""
    p = Path(path)
    for suffix in (".actions.jsonl", ".meta.json", ".mp4"):
        if p.name.endswith(suffix):
            return p.with_name(p.name[: -len(suffix)])
    return p


class EventLog:
    """A rollout's events since its reset: the replay prefix of a recording started mid-rollout.

    Held actions are run-length encoded and every run is stored already serialised, so an hour
    of play is a few thousand short strings (one per change of input; at worst one per frame)
    and starting a recording writes the prefix in one call, not one JSON dump per frame."""

    def __init__(self) -> None:
        self._lines: list[str] = []
        self._run: dict[str, Any] | None = None  # the newest event, not yet serialised
        self._repeat = 0
        self.events = 0  # events logged since the reset (a run of n counts n)

    def reset(self, event: dict[str, Any]) -> None:
        self._lines, self._run, self._repeat, self.events = [], event, 1, 1

    def add(self, event: dict[str, Any]) -> None:
        self.events += 1
        if event == self._run and event.get("event") == "step":
            self._repeat += 1
            return
        self._commit()
        self._run, self._repeat = event, 1

    @property
    def runs(self) -> int:
        """Lines the prefix takes (what memory grows with)."""
        return len(self._lines) + (self._run is not None)

    def prefix(self) -> str:
        """The log as ``rec: false`` actions.jsonl lines."""
        return "".join(self._lines) + (self._serialise(self._run, self._repeat) if self._run is not None else "")

    def _commit(self) -> None:
        if self._run is not None:
            self._lines.append(self._serialise(self._run, self._repeat))

    @staticmethod
    def _serialise(event: dict[str, Any], repeat: int) -> str:
        return json.dumps({**event, **({"repeat": repeat} if repeat > 1 else {}), "rec": False}) + "\n"


class Recorder:
    """Writes one recording of frames of ``frame_size`` (height, width). ``history`` is the
    rollout's events before recording began (written with ``rec: false``); then
    ``add(event, index, rgb)`` per recorded frame; ``close()`` finalises. A recording closed
    with no frames is a valid, complete, empty MP4 (the stream header, zero frames).

    A write error (disk full, file too large) raises ``OSError`` from ``add``; ``close()`` then
    still closes the files, keeps every frame written so far (the MP4 is fragmented, the action
    log flushed per line) and returns meta with ``complete: false`` and the error."""

    def __init__(self, stem: str | Path, meta: dict[str, Any], fps: float, frame_size: tuple[int, int],
                 history: EventLog | None = None, scale: int = 3, crf: int = 23) -> None:
        if not 1 <= scale <= 8:
            raise ValueError("scale must be in 1..8")
        h, w = frame_size
        if (h * scale) % 2 or (w * scale) % 2:
            raise ValueError(f"frames need even height and width for yuv420p, got {h * scale}x{w * scale} "
                             f"(after scale)")
        self.video_path, self.actions_path, self.meta_path = paths(stem)
        self.video_path.parent.mkdir(parents=True, exist_ok=True)
        self.fps, self.scale, self.frame_size = fps, scale, (h, w)
        self.frames = 0
        self.closed = False
        self.error: str | None = None
        self._started = time.time()
        self.meta = {**meta, "fps": fps, "scale": scale, "started": self._started, "frames": 0, "complete": False}
        self._write_meta()
        self._actions = open(self.actions_path, "w", encoding="utf-8")  # closed in close()
        self._container: Any = None
        try:
            if history is not None:
                self._actions.write(history.prefix())
                self._actions.flush()
            self._container = av.open(str(self.video_path), mode="w",
                                      options={"movflags": "frag_keyframe+empty_moov+default_base_moof",
                                               "flush_packets": "1"})
            stream = self._container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1000))
            stream.width, stream.height, stream.pix_fmt = w * scale, h * scale, "yuv420p"
            stream.codec_context.gop_size = max(1, round(fps))  # a keyframe (and fragment) a second
            stream.options = {"crf": str(crf), "preset": "veryfast", "tune": "zerolatency"}
            self._stream = stream
            self._container.start_encoding()  # the header now: even zero frames make a valid file
        except BaseException as e:
            self.fail(e)
            self.close()
            raise

    def add(self, event: dict[str, Any], index: int, rgb: np.ndarray) -> None:
        """One frame and the event that produced it."""
        if self.closed:
            raise RuntimeError("recording is closed")
        if rgb.shape != (*self.frame_size, 3):
            raise ValueError(f"frame of shape {rgb.shape}, the recording's is {(*self.frame_size, 3)}")
        try:
            self._line({**event, "t": index, "rec": True, "sha1": frame_sha1(rgb)})
            if self.scale > 1:
                rgb = rgb.repeat(self.scale, axis=0).repeat(self.scale, axis=1)
            self._container.mux(self._stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        except BaseException as e:
            self.fail(e)
            raise
        self.frames += 1

    def close(self) -> dict[str, Any]:
        """Flush the encoder and close the files; returns the final meta. Safe to call twice;
        never raises for a write error (the meta says it, if the disk lets it be written)."""
        if self.closed:
            return self.meta
        self.closed = True
        for step in (self._flush, self._close_container, self._actions.close):
            try:
                step()
            except Exception as e:  # keep closing the rest; the first error is the one reported
                self.fail(e)
        size = self.video_path.stat().st_size if self.video_path.is_file() else 0
        self.meta.update(frames=self.frames, seconds=self.frames / self.fps, complete=self.error is None,
                         bytes=size, wall_s=time.time() - self._started)
        if self.error is not None:
            self.meta["error"] = self.error
        try:
            self._write_meta()
        except OSError as e:  # disk full: the earlier meta.json (complete: false) stays
            self.fail(e)
        return self.meta

    def _flush(self) -> None:
        if self._container is not None and self.error is None:
            self._container.mux(self._stream.encode())

    def _close_container(self) -> None:
        if self._container is not None:
            self._container.close()

    def fail(self, e: BaseException) -> None:
        """Mark the recording failed with this error (the first one is kept); close() reports it."""
        if self.error is None:
            self.error = describe_error(e)

    def _line(self, obj: dict[str, Any]) -> None:
        self._actions.write(json.dumps(obj) + "\n")
        self._actions.flush()

    def _write_meta(self) -> None:
        tmp = self.meta_path.with_name(self.meta_path.name + ".tmp")
        tmp.write_text(json.dumps(self.meta, indent=1))
        os.replace(tmp, self.meta_path)


def describe_error(e: BaseException) -> str:
    """An error in a few words, without file paths (safe to send to a client): "disk full
    (No space left on device)", "OSError: File too large", "KeyboardInterrupt"."""
    if isinstance(e, OSError):
        reason = e.strerror or type(e).__name__
        return f"disk full ({reason})" if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG) else \
            f"{type(e).__name__}: {reason}"
    return type(e).__name__


def check_writable_dir(path: str | Path, what: str) -> Path:
    """``path`` as an absolute folder recordings can be written to (it need not exist yet: its
    nearest existing parent must be a writable folder). ValueError in one line otherwise."""
    p = Path(path).expanduser().resolve()
    probe = p
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise ValueError(f"{what} {path}: {probe} is not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ValueError(f"{what} {path}: {probe} is not writable")
    return p


MAX_REPEAT = 10**7  # a prefix run: 160 hours at 17.5 FPS


def read_events(path: str | Path) -> list[dict[str, Any]]:
    """Events from an actions.jsonl (this module's format; lines with only ``buttons`` are
    steps). Raises ``ValueError`` naming the line for anything else."""
    events: list[dict[str, Any]] = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                raise ValueError(f"{path}:{n}: not JSON") from None
            if not isinstance(obj, dict):
                raise ValueError(f"{path}:{n}: expected a JSON object")
            kind = obj.get("event", "step")
            if kind == "reset":
                seed = obj.get("seed", 0)
                if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
                    raise ValueError(f"{path}:{n}: reset seed must be a non-negative integer")
                start = obj.get("start", "generated")
                if not isinstance(start, str) or not 0 < len(start) <= 64:
                    raise ValueError(f"{path}:{n}: reset start must be a scene name")
            elif kind == "step":
                buttons = obj.get("buttons")
                if not isinstance(buttons, list) or any(b not in BUTTONS for b in buttons):
                    raise ValueError(f"{path}:{n}: step needs \"buttons\", a list of {list(BUTTONS)}")
                repeat = obj.pop("repeat", 1)
                if isinstance(repeat, bool) or not isinstance(repeat, int) or not 1 <= repeat <= MAX_REPEAT:
                    raise ValueError(f"{path}:{n}: step repeat must be an integer in 1..{MAX_REPEAT}")
                if repeat > 1:
                    if "sha1" in obj or "t" in obj:
                        raise ValueError(f"{path}:{n}: a recorded frame (with t/sha1) cannot repeat")
                    events.extend({**obj, "event": kind} for _ in range(repeat - 1))
            else:
                raise ValueError(f"{path}:{n}: unknown event {kind!r} (reset or step)")
            if not isinstance(obj.get("compiled", False), bool):
                raise ValueError(f"{path}:{n}: compiled must be true or false")
            events.append({**obj, "event": kind})
    return events


def event_action(event: dict[str, Any]) -> Action:
    return Action.of(*event["buttons"])
