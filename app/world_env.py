"""The Doom world model as a gymnasium env, starting from a shipped scene (engine/env.py is the
game-free env; this file picks the model and where rollouts start).

    import gymnasium as gym, app.world_env  # registers the ids
    env = gym.make("worldstream/DoomWorldModel-v0")                  # the bundled model, map01
    envs = gym.make_vec("worldstream/DoomWorldModel-v0", num_envs=4)  # one batched forward a step
    # or directly: make_env(start="map03"), make_vector_env(4, model="runs/student")
"""

from __future__ import annotations

import gymnasium as gym

from app.engine_spec import EngineSpec, default_model
from app.scenes import SceneStarter, resolve_start
from engine.engine import Engine
from engine.env import Start, WorldModelEnv, WorldModelVectorEnv
from engine.types import Frame

ENV_ID = "worldstream/DoomWorldModel-v0"


def _engine_and_start(model: str | None, preset: str | None, start: str | None, slots: int,
                      dtype: str) -> tuple[Engine, Start]:
    spec = EngineSpec(model=default_model(model, preset), preset=preset or "small", dtype=dtype)
    engine = spec.build(slots=slots)
    starter = SceneStarter()
    scene = resolve_start(start, engine, starter)  # ValueError now for a scene that cannot be used

    def begin(e: Engine, seed: int) -> Frame:
        return starter.reset(e, seed, scene)

    return engine, begin


def make_env(model: str | None = None, preset: str | None = None, start: str | None = None,
             max_steps: int | None = 1050, dtype: str = "auto", render_mode: str | None = "rgb_array"
             ) -> WorldModelEnv:
    """One rollout of ``model`` (default: the bundled model; ``preset``: random weights), from
    the start scene ``start`` (default: the default scene; "generated": a generated frame)."""
    engine, begin = _engine_and_start(model, preset, start, 1, dtype)
    return WorldModelEnv(engine, begin, max_steps=max_steps, render_mode=render_mode)


def make_vector_env(num_envs: int, model: str | None = None, preset: str | None = None,
                    start: str | None = None, max_steps: int | None = 1050, dtype: str = "auto",
                    **_: object) -> WorldModelVectorEnv:
    """``num_envs`` rollouts stepped in one batched forward (see ``make_env``)."""
    if num_envs < 1:
        raise ValueError(f"num_envs must be >= 1, got {num_envs}")
    engine, begin = _engine_and_start(model, preset, start, num_envs, dtype)
    return WorldModelVectorEnv(engine, num_envs, begin, max_steps=max_steps)


if ENV_ID not in gym.registry:
    gym.register(ENV_ID, entry_point=make_env, vector_entry_point=make_vector_env)
