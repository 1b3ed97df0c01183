"""Training-data shards: one compressed ``.npz`` per episode, listed in ``index.jsonl``.

Layout of a data folder::

    DIR/index.jsonl          one JSON object per finished shard (the source of truth)
    DIR/shards/epNNNNNN.npz  frames (T+1, 120, 160, 3) uint8, actions (T+1, 8) uint8
    DIR/stats.json           action histogram, stuck share, throughput (written by collect)

``actions[t]`` is a_t, the action that produced ``frames[t]``; ``actions[0]`` is all zeros
(x_0 has no action). A shard is written to a temporary name and renamed, then its index line
is appended and flushed: a killed run can leave a stray file but never a corrupt shard in the
index, and ``clean`` removes the strays when a run resumes.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from engine.files import read_json_lines

INDEX = "index.jsonl"
SHARDS = "shards"


def shard_name(episode: int) -> str:
    return f"{SHARDS}/ep{episode:06d}.npz"


def write_shard(folder: Path, episode: int, frames: np.ndarray, actions: np.ndarray,
                meta: dict[str, Any]) -> dict[str, Any]:
    """Write one episode atomically; returns its index row (not yet appended)."""
    if frames.dtype != np.uint8 or frames.ndim != 4 or actions.shape != (len(frames), 8):
        raise ValueError(f"bad shard arrays: frames {frames.shape} {frames.dtype}, actions {actions.shape}")
    path = folder / shard_name(episode)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, frames=frames, actions=actions.astype(np.uint8))
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
    os.replace(tmp, path)
    return {"file": shard_name(episode), "episode": episode, "frames": len(frames),
            "bytes": path.stat().st_size, "sha256": digest, **meta}


def append_index(folder: Path, row: dict[str, Any]) -> None:
    with open(folder / INDEX, "a") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_index(folder: Path) -> list[dict[str, Any]]:
    """Rows of ``index.jsonl`` whose shard exists; a torn last line (killed run) is skipped."""
    return [row for row in read_json_lines(folder / INDEX) if (folder / str(row.get("file", ""))).is_file()]


def clean(folder: Path) -> list[dict[str, Any]]:
    """Prepare ``folder`` for a resumed run: keep indexed shards, delete everything else a
    killed run may have left (temporary files, shards that never reached the index), and
    rewrite the index without torn lines. Returns the kept rows."""
    rows = read_index(folder)
    keep = {row["file"] for row in rows}
    shard_dir = folder / SHARDS
    if shard_dir.is_dir():
        for path in shard_dir.iterdir():
            if f"{SHARDS}/{path.name}" not in keep:
                path.unlink()
    if (folder / INDEX).exists():
        tmp = folder / (INDEX + ".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
        os.replace(tmp, folder / INDEX)
    return rows


def load_shard(folder: Path, row: dict[str, Any], verify: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(frames, actions) of one indexed shard; ``verify`` checks its sha256 first."""
    path = folder / row["file"]
    if verify and hashlib.sha256(path.read_bytes()).hexdigest() != row["sha256"]:
        raise ValueError(f"{path}: checksum mismatch (file changed or corrupt)")
    with np.load(path, allow_pickle=False) as data:
        return data["frames"], data["actions"]
