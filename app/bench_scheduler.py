"""``worldstream bench --sessions N`` and ``--speculate K``: the scheduler's two levers, each
measured against its own baseline in the same run, on the same runner.

Sessions: N rollouts stepped together (one batched forward a tick) vs one rollout alone, in
alternating blocks; reports aggregate FPS, per-session FPS, the ratio of aggregate FPS to one
session's, and that ratio over N (1.0 = N sessions cost what one does).

Speculation: a human-like action trace (an eval suite episode's actions, or a recording's
actions.jsonl) replayed in real time at the model's frame rate, once without and once with
drafting. A tick reads its input at its scheduled time; its latency is from then to the frame
being ready (JPEG included); as in the play server, a loop that falls behind slips its schedule
rather than queueing ticks. When a tick is done before the next one is due, the drafting run
drafts the held action's next frame; a draft may run into the next tick (that tick then waits for
it: the time counts), which is what gets drafting going on a machine whose frame takes most of
a tick.
"""

from __future__ import annotations

import itertools
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tqdm import tqdm

from app.play.recorder import read_events
from app.play.session import jpeg_bytes
from engine.action import Action
from engine.engine import Engine
from engine.scheduler import Scheduler
from world.suite import SuiteError, load_suite

DEFAULT_TRACE = Path(__file__).resolve().parents[1] / "assets" / "eval" / "doom-minute.json"


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile of ``values`` by rank (no interpolation); 0 for no values."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


def load_trace(path: str | Path, episode: int = 0) -> list[Action]:
    """The actions of an eval suite's episode (``.json``) or of a recording (``.actions.jsonl``)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"--trace {path}: no such file")
    if path.suffix == ".jsonl":
        actions = [Action.of(*e["buttons"]) for e in read_events(path) if e.get("event", "step") == "step"]
    else:
        try:
            suite = load_suite(path)
        except SuiteError as e:
            raise ValueError(f"--trace {path}: {e}") from None
        if not 0 <= episode < len(suite.episodes):
            raise ValueError(f"--trace {path}: episode {episode} of {len(suite.episodes)}")
        actions = suite.episodes[episode].action_list()
    if not actions:
        raise ValueError(f"--trace {path}: no actions")
    return actions


def held_fraction(actions: list[Action]) -> float:
    """Share of frames whose action equals the previous frame's (the ceiling of acceptance)."""
    same = sum(a == b for a, b in itertools.pairwise(actions))
    return same / max(1, len(actions) - 1)


def bench_sessions(engine: Engine, sessions: int, warmup: int, frames: int, seed: int,
                   actions: Callable[[int, int], list[Action]], rounds: int = 5) -> dict[str, Any]:
    """One rollout alone vs ``sessions`` together, on ``engine``'s runner (which needs that many
    slots). The two alternate in ``rounds`` blocks, so a machine whose speed drifts during the
    run (shared VMs do, by 20-30%) biases neither. ``actions(n, seed)`` makes each action stream."""
    sched = Scheduler.of(engine)
    rollouts = [engine] + [sched.join() for _ in range(sessions - 1)]
    scripts = [actions(warmup + frames, seed + i) for i in range(sessions)]
    groups = {"one": [rollouts[0]], "many": rollouts}
    ticks = {"one": 0, "many": 0}
    wall = {"one": 0.0, "many": 0.0}
    per_tick: dict[str, list[float]] = {"one": [], "many": []}
    for i, r in enumerate(rollouts):
        r.reset(seed + i)
    for t in range(warmup):  # (the lone rollout is the first of the group: it warms up with it)
        sched.step([(r, scripts[i][t]) for i, r in enumerate(rollouts)])
    bar = tqdm(total=2 * frames, desc=f"1 vs {sessions} sessions", unit="tick", file=sys.stderr, disable=None,
               leave=False)
    for block in range(rounds):
        n = frames * (block + 1) // rounds - frames * block // rounds
        for name, group in groups.items():
            for _ in range(n):
                t = warmup + ticks[name]
                t0 = time.perf_counter()
                for f in sched.step([(r, scripts[i][t % len(scripts[i])]) for i, r in enumerate(group)]):
                    jpeg_bytes(f.rgb)
                dt = time.perf_counter() - t0
                wall[name] += dt
                per_tick[name].append(dt * 1e3)
                ticks[name] += 1
                bar.update()
    bar.close()
    out = {name: {"sessions": len(groups[name]), "aggregate_fps": len(groups[name]) * ticks[name] / wall[name],
                  "per_session_fps": ticks[name] / wall[name], "tick_ms_p50": statistics.median(per_tick[name]),
                  "tick_ms_p95": percentile(per_tick[name], 0.95)} for name in groups}
    ratio = out["many"]["aggregate_fps"] / out["one"]["aggregate_fps"]
    return {**out, "rounds": rounds, "batch_invariant": engine.runner.batch_invariant,
            "ratio_to_one": ratio, "ratio_to_n_times_one": ratio / sessions}


def _realtime(sched: Scheduler, engine: Engine, trace: list[Action], fps: float, seed: int, warmup: int,
              desc: str) -> dict[str, Any]:
    """Replay ``trace`` at ``fps``: latency per tick, drafting between ticks when it fits."""
    engine.reset(seed)
    for a in trace[:warmup]:
        sched.step([(engine, a)])
    engine.cancel_drafts()
    stats0 = dict(sched.stats.as_dict())
    period = 1.0 / fps
    latency: list[float] = []
    late = 0
    trace = trace[warmup:]
    start = next_t = time.perf_counter()
    for action in tqdm(trace, desc=desc, unit="frame", file=sys.stderr, disable=None, leave=False):
        now = time.perf_counter()
        if now < next_t:
            time.sleep(next_t - now)
        due = next_t  # the input is read now; a draft that ran over makes this tick late
        late += time.perf_counter() > due + period / 2
        frame = sched.step([(engine, action)])[0]
        jpeg_bytes(frame.rgb)
        latency.append((time.perf_counter() - due) * 1e3)
        next_t = max(next_t + period, time.perf_counter())  # as the play server: behind, it slips
        while sched.speculate and time.perf_counter() < next_t:  # idle time: draft the held action
            if not sched.draft([engine]):
                break
    wall = time.perf_counter() - start
    s = sched.stats.as_dict()
    delta = {k: s[k] - stats0[k] for k in ("frames", "generated", "drafted", "accepted", "discarded")}
    resolved = delta["accepted"] + delta["discarded"]
    return {"frames": len(trace), "fps_delivered": len(trace) / wall, "latency_ms_p50": percentile(latency, 0.5),
            "latency_ms_p95": percentile(latency, 0.95), "latency_ms_mean": statistics.fmean(latency),
            "acceptance": delta["accepted"] / resolved if resolved else 0.0, "late_ticks": late,
            "model_frames_per_frame": (delta["generated"] + delta["drafted"]) / max(1, len(trace)), **delta}


def bench_speculation(engine: Engine, k: int, trace: list[Action], fps: float, seed: int, warmup: int,
                      hold: int = 1) -> dict[str, Any]:
    """The trace in real time without, then with, speculation (``k`` drafts ahead) on one runner
    (built with spare_frames >= k + 1)."""
    off = _realtime(Scheduler.of(engine), engine, trace, fps, seed, warmup, "no speculation")
    on = _realtime(Scheduler.of(engine, speculate=k, hold=hold), engine, trace, fps, seed, warmup,
                   f"speculate {k}")
    return {"k": k, "hold": hold, "fps_target": fps, "trace_frames": len(trace) - warmup,
            "held_fraction": held_fraction(trace[warmup:]), "off": off, "on": on,
            "latency_p50_ratio": on["latency_ms_p50"] / off["latency_ms_p50"] if off["latency_ms_p50"] else 0.0}


def format_scheduler(r: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    if "sessions" in r:
        s = r["sessions"]
        n = s["many"]["sessions"]
        lines += [f"  sessions: 1 alone {s['one']['aggregate_fps']:.1f} FPS; {n} together "
                  f"{s['many']['aggregate_fps']:.1f} FPS aggregate, {s['many']['per_session_fps']:.1f} per session "
                  f"(tick p50/p95 {s['many']['tick_ms_p50']:.0f}/{s['many']['tick_ms_p95']:.0f} ms); "
                  f"{s['ratio_to_one']:.2f}x one session = {s['ratio_to_n_times_one']:.2f} of {n} x one"]
    if "speculation" in r:
        p = r["speculation"]
        lines.append(f"  speculation: k={p['k']} hold={p['hold']}, {p['trace_frames']} frames of trace in real time at "
                     f"{p['fps_target']:.1f} FPS ({p['held_fraction']:.0%} of frames repeat the previous action)")
        lines.append("  | run | input-to-frame p50 / p95 ms | FPS delivered | late ticks | acceptance "
                     "| model frames per frame |")
        lines.append("  |---|---|---|---|---|---|")
        for name in ("off", "on"):
            x = p[name]
            lines.append(f"  | {name} | {x['latency_ms_p50']:.1f} / {x['latency_ms_p95']:.1f} "
                         f"| {x['fps_delivered']:.1f} | {x['late_ticks']} | {x['acceptance']:.0%} "
                         f"| {x['model_frames_per_frame']:.2f} |")
    return lines
