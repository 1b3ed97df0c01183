"""Render the shipped start scenes (assets/scenes/) from ViZDoom: the exploration policy plays a
few seconds of each map and the last K frames become the scene. Deterministic: the same
arguments write the same files.

    .venv/bin/python scripts/make_scenes.py --out assets/scenes
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np
from PIL import Image

from app.scenes import FORMAT, INDEX
from world.doom import DoomSpec
from world.policy import explore

SCENES = {"map01": "MAP01", "map03": "MAP03", "map05": "MAP05", "map07": "MAP07", "map12": "MAP12"}
SEED = 424_242  # game seed of every scene (scenes are starting points, not eval data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="assets/scenes")
    parser.add_argument("--frames", type=int, default=16, help="K frames per scene")
    parser.add_argument("--warmup", type=int, default=40, help="frames played before the scene starts")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    index = {}
    for name, game_map in SCENES.items():
        spec = DoomSpec("freedoom2", game_map, 3, SEED)
        run = explore(spec, args.warmup + args.frames - 1)
        frames = np.asarray(run.frames[-args.frames:])
        actions = run.actions[-(args.frames - 1):]
        file = out / f"{name}.png"
        Image.fromarray(frames.reshape(-1, frames.shape[2], 3)).save(file, optimize=True)
        index[name] = {"file": file.name, "sha256": hashlib.sha256(file.read_bytes()).hexdigest(),
                       "frames": args.frames, "height": int(frames.shape[1]), "width": int(frames.shape[2]),
                       "actions": [list(a.names) for a in actions], "wad": spec.wad, "map": game_map,
                       "skill": spec.skill, "seed": SEED, "warmup_frames": args.warmup}
        print(f"{file}: {game_map}, {args.frames} frames, {file.stat().st_size / 1024:.0f} KiB")
    (out / INDEX).write_text(json.dumps({"format": FORMAT, "version": 1, "scenes": index}, indent=1) + "\n")


if __name__ == "__main__":
    main()
