"""The Doom world: a gymnasium environment over ViZDoom with Freedoom 2 (BSD-3, in the wheel).

160x120 RGB, frame skip 2 (17.5 frames per second of game time), 8-button multi-hot actions
(``engine.action.Action``, the same type the engine and the app use).

Convention (as everywhere in worldstream): ``reset()`` returns x_0; ``step(a_t)`` applies a_t
for ``FRAME_SKIP`` tics and returns x_t. An episode is reproducible from
(wad, map, skill, seed, actions): same inputs, identical frames.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np

from engine.action import NUM_BUTTONS, Action

FRAME_SKIP = 2
FPS = 35.0 / FRAME_SKIP  # Doom runs 35 tics per second
HEIGHT, WIDTH = 120, 160
WADS = ("freedoom2", "freedoom1")


@dataclass(frozen=True)
class DoomSpec:
    """What fixes an episode, besides its actions."""

    wad: str = "freedoom2"
    map: str = "MAP01"
    skill: int = 3  # 1 (easiest) .. 5
    seed: int = 0

    def __post_init__(self) -> None:
        if self.wad not in WADS:
            raise ValueError(f"wad must be one of {WADS}, got {self.wad!r}")
        if not 1 <= self.skill <= 5:
            raise ValueError(f"skill must be in 1..5, got {self.skill}")
        if not 0 <= self.seed < 2**31:
            raise ValueError(f"seed must be in [0, 2**31), got {self.seed}")
        valid = self.map.startswith("MAP") if self.wad == "freedoom2" else self.map.startswith("E")
        if not valid:
            raise ValueError(f"map {self.map!r} is not a {self.wad} map (freedoom2: MAP01..MAP32, "
                             "freedoom1: E1M1..E4M9)")


def _import_vizdoom() -> Any:
    try:
        import vizdoom
    except ImportError:
        raise RuntimeError("the Doom world needs ViZDoom: pip install vizdoom") from None
    return vizdoom


class DoomEnv(gym.Env):
    """gymnasium env; observations (120, 160, 3) uint8, actions ``Action`` or 8 values in {0, 1}.

    ``info`` carries the player's position (x, y), view angle and health, which the exploration
    policy uses to notice it is stuck.
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["rgb_array"], "render_fps": FPS}

    def __init__(self, spec: DoomSpec | None = None) -> None:
        self.doom = spec or DoomSpec()
        self.observation_space = gym.spaces.Box(0, 255, (HEIGHT, WIDTH, 3), np.uint8)
        self.action_space = gym.spaces.MultiBinary(NUM_BUTTONS)
        self._game: Any = None
        self._last = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
        self._info: dict[str, Any] = {}

    def _make_game(self) -> Any:
        vzd = _import_vizdoom()
        game = vzd.DoomGame()
        game.set_doom_game_path(os.path.join(os.path.dirname(vzd.__file__), f"{self.doom.wad}.wad"))
        game.set_doom_map(self.doom.map)
        game.set_doom_skill(self.doom.skill)
        game.set_screen_resolution(vzd.ScreenResolution.RES_160X120)
        game.set_screen_format(vzd.ScreenFormat.RGB24)
        game.set_window_visible(False)
        game.set_sound_enabled(False)
        game.set_mode(vzd.Mode.PLAYER)
        game.set_episode_timeout(0)
        b = vzd.Button
        # Order must match engine.action.BUTTONS.
        game.set_available_buttons([b.MOVE_FORWARD, b.MOVE_BACKWARD, b.MOVE_LEFT, b.MOVE_RIGHT,
                                    b.TURN_LEFT, b.TURN_RIGHT, b.ATTACK, b.USE])
        v = vzd.GameVariable
        game.set_available_game_variables([v.POSITION_X, v.POSITION_Y, v.ANGLE, v.HEALTH])
        game.set_seed(self.doom.seed)
        game.init()
        return game

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start the episode; ``seed`` overrides the spec's seed. Returns (x_0, info)."""
        super().reset(seed=seed)
        if seed is not None and seed != self.doom.seed:
            self.doom = DoomSpec(self.doom.wad, self.doom.map, self.doom.skill, seed)
            self.close()
        if self._game is None:
            self._game = self._make_game()
        self._game.set_seed(self.doom.seed)
        self._game.new_episode()
        return self._observe(), dict(self._info)

    def step(self, action: Action | Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Apply a_t for FRAME_SKIP tics; returns (x_t, reward, terminated, truncated, info).

        When the episode ends (death or map exit) x_t repeats the last rendered frame."""
        if self._game is None:
            raise RuntimeError("call reset() before step()")
        buttons = action if isinstance(action, Action) else Action.from_multi_hot(np.asarray(action).tolist())
        reward = float(self._game.make_action([int(x) for x in buttons.buttons], FRAME_SKIP))
        terminated = bool(self._game.is_episode_finished())
        return self._observe(), reward, terminated, False, dict(self._info)

    def _observe(self) -> np.ndarray:
        state = self._game.get_state()
        if state is not None:
            self._last = np.ascontiguousarray(state.screen_buffer)
            x, y, angle, health = (float(g) for g in state.game_variables)
            self._info = {"pos": (x, y), "angle": angle, "health": health}
        return self._last.copy()

    def render(self) -> np.ndarray:
        return self._last.copy()

    def close(self) -> None:
        if self._game is not None:
            self._game.close()
            self._game = None


def rollout(spec: DoomSpec, actions: list[Action]) -> np.ndarray:
    """Frames x_0..x_T for actions a_1..a_T: (T + 1, 120, 160, 3) uint8."""
    env = DoomEnv(spec)
    try:
        first, _ = env.reset()
        frames = [first]
        for a in actions:
            frames.append(env.step(a)[0])
        return np.stack(frames)
    finally:
        env.close()
