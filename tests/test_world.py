"""The Doom world: env conventions and determinism, exploration policy, shards and collection."""

from __future__ import annotations

import json
import os
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest

from app.collect import EVAL_SEED_BASE, CollectArgs, run_collect
from engine.action import Action
from world.doom import FPS, DoomEnv, DoomSpec, rollout
from world.policy import ExplorePolicy
from world.shards import INDEX, clean, load_shard, read_index, write_shard


def test_env_is_deterministic_and_follows_the_convention() -> None:
    spec = DoomSpec(map="MAP01", seed=7)
    policy = ExplorePolicy(seed=3)
    env = DoomEnv(spec)
    x0, info = env.reset()
    actions = []
    for _ in range(120):
        actions.append(policy(info))
        info = env.step(actions[-1])[4]
    env.close()
    a = rollout(spec, actions)
    b = rollout(spec, actions)
    assert a.shape == (121, 120, 160, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)  # same (wad, map, skill, seed, actions) -> same frames
    assert np.array_equal(a[0], x0)  # reset() gives x_0
    assert not np.array_equal(rollout(DoomSpec(map="MAP01", seed=8), actions), a)


def test_actions_change_the_view_as_expected() -> None:
    spec = DoomSpec(map="MAP01", seed=0)
    left = rollout(spec, [Action.of("turn_left")] * 6)
    right = rollout(spec, [Action.of("turn_right")] * 6)
    still = rollout(spec, [Action()] * 6)
    assert np.array_equal(left[0], right[0])  # same x_0
    assert not np.array_equal(left[-1], right[-1])
    assert np.abs(left[-1].astype(int) - still[-1]).mean() > 5
    env = DoomEnv(spec)
    _, info0 = env.reset()
    for _ in range(10):
        *_, info = env.step([1, 0, 0, 0, 0, 0, 0, 0])  # multi-hot works too: forward
    env.close()
    assert np.hypot(info["pos"][0] - info0["pos"][0], info["pos"][1] - info0["pos"][1]) > 20


def test_env_and_spec_errors() -> None:
    with pytest.raises(ValueError, match="skill"):
        DoomSpec(skill=9)
    with pytest.raises(ValueError, match="not a freedoom2 map"):
        DoomSpec(map="E1M1")
    env = DoomEnv()
    with pytest.raises(RuntimeError, match="reset"):
        env.step(Action())
    env.reset()
    with pytest.raises(ValueError):
        env.step([2, 0, 0, 0, 0, 0, 0, 0])
    env.close()


def test_policy_holds_keys_and_escapes_walls() -> None:
    policy = ExplorePolicy(seed=0)
    acts = [policy({"pos": (float(i) * 10, 0.0)}) for i in range(400)]  # always moving
    runs = sum(1 for a, b in pairwise(acts) if a != b) + 1
    assert len(acts) / runs >= policy.min_hold  # actions are held
    assert policy.escapes == 0 and policy.stuck_frames == 0
    assert sum("forward" in a.names for a in acts) > 0.4 * len(acts)
    stuck = ExplorePolicy(seed=0)
    acts = [stuck({"pos": (0.0, 0.0)}) for _ in range(200)]  # against a wall
    assert stuck.escapes > 0 and stuck.stuck_frames > 0
    assert any({"turn_left", "turn_right"} & set(a.names) for a in acts)


def test_shards_are_atomic_and_clean_recovers(tmp_path: Path) -> None:
    frames = np.random.default_rng(0).integers(0, 255, (5, 120, 160, 3), dtype=np.uint8)
    actions = np.zeros((5, 8), np.uint8)
    row = write_shard(tmp_path, 0, frames, actions, {"map": "MAP01"})
    (tmp_path / INDEX).write_text(json.dumps(row) + "\n" + '{"file": "shards/ep0000')  # torn line
    (tmp_path / "shards" / "ep000001.tmp.npz").write_bytes(b"partial")  # killed mid-write
    (tmp_path / "shards" / "ep000002.npz").write_bytes(b"never indexed")
    kept = clean(tmp_path)
    assert [r["file"] for r in kept] == [row["file"]]
    assert sorted(p.name for p in (tmp_path / "shards").iterdir()) == ["ep000000.npz"]
    got, acts = load_shard(tmp_path, kept[0], verify=True)
    assert np.array_equal(got, frames) and np.array_equal(acts, actions)
    with pytest.raises(ValueError, match="bad shard"):
        write_shard(tmp_path, 3, frames.astype(np.float32), actions, {})


def test_collect_writes_resumes_and_is_deterministic(tmp_path: Path) -> None:
    args = CollectArgs(episodes=2, seconds=1.0, seed=3, out=str(tmp_path), maps=("MAP01", "MAP02"))
    stats = run_collect(args)
    rows = read_index(tmp_path)
    assert [r["map"] for r in rows] == ["MAP01", "MAP02"]
    assert all(r["frames"] == round(FPS) + 1 and r["seed"] < EVAL_SEED_BASE for r in rows)
    assert stats["episodes"] == 2 and 0 <= stats["stuck_share"] < 1
    assert abs(sum(stats["top_actions"].values()) - 1) < 1e-6 or len(stats["top_actions"]) == 12
    frames, actions = load_shard(tmp_path, rows[0], verify=True)
    assert frames.shape == (round(FPS) + 1, 120, 160, 3) and not actions[0].any() and actions[1:].any(axis=1).all()
    # Resume: nothing to do; after losing a shard, it is replayed bit-identically.
    assert run_collect(args)["this_run"]["episodes"] == 0
    (tmp_path / rows[1]["file"]).unlink()
    assert run_collect(args)["this_run"]["episodes"] == 1
    assert read_index(tmp_path)[1]["sha256"] == rows[1]["sha256"]


def test_collect_argument_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--episodes"):
        CollectArgs(episodes=0, seconds=1, seed=0, out=str(tmp_path))
    with pytest.raises(ValueError, match="reserved for eval"):
        CollectArgs(episodes=1, seconds=1, seed=10**6, out=str(tmp_path))
    with pytest.raises(ValueError, match="not a freedoom2 map"):
        CollectArgs(episodes=1, seconds=1, seed=0, out=str(tmp_path), maps=("E1M1",))
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ValueError, match="not writable"):
        run_collect(CollectArgs(episodes=1, seconds=1, seed=0, out=str(blocker / "sub")))


def test_killed_collect_leaves_a_consistent_index_and_resumes(tmp_path: Path) -> None:
    """SIGKILL a real `worldstream collect` mid-run: every indexed shard verifies, and the
    same command then finishes the job."""
    import signal
    import subprocess
    import sys
    import time

    cmd = [sys.executable, "-m", "app.cli", "collect", "--episodes", "8", "--seconds", "4", "--seed", "5",
           "--out", str(tmp_path), "--maps", "MAP01"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(read_index(tmp_path)) < 2:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the parent and its workers, mid-episode
    proc.wait()
    rows = read_index(tmp_path)
    assert 2 <= len(rows) < 8
    for row in rows:
        load_shard(tmp_path, row, verify=True)
    assert subprocess.run(cmd, capture_output=True).returncode == 0
    rows = read_index(tmp_path)
    assert sorted(r["episode"] for r in rows) == list(range(8))
    assert all(load_shard(tmp_path, r, verify=True)[0].shape[0] == r["frames"] for r in rows)


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_a_stopped_collect_stops_its_workers(tmp_path: Path, sig: str) -> None:
    """SIGTERM or Ctrl-C to `worldstream collect --workers 2` ends its worker processes and their
    games (vizdoom runs as a process of its own) too: they were left running, orphaned."""
    import signal
    import subprocess
    import sys
    import time

    cmd = [sys.executable, "-m", "app.cli", "collect", "--episodes", "40", "--seconds", "4", "--seed", "5",
           "--out", str(tmp_path), "--maps", "MAP01", "--workers", "2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))

    def children(pid: int) -> set[int]:  # all descendants
        out: set[int] = set()
        for task in Path(f"/proc/{pid}/task").glob("*"):
            for c in (task / "children").read_text().split():
                out |= {int(c)} | children(int(c))
        return out

    def games(pids: set[int]) -> list[int]:
        return [p for p in pids if Path(f"/proc/{p}/cmdline").read_bytes().split(b"\0")[0].endswith(b"vizdoom")]

    deadline = time.monotonic() + 60
    workers: set[int] = set()
    while time.monotonic() < deadline and not (read_index(tmp_path) and len(games(workers)) == 2):
        time.sleep(0.05)  # episodes are being written, both workers have a game running
        workers = children(proc.pid)
    assert len(games(workers)) == 2 and read_index(tmp_path)
    proc.send_signal(getattr(signal, sig))
    assert proc.wait(timeout=30) != 0
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(Path(f"/proc/{w}").exists() for w in workers):
        time.sleep(0.05)
    assert not [w for w in workers if Path(f"/proc/{w}").exists()]
    assert len(read_index(tmp_path)) < 40


def test_the_engine_knows_no_game() -> None:
    """Nothing in engine/ imports the Doom game (world/), evaluation (eval/) or the app."""
    import ast

    root = Path(__file__).parents[1] / "engine"
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            for name in names:
                assert name.split(".")[0] not in {"world", "eval", "app", "train", "vizdoom"}, (path, name)
