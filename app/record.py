"""``worldstream record``: headless rollouts to MP4, and exact replays of recordings.

    worldstream record --seconds 60 --policy explore --seed 3 --out rollout.mp4
    worldstream record --actions my.actions.jsonl --out rollout.mp4
    worldstream record --replay recordings/<id>.actions.jsonl [--out again.mp4]

Every recording (live or headless) is STEM.mp4 + STEM.actions.jsonl + STEM.meta.json
(app/play/recorder.py). A replay rebuilds the engine from meta.json, replays the events from the
rollout's reset and checks every recorded frame's SHA-1 against the file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from app.engine_spec import EngineSpec
from app.play.recorder import (
    Recorder,
    check_writable_dir,
    describe_error,
    event_action,
    event_reset,
    event_step,
    frame_sha1,
    paths,
    read_events,
    stem_of,
)
from app.scenes import GENERATED, SceneStarter, resolve_start
from engine.engine import Engine
from engine.types import Frame
from world.policy import ExplorePolicy

POLICIES = ("explore",)


@dataclass(frozen=True)
class RecordArgs:
    out: str | None = None  # STEM.mp4 (replay default: STEM.replay.mp4 next to the recording)
    seconds: float | None = None  # default 60 with --policy; the whole file with --actions
    actions: str | None = None  # an actions.jsonl to follow
    policy: str = "explore"
    seed: int = 0
    replay: str | None = None  # a recording's actions.jsonl: regenerate it exactly
    scale: int = 3  # MP4 pixels per frame pixel (nearest neighbour)
    spec: EngineSpec | None = None  # the engine (not used by --replay: meta.json names it)
    start: str | None = None  # start scene (app/scenes.py); None: the default scene when it fits the model


def play_event(engine: Engine, event: dict[str, Any], starter: SceneStarter) -> tuple[Frame, dict[str, Any]]:
    """Apply one actions.jsonl event; returns the frame and the event as it is written back."""
    engine.runner.prefer_compiled = bool(event.get("compiled", False))  # the step the frame was made with
    if event["event"] == "reset":
        start = event.get("start", GENERATED)
        frame = starter.reset(engine, event["seed"], start)
        return frame, event_reset(event["seed"], start, frame.compiled)
    action = event_action(event)
    frame = engine.step(action)
    return frame, event_step(action, frame.compiled)


class RecordingStopped(RuntimeError):
    """A recording ended early (disk full, interrupted); its text is one line for the user."""


def frame_size(engine: Engine) -> tuple[int, int]:
    return engine.config.frame.height, engine.config.frame.width


@contextlib.contextmanager
def finalised(recorder: Recorder) -> Iterator[dict[str, Any]]:
    """Close ``recorder`` however the block ends; the yielded dict becomes its final meta. A write
    error or Ctrl-C becomes one ``RecordingStopped`` line saying what was kept."""
    final: dict[str, Any] = {}
    try:
        yield final
    except (OSError, KeyboardInterrupt) as e:
        meta = recorder.close()
        what = "interrupted" if isinstance(e, KeyboardInterrupt) else describe_error(e)
        raise RecordingStopped(f"{what} after {meta['frames']} frames; kept what was written before: "
                               f"{recorder.video_path} (plays up to there) and {recorder.actions_path}") from e
    finally:
        final.update(recorder.close())


def run_record(args: RecordArgs) -> dict[str, Any]:
    if args.replay is not None:
        return replay(args)
    if args.out is None:
        raise ValueError("--out is required (STEM.mp4)")
    if not str(args.out).endswith(".mp4"):
        raise ValueError(f"--out must end in .mp4, got {args.out}")
    if args.policy not in POLICIES:
        raise ValueError(f"--policy must be one of {POLICIES}")
    if args.seconds is not None and not 0 < args.seconds <= 3600:
        raise ValueError("--seconds must be in (0, 3600]")
    check_writable_dir(Path(args.out).parent, "--out")
    spec = args.spec or EngineSpec()
    engine = spec.build()
    starter = SceneStarter()
    start = resolve_start(args.start, engine, starter)
    fps = engine.config.frame.fps
    if args.actions is not None:
        events = read_events(args.actions)
        if not events or events[0]["event"] != "reset":
            events = [event_reset(args.seed, start), *events]
        if args.seconds is not None:
            events = events[: round(args.seconds * fps) + 1]
        source = f"actions:{args.actions}"
    else:
        events = [event_reset(args.seed, start)] + [None] * round((args.seconds or 60.0) * fps)  # policy fills in
        source = f"policy:{args.policy}"
    policy = ExplorePolicy(seed=args.seed)
    meta = {"engine": spec.describe(), "model": spec.name, "seed": args.seed, "source": source}
    recorder = Recorder(stem_of(args.out), meta, fps, frame_size=frame_size(engine), scale=args.scale)
    start = time.perf_counter()
    with finalised(recorder) as final:
        for event in tqdm(events, desc="record", unit="frame", file=sys.stderr, disable=None):
            frame, clean = play_event(engine, event if event is not None else event_step(policy({})), starter)
            recorder.add(clean, frame.index, frame.rgb)
    wall = time.perf_counter() - start
    return {"out": str(recorder.video_path), "actions": str(recorder.actions_path), "frames": final["frames"],
            "seconds": final["seconds"], "wall_s": round(wall, 2), "fps_generated": final["frames"] / wall,
            "bytes": final["bytes"]}


def replay(args: RecordArgs) -> dict[str, Any]:
    """Regenerate a recording from its events; count frames identical to the recorded ones."""
    assert args.replay is not None
    stem = stem_of(args.replay)
    _, actions, meta_path = paths(stem)
    for p in (actions, meta_path):
        if not p.is_file():
            raise ValueError(f"--replay needs {p} (a recording is STEM.mp4 + STEM.actions.jsonl + STEM.meta.json)")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{meta_path}: not JSON ({e})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("engine"), dict) or "fps" not in meta:
        raise ValueError(f"{meta_path}: not a worldstream recording meta (needs \"engine\" and \"fps\")")
    spec = EngineSpec.from_description(meta["engine"])
    events = read_events(actions)
    if not events or events[0]["event"] != "reset":
        raise ValueError(f"{actions}: a recording starts with a reset event")
    out = Path(args.out) if args.out is not None else stem.with_name(stem.name + ".replay.mp4")
    compiled = any(e.get("compiled") for e in events)
    engine = dataclasses.replace(spec, compile=False).build() if compiled else spec.build()
    if compiled:  # frames of play's background-compiled step: the same compile, here before the first frame
        print("compiling the step the recording used (as play did, in the background)...", file=sys.stderr)
        engine.runner.compile_in_background().join()
        if engine.runner.compile_state != "compiled":
            raise ValueError(f"the recording's frames came from a compiled step; compiling here failed "
                             f"({engine.runner.compile_state})")
    starter = SceneStarter()
    recorder = Recorder(stem_of(out), {**meta, "source": f"replay:{actions}"}, float(meta["fps"]),
                        frame_size=frame_size(engine), scale=int(meta.get("scale", args.scale)))
    identical = mismatched = 0
    first_mismatch: int | None = None
    with finalised(recorder) as final:
        for event in tqdm(events, desc="replay", unit="frame", file=sys.stderr, disable=None):
            frame, clean = play_event(engine, event, starter)
            if not event.get("rec", True):
                continue
            recorder.add(clean, frame.index, frame.rgb)
            if "sha1" in event:
                if frame_sha1(frame.rgb) == event["sha1"]:
                    identical += 1
                else:
                    mismatched += 1
                    first_mismatch = frame.index if first_mismatch is None else first_mismatch
    return {"out": str(recorder.video_path), "frames": final["frames"], "identical": identical,
            "mismatched": mismatched, "first_mismatch": first_mismatch, "exact": mismatched == 0 and identical > 0}
