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
prove it produced the identical frames. Prefix lines carry neither ``t`` nor ``sha1``.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterable
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np

from engine.action import BUTTONS, Action


def frame_sha1(rgb: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(rgb).tobytes()).hexdigest()


def event_reset(seed: int, start: str = "generated") -> dict[str, Any]:
    """A rollout's start: the seed, and the start scene unless the first frame was generated
    (older recordings have no "start": generated)."""
    event: dict[str, Any] = {"event": "reset", "seed": int(seed)}
    if start != "generated":
        event["start"] = start
    return event


def event_step(action: Action) -> dict[str, Any]:
    return {"event": "step", "buttons": list(action.names)}


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


class Recorder:
    """Writes one recording. ``history`` are the rollout's events before recording began
    (written with ``rec: false``); then ``add(event, index, rgb)`` per recorded frame and
    ``reset``/step events as they happen; ``close()`` finalises (also after errors)."""

    def __init__(self, stem: str | Path, meta: dict[str, Any], fps: float,
                 history: Iterable[dict[str, Any]] = (), scale: int = 3, crf: int = 23) -> None:
        if not 1 <= scale <= 8:
            raise ValueError("scale must be in 1..8")
        self.video_path, self.actions_path, self.meta_path = paths(stem)
        self.video_path.parent.mkdir(parents=True, exist_ok=True)
        self.fps, self.scale = fps, scale
        self.frames = 0
        self.closed = False
        self._started = time.time()
        self.meta = {**meta, "fps": fps, "scale": scale, "started": self._started, "frames": 0, "complete": False}
        self._write_meta()
        self._actions = open(self.actions_path, "w", encoding="utf-8")  # closed in close()
        for event in history:
            self._line({**event, "rec": False})
        self._container = av.open(str(self.video_path), mode="w",
                                  options={"movflags": "frag_keyframe+empty_moov+default_base_moof",
                                           "flush_packets": "1"})
        self._stream: av.VideoStream | None = None
        self._crf = crf

    def add(self, event: dict[str, Any], index: int, rgb: np.ndarray) -> None:
        """One frame and the event that produced it."""
        if self.closed:
            raise RuntimeError("recording is closed")
        self._line({**event, "t": index, "rec": True, "sha1": frame_sha1(rgb)})
        if self.scale > 1:
            rgb = rgb.repeat(self.scale, axis=0).repeat(self.scale, axis=1)
        if self._stream is None:
            self._open_stream(rgb.shape[0], rgb.shape[1])
        assert self._stream is not None
        self._container.mux(self._stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        self.frames += 1

    def close(self) -> dict[str, Any]:
        """Flush the encoder and close the files; returns the final meta. Safe to call twice."""
        if self.closed:
            return self.meta
        self.closed = True
        try:
            if self._stream is not None:
                self._container.mux(self._stream.encode())  # flush
        finally:
            self._container.close()
            self._actions.close()
            self.meta.update(frames=self.frames, seconds=self.frames / self.fps, complete=True,
                             bytes=self.video_path.stat().st_size, wall_s=time.time() - self._started)
            self._write_meta()
        return self.meta

    def _open_stream(self, h: int, w: int) -> None:
        if h % 2 or w % 2:
            raise ValueError(f"frames need even height and width for yuv420p, got {h}x{w} (after scale)")
        stream = self._container.add_stream("libx264", rate=Fraction(self.fps).limit_denominator(1000))
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.codec_context.gop_size = max(1, round(self.fps))  # a keyframe (and fragment) a second
        stream.options = {"crf": str(self._crf), "preset": "veryfast", "tune": "zerolatency"}
        self._stream = stream

    def _line(self, obj: dict[str, Any]) -> None:
        self._actions.write(json.dumps(obj) + "\n")
        self._actions.flush()

    def _write_meta(self) -> None:
        tmp = self.meta_path.with_name(self.meta_path.name + ".tmp")
        tmp.write_text(json.dumps(self.meta, indent=1))
        os.replace(tmp, self.meta_path)


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
            else:
                raise ValueError(f"{path}:{n}: unknown event {kind!r} (reset or step)")
            events.append({**obj, "event": kind})
    return events


def event_action(event: dict[str, Any]) -> Action:
    return Action.of(*event["buttons"])
