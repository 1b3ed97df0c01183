"""The world model as a gymnasium env: passes gymnasium's checker; the vector env's batched
steps equal single envs; autoreset; bad actions are clear errors."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from app.world_env import ENV_ID
from engine.config import EngineConfig
from engine.env import WorldModelEnv, WorldModelVectorEnv
from tests.conftest import action_script, make_engine


def test_env_passes_gymnasiums_checker() -> None:
    env = gym.make(ENV_ID, preset="tiny", max_steps=20).unwrapped  # made: it has a spec to check
    check_env(env, skip_render_check=False)
    obs, info = env.reset(seed=3)
    assert obs.shape == (12, 16, 3) and obs.dtype == np.uint8 and info["frame"] == 0
    again, _ = env.reset(seed=3)
    assert (again == obs).all()  # a seed is a rollout


def test_vector_env_equals_single_envs(tiny: EngineConfig) -> None:
    n, steps = 3, 8
    venv = WorldModelVectorEnv(make_engine(tiny, slots=n), n, max_steps=None)
    obs, _ = venv.reset(seed=100)
    assert obs.shape == (n, 12, 16, 3) and venv.observation_space.contains(obs)
    scripts = [action_script(steps + i)[i:] for i in range(n)]
    got = [obs]
    for t in range(steps):
        obs, reward, terminated, truncated, _ = venv.step(np.array([s[t].to_multi_hot() for s in scripts]))
        assert reward.shape == (n,) and not terminated.any() and not truncated.any()
        got.append(obs)
    assert venv.scheduler.stats.batched == n * steps  # one batched forward per step
    for i in range(n):
        env = WorldModelEnv(make_engine(tiny), max_steps=None)
        single = [env.reset(seed=100 + i)[0]] + [env.step(a.to_multi_hot())[0] for a in scripts[i]]
        for t in range(steps + 1):  # batch-invariant on CPU: the same pixels
            assert (got[t][i] == single[t]).all(), (i, t)


def test_vector_env_autoresets_on_the_next_step(tiny: EngineConfig) -> None:
    venv = WorldModelVectorEnv(make_engine(tiny, slots=2), 2, max_steps=2)
    venv.reset(seed=0)
    noop = np.zeros((2, 8), dtype=np.int64)
    assert not venv.step(noop)[3].any()
    _, _, _, truncated, info = venv.step(noop)
    assert truncated.all() and (info["frame"] == 2).all()
    _, _, _, truncated, info = venv.step(noop)  # the reset step
    assert not truncated.any() and (info["frame"] == 0).all()
    assert (venv.step(noop)[4]["frame"] == 1).all()


def test_bad_actions_and_sizes_are_clear_errors(tiny: EngineConfig) -> None:
    env = WorldModelEnv(make_engine(tiny))
    with pytest.raises(RuntimeError, match="reset"):
        env.step([0] * 8)
    env.reset(seed=0)
    with pytest.raises(ValueError, match="MultiBinary"):
        env.step([2] + [0] * 7)
    with pytest.raises(ValueError, match="slots=3"):
        WorldModelVectorEnv(make_engine(tiny, slots=2), 3)
    venv = WorldModelVectorEnv(make_engine(tiny, slots=2), 2)
    venv.reset(seed=0)
    with pytest.raises(ValueError, match=r"\(2, 8\)"):
        venv.step(np.zeros((3, 8)))


def test_registered_ids_make_both_envs() -> None:
    env = gym.make(ENV_ID, preset="tiny", max_steps=5)
    obs, _ = env.reset(seed=1)
    assert obs.shape == (12, 16, 3)
    venv = gym.make_vec(ENV_ID, num_envs=2, vectorization_mode="vector_entry_point", preset="tiny")
    obs, _ = venv.reset(seed=1)
    assert obs.shape == (2, 12, 16, 3)
    env.close()
    venv.close()
