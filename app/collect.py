"""``worldstream collect``: play Doom with the exploration policy and write training shards.

Episode i plays map ``maps[i % len(maps)]`` with game seed ``seed * 100_000 + i``; eval-suite
seeds live at and above ``EVAL_SEED_BASE``, so training data never replays an eval episode.
Resumable: a second run with the same arguments keeps the indexed shards and plays the rest.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from engine.action import BUTTONS
from world.doom import FPS, DoomSpec
from world.maps import DEFAULT_MAPS
from world.policy import explore
from world.shards import append_index, clean, write_shard

EVAL_SEED_BASE = 1_000_000_000
SEEDS_PER_RUN = 100_000


@dataclass(frozen=True)
class CollectArgs:
    episodes: int
    seconds: float
    seed: int
    out: str
    maps: tuple[str, ...] = DEFAULT_MAPS
    workers: int = 1
    skill: int = 3
    wad: str = "freedoom2"

    def __post_init__(self) -> None:
        if self.episodes < 1:
            raise ValueError("--episodes must be >= 1")
        if not 0 < self.seconds <= 3600:
            raise ValueError("--seconds must be in (0, 3600]")
        if self.episodes > SEEDS_PER_RUN:
            raise ValueError(f"--episodes must be <= {SEEDS_PER_RUN}")
        if not 0 <= self.seed < EVAL_SEED_BASE // SEEDS_PER_RUN:
            raise ValueError(f"--seed must be in [0, {EVAL_SEED_BASE // SEEDS_PER_RUN}) "
                             "(higher game seeds are reserved for eval suites)")
        if not 1 <= self.workers <= 64:
            raise ValueError("--workers must be in 1..64")
        if not self.maps:
            raise ValueError("--maps must name at least one map")
        for m in self.maps:
            DoomSpec(self.wad, m, self.skill, 0)  # raises a clear error for a bad map/skill/wad


def play_episode(folder: str, episode: int, spec: DoomSpec, steps: int) -> dict[str, Any]:
    """Worker: play one episode with the exploration policy and write its shard."""
    start = time.perf_counter()
    run = explore(spec, steps)
    actions = np.array([[0] * len(BUTTONS)] + [a.to_multi_hot() for a in run.actions], np.uint8)
    meta = {"wad": spec.wad, "map": spec.map, "skill": spec.skill, "seed": spec.seed,
            "terminated": run.terminated, "stuck_frames": run.stuck_frames,
            "play_seconds": time.perf_counter() - start}
    return write_shard(Path(folder), episode, run.frames, actions, meta)


def _play(job: tuple[str, int, DoomSpec, int]) -> dict[str, Any]:
    return play_episode(*job)


def _raise_exit(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def _worker_signals() -> None:
    """Workers leave Ctrl-C to the parent, which stops them all (no traceback from each), and
    end on its SIGTERM through their ``finally`` blocks: the game is a process of its own
    (vizdoom), left running, orphaned, unless closed."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _raise_exit)


@contextmanager
def _term_is_exit() -> Iterator[None]:
    """SIGTERM ends the parent through its ``with`` blocks, so the pool's workers are stopped
    with it (a killed parent used to leave them running, orphaned)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    previous = signal.signal(signal.SIGTERM, _raise_exit)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _check_writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise ValueError(f"--out {folder}: not writable ({e.strerror or e})") from None


def run_collect(args: CollectArgs) -> dict[str, Any]:
    folder = Path(args.out)
    _check_writable(folder)
    done = clean(folder)
    have = {row["episode"] for row in done}
    steps = round(args.seconds * FPS)
    todo = [i for i in range(args.episodes) if i not in have]
    specs = {i: DoomSpec(args.wad, args.maps[i % len(args.maps)], args.skill, args.seed * SEEDS_PER_RUN + i)
             for i in todo}
    start = time.perf_counter()
    new_frames = 0
    bar = tqdm(total=args.episodes, initial=len(have), desc="collect", unit="episode", file=sys.stderr)
    jobs = [(str(folder), i, specs[i], steps) for i in todo]
    # Pool, not ProcessPoolExecutor: leaving its block terminates the workers (Ctrl-C, SIGTERM, an
    # error), where the executor waited for every queued episode to be played first
    with _term_is_exit(), get_context("spawn").Pool(args.workers, initializer=_worker_signals) as pool:
        for row in pool.imap(_play, jobs):
            append_index(folder, row)
            done.append(row)
            new_frames += row["frames"]
            bar.update(1)
            bar.set_postfix(fps=f"{new_frames / (time.perf_counter() - start):.0f}")
        pool.close()  # every episode done: the workers exit on their own, not by SIGTERM (whose
        pool.join()  # SystemExit in an idle worker printed "Exception ignored in atexit callback")
    bar.close()
    wall = time.perf_counter() - start
    stats = summarize(folder, done)
    stats["this_run"] = {"episodes": len(todo), "frames": new_frames, "seconds": wall,
                         "frames_per_second": new_frames / wall if wall > 0 else 0.0, "workers": args.workers}
    (folder / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    return stats


def summarize(folder: Path, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Action histogram, stuck share and size of the data indexed in ``folder``."""
    from world.shards import load_shard

    buttons = np.zeros(len(BUTTONS))
    combos: Counter[str] = Counter()
    frames = steps = 0
    for row in rows:
        _, actions = load_shard(folder, row)
        acts = actions[1:]
        frames += len(actions)
        steps += len(acts)
        buttons += acts.sum(0)
        combos.update("+".join(b for b, on in zip(BUTTONS, a, strict=True) if on) or "noop" for a in acts)
    total_bytes = sum(row["bytes"] for row in rows)
    hours = frames / FPS / 3600
    return {
        "episodes": len(rows),
        "frames": frames,
        "hours_of_gameplay": hours,
        "bytes": total_bytes,
        "bytes_per_hour": total_bytes / hours if hours else 0.0,
        "button_share": {b: float(n / max(steps, 1)) for b, n in zip(BUTTONS, buttons, strict=True)},
        "top_actions": {k: v / max(steps, 1) for k, v in combos.most_common(12)},
        "stuck_share": sum(r["stuck_frames"] for r in rows) / max(steps, 1),
        "terminated_episodes": sum(bool(r["terminated"]) for r in rows),
        "maps": dict(Counter(r["map"] for r in rows)),
        "cpu_count": os.cpu_count(),
    }
