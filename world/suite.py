"""Eval suites: held-out Doom episodes stored as inputs, not pixels.

An episode is (wad, map, skill, seed, actions run-length encoded, context_frames); its ground
truth is rendered again on demand and verified against a sha256 of all its frames. Action runs
are ``[bitmask, count]`` with bit i = ``engine.action.BUTTONS[i]``; they hold a_1..a_T.

File format (JSON)::

    {"format": "worldstream-eval-suite", "version": 1, "name": ..., "fps": 17.5,
     "episodes": [{"name", "split", "wad", "map", "skill", "seed", "context_frames",
                   "frames", "sha256", "actions": [[bitmask, count], ...]}, ...]}
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engine.action import BUTTONS, Action
from engine.files import read_json_doc
from world.doom import FPS, DoomSpec, rollout
from world.policy import explore

FORMAT = "worldstream-eval-suite"
VERSION = 1


class SuiteError(ValueError):
    """An eval suite file is malformed, or its ground truth does not render as recorded."""


def encode_actions(actions: list[Action]) -> list[list[int]]:
    runs: list[list[int]] = []
    for a in actions:
        mask = sum(1 << i for i, on in enumerate(a.buttons) if on)
        if runs and runs[-1][0] == mask:
            runs[-1][1] += 1
        else:
            runs.append([mask, 1])
    return runs


def decode_actions(runs: list[list[int]]) -> list[Action]:
    out: list[Action] = []
    for run in runs:
        if (not isinstance(run, list) or len(run) != 2 or not all(isinstance(v, int) for v in run)
                or not 0 <= run[0] < 2 ** len(BUTTONS) or run[1] < 1):
            raise SuiteError(f"bad action run {run!r}: expected [bitmask 0..255, count >= 1]")
        out += [Action(tuple(bool(run[0] >> i & 1) for i in range(len(BUTTONS))))] * run[1]
    return out


def frames_digest(frames: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(frames, dtype=np.uint8).tobytes()).hexdigest()


@dataclass(frozen=True)
class EvalEpisode:
    name: str
    split: str  # "held-out-seed" (a training map, unseen seed) | "unseen-map"
    wad: str
    map: str
    skill: int
    seed: int
    context_frames: int  # x_0..x_{K-1} are given to the predictor
    frames: int  # T + 1 frames in all
    sha256: str  # of all T + 1 frames, uint8, row-major
    actions: tuple[tuple[int, int], ...]  # RLE of a_1..a_T

    @property
    def spec(self) -> DoomSpec:
        return DoomSpec(self.wad, self.map, self.skill, self.seed)

    def action_list(self) -> list[Action]:
        return decode_actions([list(r) for r in self.actions])

    def render(self, frames: int | None = None) -> np.ndarray:
        """Ground truth x_0..x_{n-1} (n = ``frames`` or all); all frames are checked against
        the stored checksum, so a ViZDoom that renders differently fails loudly."""
        all_frames = rollout(self.spec, self.action_list())
        if frames_digest(all_frames) != self.sha256:
            raise SuiteError(f"episode {self.name}: ground truth does not match its checksum "
                             "(a different ViZDoom version or WAD?)")
        return all_frames if frames is None else all_frames[:frames]


@dataclass(frozen=True)
class EvalSuite:
    name: str
    fps: float
    episodes: tuple[EvalEpisode, ...]

    def to_json(self) -> str:
        doc = {"format": FORMAT, "version": VERSION, "name": self.name, "fps": self.fps,
               "episodes": [{**asdict(e), "actions": [list(r) for r in e.actions]} for e in self.episodes]}
        return json.dumps(doc, indent=1) + "\n"


def load_suite(path: str | Path) -> EvalSuite:
    file = Path(path)
    if not file.is_file():
        raise SuiteError(f"{file}: suite file not found")
    doc = read_json_doc(file, "worldstream eval suite", FORMAT, VERSION, SuiteError)
    episodes = []
    for i, e in enumerate(doc.get("episodes", [])):
        try:
            ep = EvalEpisode(**{**e, "actions": tuple(tuple(r) for r in e["actions"])})
            DoomSpec(ep.wad, ep.map, ep.skill, ep.seed)
            n_actions = len(decode_actions([list(r) for r in e["actions"]]))
        except (TypeError, KeyError, ValueError) as err:
            raise SuiteError(f"{file}: episode {i}: {err}") from None
        if n_actions != ep.frames - 1 or not 1 <= ep.context_frames < ep.frames:
            raise SuiteError(f"{file}: episode {i}: {n_actions} actions, {ep.frames} frames and "
                             f"{ep.context_frames} context frames do not fit together")
        episodes.append(ep)
    if not episodes:
        raise SuiteError(f"{file}: no episodes")
    return EvalSuite(str(doc.get("name", file.stem)), float(doc.get("fps", FPS)), tuple(episodes))


def make_episode(name: str, split: str, spec: DoomSpec, seconds: float, context_frames: int,
                 tries: int = 50) -> EvalEpisode:
    """Play the exploration policy from successive seeds until the player survives the whole
    episode (eval episodes must last their full length)."""
    steps = context_frames - 1 + round(seconds * FPS)
    for k in range(tries):
        s = DoomSpec(spec.wad, spec.map, spec.skill, spec.seed + k)
        run = explore(s, steps)
        if not run.terminated:
            runs = encode_actions(run.actions)
            return EvalEpisode(name, split, s.wad, s.map, s.skill, s.seed, context_frames, len(run.frames),
                               frames_digest(run.frames), tuple(tuple(r) for r in runs))
    raise RuntimeError(f"{spec.map}: no seed in {tries} tries survives {seconds} s")


def episode_row(ep: EvalEpisode) -> dict[str, Any]:
    return {"name": ep.name, "split": ep.split, "map": ep.map, "seed": ep.seed, "skill": ep.skill}
