"""Statistics anchor (engine/anchor.py, ``model.stats_anchor``): a restoring force on a rollout's look.

Checks: ``pull`` at 0 is the identity and at 1 matches the reference's per-channel mean and spread;
it raises a blurred frame's detail toward the reference's; in the engine it stops a fading
rollout from fading and a growing one from growing; cached == recompute and a rejected draft
restores exactly with it on; bad settings are refused."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from engine import anchor
from engine.action import Action
from engine.config import ConfigError, EngineConfig, SamplerConfig
from engine.engine import Engine
from tests.conftest import action_script, check_generation_option, make_model


def _frames(n: int, seed: int = 0, scale: float = 1.0, shift: float = 0.0,
            shape: tuple[int, int, int] = (8, 15, 20)) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *shape, generator=g) * scale + shift


def _shape(config: EngineConfig) -> tuple[int, int, int]:
    m = config.model
    return m.latent_channels, m.latent_height, m.latent_width


def test_pull_limits() -> None:
    x, ref = _frames(2), anchor.reference(_frames(4, seed=1, scale=2.0, shift=0.5))
    assert torch.equal(anchor.pull(x, ref, 0.0), x)
    y = anchor.statistics(anchor.pull(x, ref, 1.0))
    torch.testing.assert_close(y[..., :2], ref[..., :2].expand(2, -1, -1), atol=1e-4, rtol=1e-4)
    half = anchor.pull(x, ref, 0.5)
    torch.testing.assert_close(half, (x + anchor.pull(x, ref, 1.0)) / 2)


def test_pull_restores_detail_of_a_blurred_frame() -> None:
    truth = anchor._blur(_frames(1, seed=2))  # a texture with some spatial correlation
    blurred = anchor._blur(truth)
    ref = anchor.reference(truth)
    before = anchor.detail(blurred) / ref[..., 2]
    after = anchor.detail(anchor.pull(blurred, ref, 1.0)) / ref[..., 2]
    assert before.mean() < 0.6 and after.mean() > 0.75, (before.mean(), after.mean())


def test_reference_refuses_bad_shapes() -> None:
    with pytest.raises(ValueError, match="reference needs"):
        anchor.reference(torch.zeros(8, 15, 20))


def _copy_rollout(tiny: EngineConfig, strength: float, context_sigma: float) -> float:
    """Std of the 30th generated frame over the context's, for an untrained copy model (output:
    its predecessor as written to context, shrunk by 1 - c every frame)."""
    base = dataclasses.replace(tiny.model, copy_prior=True, context_sigma=context_sigma, stats_anchor=strength)
    config = dataclasses.replace(tiny, model=base, sampler=SamplerConfig(kind="consistency", steps=1))
    model = make_model(config)
    model.init_weights(torch.Generator().manual_seed(0), std=0.2, adaln_zero=True)
    engine = Engine.build(config, model)
    context = _frames(4, seed=3, shape=_shape(config))
    engine.reset(0, context=context, context_actions=[Action()] * 3)
    frames = list(engine.stream(action_script(30)))
    return float(frames[-1].latent.std() / context.std())


def test_anchor_stops_a_fading_rollout(tiny: EngineConfig) -> None:
    """Spread per frame: 0.9 s without the anchor (-> 0); 0.3 + 0.7 x 0.9 s with it at 0.3 (-> 0.81)."""
    faded, held = _copy_rollout(tiny, 0.0, 0.1), _copy_rollout(tiny, 0.3, 0.1)
    assert faded < 0.3 and 0.7 < held < 1.1, (faded, held)


def test_anchor_bounds_a_growing_loop() -> None:
    """A loop that amplifies its frame by 1.1 and shifts it by 0.05 each step (the blow-up of a
    model with gain > 1): 100 steps grow it ~10^4-fold; pulled at 0.3 per step it stays at the
    reference's level (spread fixed point 0.3 / (1 - 0.7 x 1.1) = 1.3, mean 0.05 x 0.7 / 0.3 off)."""
    ref = anchor.reference(_frames(4, seed=4))
    free = held = _frames(1, seed=6)
    for _ in range(100):
        free = free * 1.1 + 0.05
        held = anchor.pull(held * 1.1 + 0.05, ref, 0.3)
    grown = float(free.std() / ref[..., 1].mean())
    s = anchor.statistics(held)
    spread = float((s[..., 1] / ref[..., 1]).mean())
    assert grown > 1e3 and 1.0 < spread < 1.6, (grown, spread)
    assert float((s[..., 0] - ref[..., 0]).abs().max()) < 0.2


def test_cached_equals_recompute_and_drafts_roll_back_with_the_anchor(tiny: EngineConfig) -> None:
    config = dataclasses.replace(tiny, model=dataclasses.replace(tiny.model, stats_anchor=0.4, context_sigma=0.1))
    off = dataclasses.replace(config, model=dataclasses.replace(config.model, stats_anchor=0.0))
    check_generation_option(config, off, _frames(2, seed=5, shape=_shape(config)))


@pytest.mark.parametrize("bad", [-0.1, 1.5])
def test_bad_strength_is_refused(tiny: EngineConfig, bad: float) -> None:
    with pytest.raises(ConfigError, match="stats_anchor"):
        dataclasses.replace(tiny.model, stats_anchor=bad)


def test_self_forced_frames_are_anchored_in_training(tiny: EngineConfig) -> None:
    """``train world --anchor``: the self-forced history frames are pulled as the engine pulls a
    rollout's frames (toward the clip's true history), and the run's config carries the strength."""
    from pathlib import Path

    from tests.test_train import _episodes
    from train.world import WorldArgs, WorldTask
    from train.world_setup import teacher_config

    config = dataclasses.replace(tiny, model=dataclasses.replace(tiny.model, copy_prior=True))
    made = {}
    for strength in (0.0, 1.0):
        args = WorldArgs(data="-", tokenizer="-", out="-", frames=7, copy_prior=True, self_prob=1.0,
                         self_frames=2, anchor=strength)
        task = WorldTask(args, config, _episodes(config), [], Path("-"), torch.device("cpu"))
        g = torch.Generator().manual_seed(0)
        x0, actions, index, before = task.sample_clips(task.train, 3, g)
        sigma, target = task.noise_levels(tuple(index.shape), g)
        model = make_model(config)  # random weights: frames far from the clip's look
        x, _, _ = task.self_forced(model, x0, actions, index, before, sigma, target, torch.ones(3, dtype=torch.bool), g)
        ref = anchor.statistics(x0[:, :4].flatten(0, 1).float()).view(3, 4, -1, 3).mean(1)
        made[strength] = (anchor.statistics(x[:, 5].float())[..., 1] / ref[..., 1]).mean()
        assert teacher_config(args).model.stats_anchor == strength
    assert abs(made[1.0] - 1) < 0.05 and abs(made[0.0] - 1) > 0.2, made
    with pytest.raises(ValueError, match="--anchor"):
        WorldArgs(data="-", tokenizer="-", out="-", copy_prior=True, anchor=2.0)
