"""The world model as a gymnasium environment: for agents that train in the model's imagination.

``WorldModelEnv``: one rollout. Observation: the RGB frame (H, W, 3) uint8; action: the
8-button multi-hot (``MultiBinary(8)``, or an ``engine.action.Action``); reward 0 (the model
predicts frames, not rewards); never terminates; truncated after ``max_steps``.

``WorldModelVectorEnv``: N rollouts whose frames come from one batched forward per step (the
scheduler), autoreset on the step after a truncation (gymnasium's ``NEXT_STEP`` mode).

Where a rollout starts is the ``start`` callable's business: ``start(engine, seed) -> Frame``
resets the engine (default: a generated first frame; app/world_env.py starts from the shipped
scenes). The engine knows no game, and neither does this file.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from engine.action import NUM_BUTTONS, Action
from engine.engine import Engine
from engine.scheduler import Scheduler
from engine.types import Frame

Start = Callable[[Engine, int], Frame]
MAX_SEED = 2**31 - 1


def generated_start(engine: Engine, seed: int) -> Frame:
    return engine.reset(seed)


def to_action(action: Any) -> Action:
    """An ``Action``, or 8 values in {0, 1}; anything else is a ``ValueError`` naming it."""
    if isinstance(action, Action):
        return action
    values = np.asarray(action)
    if values.shape != (NUM_BUTTONS,) or not np.isin(values, (0, 1)).all():
        raise ValueError(f"an action is {NUM_BUTTONS} values in {{0, 1}} (MultiBinary({NUM_BUTTONS})), "
                         f"got {action!r}")
    return Action.from_multi_hot(int(v) for v in values)


def _spaces(engine: Engine) -> tuple[gym.spaces.Box, gym.spaces.MultiBinary]:
    f = engine.config.frame
    return gym.spaces.Box(0, 255, (f.height, f.width, 3), np.uint8), gym.spaces.MultiBinary(NUM_BUTTONS)


def _info(frame: Frame) -> dict[str, Any]:
    return {"frame": frame.index}


class WorldModelEnv(gym.Env):
    """One rollout of ``engine`` as a gymnasium env (see the module docstring)."""

    metadata: dict[str, Any] = {"render_modes": ["rgb_array"]}  # noqa: RUF012 (gymnasium's convention)

    def __init__(self, engine: Engine, start: Start = generated_start, max_steps: int | None = 1050,
                 render_mode: str | None = "rgb_array") -> None:
        if max_steps is not None and max_steps < 1:
            raise ValueError(f"max_steps must be >= 1 or None, got {max_steps}")
        self.engine, self._start, self.max_steps = engine, start, max_steps
        self.observation_space, self.action_space = _spaces(engine)
        self.metadata = {**self.metadata, "render_fps": engine.config.frame.fps}
        self.render_mode = render_mode
        self._steps = 0
        self._last: np.ndarray | None = None

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        s = seed if seed is not None else int(self.np_random.integers(MAX_SEED))
        frame = self._start(self.engine, s)
        self._steps, self._last = 0, frame.rgb
        return frame.rgb, _info(frame)

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if self._last is None:
            raise RuntimeError("call reset() before step()")
        frame = self.engine.step(to_action(action))
        self._steps += 1
        self._last = frame.rgb
        truncated = self.max_steps is not None and self._steps >= self.max_steps
        return frame.rgb, 0.0, False, truncated, _info(frame)

    def render(self) -> np.ndarray | None:
        return None if self._last is None else self._last.copy()


class WorldModelVectorEnv(VectorEnv):
    """``num_envs`` rollouts on one runner (it needs that many cache slots), stepped together."""

    metadata: dict[str, Any] = {"autoreset_mode": AutoresetMode.NEXT_STEP}  # noqa: RUF012

    def __init__(self, engine: Engine, num_envs: int, start: Start = generated_start,
                 max_steps: int | None = 1050) -> None:
        slots = engine.runner.cache.shape.slots
        if not 1 <= num_envs <= slots:
            raise ValueError(f"num_envs={num_envs}, but the engine's runner has {slots} cache slots "
                             f"(build it with slots={num_envs})")
        if max_steps is not None and max_steps < 1:
            raise ValueError(f"max_steps must be >= 1 or None, got {max_steps}")
        self.scheduler = Scheduler.of(engine)
        self.rollouts = [engine] + [self.scheduler.join() for _ in range(num_envs - 1)]
        self.num_envs, self._start, self.max_steps = num_envs, start, max_steps
        self.single_observation_space, self.single_action_space = _spaces(engine)
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self.metadata = {**self.metadata, "render_fps": engine.config.frame.fps}
        self._steps = np.zeros(num_envs, dtype=np.int64)
        self._needs_reset = np.zeros(num_envs, dtype=bool)
        self._started = False

    def _seeds(self, seed: int | Sequence[int] | None) -> list[int]:
        if seed is None:
            return [int(self.np_random.integers(MAX_SEED)) for _ in range(self.num_envs)]
        if isinstance(seed, int):
            return [seed + i for i in range(self.num_envs)]
        if len(seed) != self.num_envs:
            raise ValueError(f"{len(seed)} seeds for {self.num_envs} envs")
        return [int(s) for s in seed]

    def reset(self, *, seed: int | Sequence[int] | None = None, options: dict[str, Any] | None = None
              ) -> tuple[np.ndarray, dict[str, Any]]:
        if seed is not None:
            self._np_random, _ = gym.utils.seeding.np_random(seed if isinstance(seed, int) else int(seed[0]))
        frames = [self._start(r, s) for r, s in zip(self.rollouts, self._seeds(seed), strict=True)]
        self._steps[:] = 0
        self._needs_reset[:] = False
        self._started = True
        return np.stack([f.rgb for f in frames]), {"frame": np.array([f.index for f in frames])}

    def step(self, actions: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        if not self._started:
            raise RuntimeError("call reset() before step()")
        actions = np.asarray(actions)
        if actions.shape != (self.num_envs, NUM_BUTTONS):
            raise ValueError(f"actions must be ({self.num_envs}, {NUM_BUTTONS}) values in {{0, 1}}, "
                             f"got shape {actions.shape}")
        parsed = [to_action(a) for a in actions]
        frames: list[Frame | None] = [None] * self.num_envs
        for i in np.flatnonzero(self._needs_reset):  # NEXT_STEP autoreset: this step is the reset
            frames[i] = self._start(self.rollouts[i], int(self.np_random.integers(MAX_SEED)))
            self._steps[i] = 0
        stepping = [i for i in range(self.num_envs) if not self._needs_reset[i]]
        made = self.scheduler.step([(self.rollouts[i], parsed[i]) for i in stepping])
        for i, f in zip(stepping, made, strict=True):
            frames[i] = f
            self._steps[i] += 1
        truncated = np.zeros(self.num_envs, dtype=bool)
        if self.max_steps is not None:
            truncated[stepping] = self._steps[stepping] >= self.max_steps
        self._needs_reset = truncated.copy()
        done = [f for f in frames if f is not None]
        return (np.stack([f.rgb for f in done]), np.zeros(self.num_envs), np.zeros(self.num_envs, dtype=bool),
                truncated, {"frame": np.array([f.index for f in done])})
