"""The Engine loop: determinism, context prefill, conventions, errors, timings."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from engine.action import BUTTONS, Action
from engine.config import EngineConfig, SamplerConfig
from engine.engine import Engine
from tests.conftest import action_script, make_engine


def _rollout(engine: Engine, seed: int, n: int) -> list:
    return [engine.reset(seed), *engine.stream(action_script(n))]


def test_same_seed_same_actions_identical_frames(tiny: EngineConfig) -> None:
    a = _rollout(make_engine(tiny), seed=7, n=12)
    b = _rollout(make_engine(tiny), seed=7, n=12)
    for fa, fb in zip(a, b, strict=True):
        assert np.array_equal(fa.rgb, fb.rgb) and torch.equal(fa.latent, fb.latent)
    c = _rollout(make_engine(tiny), seed=8, n=12)
    assert not torch.equal(a[-1].latent, c[-1].latent)
    # Reusing one engine: reset really resets.
    e = make_engine(tiny)
    _rollout(e, seed=1, n=5)
    again = _rollout(e, seed=7, n=12)
    assert all(torch.equal(x.latent, y.latent) for x, y in zip(a, again, strict=True))


def test_actions_steer_the_rollout(tiny: EngineConfig) -> None:
    left = make_engine(tiny)
    left.reset(0)
    right = make_engine(tiny)
    right.reset(0)
    fl = left.step(Action.of("turn_left"))
    fr = right.step(Action.of("turn_right"))
    assert not torch.equal(fl.latent, fr.latent)


def test_frames_follow_the_convention(tiny: EngineConfig) -> None:
    """x_0 has no action; step(a_t) returns x_t carrying a_t; RGB has the configured size."""
    e = make_engine(tiny)
    x0 = e.reset(0)
    assert x0.index == 0 and x0.action is None
    x1 = e.step(Action.of("forward"))
    assert x1.index == 1 and x1.action == Action.of("forward")
    f = tiny.frame
    assert x1.rgb.shape == (f.height, f.width, 3) and x1.rgb.dtype == np.uint8
    assert set(x1.timings_ms) == {"model", "decode", "total"}
    assert x1.timings_ms["total"] >= x1.timings_ms["model"] > 0


def test_reset_with_context_prefills(tiny: EngineConfig) -> None:
    """Context frames x_0..x_{K-1} go into the cache; generation continues at t = K, and the
    result is the same as feeding the engine's own frames back as context."""
    e = make_engine(tiny)
    frames = _rollout(e, seed=2, n=5)
    acts = action_script(5)
    context = torch.stack([fr.latent for fr in frames[:4]])  # x_0..x_3
    replay = make_engine(tiny)
    last = replay.reset(seed=2, context=context, context_actions=acts[:3])
    assert last.index == 3 and torch.equal(last.latent, frames[3].latent)
    nxt = replay.step(acts[3])
    assert nxt.index == 4
    other = make_engine(tiny)
    other.reset(seed=2, context=context, context_actions=list(reversed(acts[:3])))
    assert not torch.equal(other.step(acts[3]).latent, nxt.latent)  # context actions matter


def test_bad_input_errors(tiny: EngineConfig) -> None:
    e = make_engine(tiny)
    with pytest.raises(RuntimeError, match="reset"):
        next(e.stream([Action()]))
    e.reset(0)
    with pytest.raises(TypeError, match="Action"):
        e.step("forward")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="latents"):
        e.reset(0, context=torch.zeros(2, 1, 1, 1))
    with pytest.raises(ValueError, match="latents"):
        e.reset(0, context=torch.zeros(0, tiny.model.latent_channels, tiny.model.latent_height,
                                       tiny.model.latent_width))
    m = tiny.model
    ctx = torch.zeros(3, m.latent_channels, m.latent_height, m.latent_width)
    with pytest.raises(ValueError, match="need 2 actions"):
        e.reset(0, context=ctx, context_actions=[Action()])


def test_action_type() -> None:
    a = Action.of("forward", "attack")
    assert a.names == ("forward", "attack") and str(a) == "forward+attack"
    assert Action.from_multi_hot(a.to_multi_hot()) == a
    assert len(BUTTONS) == 8 and str(Action()) == "noop"
    with pytest.raises(ValueError, match="unknown button"):
        Action.of("jump")
    with pytest.raises(ValueError):
        Action((True,) * 3)
    with pytest.raises(ValueError):
        Action.from_multi_hot([2] * 8)
    with pytest.raises(ValueError):
        Action((1,) * 8)  # type: ignore[arg-type]


def test_noised_context_is_reproducible_and_cache_consistent(tiny: EngineConfig) -> None:
    """With context_sigma > 0 finished frames are re-noised (with the engine's generator) before
    they become context: still deterministic, and cached == recompute while nothing is dropped."""
    import dataclasses

    noisy = dataclasses.replace(tiny, model=dataclasses.replace(tiny.model, context_sigma=0.2))
    horizon = noisy.model.sink_frames + noisy.model.window_frames
    a = _rollout(make_engine(noisy), seed=4, n=horizon)
    b = _rollout(make_engine(noisy), seed=4, n=horizon)
    c = _rollout(make_engine(noisy, recompute=True), seed=4, n=horizon)
    clean = _rollout(make_engine(tiny), seed=4, n=horizon)
    for x, y, z in zip(a, b, c, strict=True):
        assert torch.equal(x.latent, y.latent)
        torch.testing.assert_close(x.latent, z.latent, atol=2e-5, rtol=0)
    assert not torch.equal(a[-1].latent, clean[-1].latent)


def test_temperature_scales_the_starting_noise(tiny: EngineConfig) -> None:
    """Temperature 0 starts every frame from zeros: two Euler rollouts with different seeds make the
    same frames (tiny writes context without noise); temperature 1 (the default) makes them differ,
    and 0.5 differs from 1 for the same seed."""
    def frames(temperature: float, seed: int) -> list[torch.Tensor]:
        config = dataclasses.replace(tiny, sampler=SamplerConfig(kind="euler", steps=2, temperature=temperature))
        e = make_engine(config)
        e.reset(seed)
        return [f.latent for f in e.stream(action_script(3))]

    assert tiny.model.context_sigma == 0
    assert all(torch.equal(a, b) for a, b in zip(frames(0.0, 1), frames(0.0, 2), strict=True))
    assert not any(torch.equal(a, b) for a, b in zip(frames(1.0, 1), frames(1.0, 2), strict=True))
    assert not torch.equal(frames(0.5, 1)[0], frames(1.0, 1)[0])
