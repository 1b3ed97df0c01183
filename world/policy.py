"""Exploration policy for collecting world-model data.

Players hold keys: each chosen action is held for a random number of frames. The mix is mostly
forward and turning, with strafing, some backing up, attacks and uses. When the player has
meant to move but has barely moved for a while (a wall, a ledge), it is *stuck*: the policy
backs off and turns away for a moment. Stuck frames (a move key held, the player did not move
since the previous frame) are counted, so data reports can say how much of the data shows the
player pushing against a wall.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from engine.action import Action
from world.doom import DoomEnv, DoomSpec

# (weight, buttons) of the held actions.
MIX: tuple[tuple[float, tuple[str, ...]], ...] = (
    (0.30, ("forward",)),
    (0.12, ("forward", "turn_left")),
    (0.12, ("forward", "turn_right")),
    (0.06, ("turn_left",)),
    (0.06, ("turn_right",)),
    (0.05, ("strafe_left",)),
    (0.05, ("strafe_right",)),
    (0.04, ("forward", "strafe_left")),
    (0.04, ("forward", "strafe_right")),
    (0.04, ("backward",)),
    (0.06, ("forward", "attack")),
    (0.03, ("attack",)),
    (0.03, ("forward", "use")),
)
MOVES = frozenset({"forward", "backward", "strafe_left", "strafe_right"})


@dataclass
class ExplorePolicy:
    seed: int
    min_hold: int = 3  # frames
    max_hold: int = 24
    stuck_window: int = 10  # frames over which progress is measured
    stuck_distance: float = 12.0  # map units: less than this while moving = stuck
    escape_frames: tuple[int, int] = (6, 16)
    _rng: np.random.Generator = field(init=False, repr=False)
    _current: Action = field(init=False, repr=False)
    _left: int = field(init=False, repr=False, default=0)
    _escaping: int = field(init=False, repr=False, default=0)
    _trail: deque = field(init=False, repr=False)
    stuck_frames: int = field(init=False, default=0)  # move held, no movement since last frame
    frames: int = field(init=False, default=0)
    escapes: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        if not 1 <= self.min_hold <= self.max_hold:
            raise ValueError("need 1 <= min_hold <= max_hold")
        self._rng = np.random.default_rng(self.seed)
        self._current = Action()
        self._trail = deque(maxlen=self.stuck_window)
        weights = np.array([w for w, _ in MIX])
        self._p = weights / weights.sum()

    def __call__(self, info: dict) -> Action:
        """The next action, given the env's latest ``info`` (uses ``info["pos"]`` if present)."""
        self.frames += 1
        if "pos" in info:
            moved = math.dist(self._trail[-1], info["pos"]) if self._trail else math.inf
            if moved < 0.5 and set(self._current.names) & MOVES:
                self.stuck_frames += 1
            self._trail.append(info["pos"])
        if self._escaping > 0:
            self._escaping -= 1
            return self._current
        if self._is_stuck():
            self.escapes += 1
            self._trail.clear()
            self._escaping = int(self._rng.integers(*self.escape_frames))
            turn = "turn_left" if self._rng.random() < 0.5 else "turn_right"
            self._current = Action.of("backward", turn) if self._rng.random() < 0.5 else Action.of(turn)
            return self._current
        if self._left <= 0:
            buttons = MIX[int(self._rng.choice(len(MIX), p=self._p))][1]
            self._current = Action.of(*buttons)
            self._left = int(self._rng.integers(self.min_hold, self.max_hold + 1))
            self._trail.clear()  # progress is measured under the action being held
            if "pos" in info:
                self._trail.append(info["pos"])
        self._left -= 1
        return self._current

    def _is_stuck(self) -> bool:
        if len(self._trail) < self.stuck_window or not (set(self._current.names) & MOVES):
            return False
        (x0, y0), (x1, y1) = self._trail[0], self._trail[-1]
        return math.hypot(x1 - x0, y1 - y0) < self.stuck_distance


@dataclass(frozen=True)
class Exploration:
    """One episode played by the policy."""

    frames: np.ndarray  # (T + 1, H, W, 3) uint8: x_0..x_T
    actions: list[Action]  # a_1..a_T
    terminated: bool  # the episode ended early (death, exit)
    stuck_frames: int


def explore(spec: DoomSpec, steps: int) -> Exploration:
    """Play up to ``steps`` frames of ``spec`` with ``ExplorePolicy(seed=spec.seed)``."""
    env, policy = DoomEnv(spec), ExplorePolicy(seed=spec.seed)
    try:
        frame, info = env.reset()
        frames, actions, terminated = [frame], [], False
        for _ in range(steps):
            actions.append(policy(info))
            frame, _, terminated, _, info = env.step(actions[-1])
            frames.append(frame)
            if terminated:
                break
    finally:
        env.close()
    return Exploration(np.stack(frames), actions, terminated, policy.stuck_frames)
