"""Detail carry (engine/carry.py, ``model.detail_carry``): texture moves with the view.

Checks: 0 is the identity; at 1 a frame is its panned predecessor plus the low-pass part of the
model's change (against an independent separable binomial); no spatial frequency grows when a
rollout feeds on its own carried frames (a box blur's high-pass would, by 4/3 for
stripes a column wide); the wrap pan is a roll of the top rows; a held turn carries a texture across the
view without losing it; cached == recompute and a rejected draft restores exactly with it on;
bad settings are refused, and a model without a copy prior may pan its carry."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from engine import carry
from engine.config import ConfigError, EngineConfig
from engine.model.copy_prior import pan
from tests.conftest import check_generation_option


def _frames(n: int, seed: int = 0, shape: tuple[int, int, int] = (8, 15, 20)) -> torch.Tensor:
    return torch.randn(n, *shape, generator=torch.Generator().manual_seed(seed))


def _binomial_blur(x: torch.Tensor) -> torch.Tensor:
    """Reference: [1, 2, 1] / 4 along each axis in turn, edges replicated."""
    p = F.pad(x, (1, 1, 1, 1), mode="replicate")
    rows = (p[..., :-2, :] + 2 * p[..., 1:-1, :] + p[..., 2:, :]) / 4
    return (rows[..., :-2] + 2 * rows[..., 1:-1] + rows[..., 2:]) / 4


def test_carry_limits_against_a_reference() -> None:
    x, prev = _frames(2), _frames(2, seed=1)
    still = torch.zeros(2, 8)
    assert torch.equal(carry.carry(x, prev, still, None, 0, 0.0), x)
    full = carry.carry(x, prev, still, None, 0, 1.0)
    torch.testing.assert_close(full, prev + _binomial_blur(x - prev), atol=1e-5, rtol=0)
    half = carry.carry(x, prev, still, None, 0, 0.5)
    torch.testing.assert_close(half, (x + full) / 2, atol=1e-5, rtol=0)


@pytest.mark.parametrize("texture", ["noise", "stripes"])
def test_no_frequency_grows_in_a_carried_rollout(texture: str) -> None:
    """A model that returns a flat frame, fed its own carried frames 200 times: each frame is
    the high-pass of the last, and its size never grows (with a 3x3 box blur,
    the stripes that alternate column by column grow by 4/3 a frame: 10^25 over 200)."""
    if texture == "noise":
        x = _frames(1, seed=2)
    else:
        x = ((-1.0) ** torch.arange(20)).expand(1, 8, 15, 20).clone()
    start = x.norm()
    flat = torch.zeros_like(x)
    norms = []
    for _ in range(200):
        x = carry.carry(flat, x, torch.zeros(1, 8), None, 0, 1.0)
        norms.append(float(x.norm()))
    assert max(norms) <= float(start) * (1 + 1e-5), (max(norms), float(start))
    # the failure this guards against: a 3x3 box blur's high-pass of those stripes is 4/3 of them
    stripes = ((-1.0) ** torch.arange(20)).expand(1, 1, 15, 20)
    box_hp = stripes - F.conv2d(F.pad(stripes, (1, 1, 1, 1), mode="replicate"), torch.ones(1, 1, 3, 3) / 9)
    assert float(box_hp[..., 1:-1].abs().mean()) == pytest.approx(4 / 3, rel=1e-4)


def test_wrap_pan_is_a_roll_of_the_top_rows() -> None:
    prev = _frames(3)[:, None]  # (B, F, C, h, w)
    shift = torch.tensor([0, 0, 0, 0, 1, -1, 0, 0], dtype=torch.float32)
    action = torch.zeros(3, 1, 8)
    action[0, 0, 4] = 1  # turn left: +1
    action[1, 0, 5] = 1  # turn right: -1
    out = pan(prev, action, shift, 11, wrap=True)
    for b, dx in enumerate((1, -1, 0)):
        torch.testing.assert_close(out[b, 0, :, :11], torch.roll(prev[b, 0, :, :11], dx, dims=-1))
        assert torch.equal(out[b, 0, :, 11:], prev[b, 0, :, 11:])
    clamped = pan(prev, action, shift, 11)  # the copy prior's pan repeats the edge instead
    assert torch.equal(clamped[0, 0, :, :11, 0], prev[0, 0, :, :11, 0])


def test_a_held_turn_carries_texture_around_the_view() -> None:
    """A model that gets a held turn's low frequencies right and loses the detail (its output:
    the blur of the panned predecessor). After a full turn of the 20-cell view, a white-noise
    texture is back where it began: blurred away without the carry (cosine 0.19 to the start),
    two thirds kept with it (0.66: its finest detail whole, the middle frequencies blended)."""
    shift = torch.tensor([0, 0, 0, 0, 1, -1, 0, 0], dtype=torch.float32)
    left = torch.zeros(1, 8)
    left[0, 4] = 1
    texture = _frames(1, seed=3)
    kept = {}
    for strength in (0.0, 1.0):
        x = texture
        for _ in range(20):
            moved = pan(x[:, None], left[:, None], shift, 0, wrap=True)[:, 0]
            x = carry.carry(_binomial_blur(moved), x, left, shift, 0, strength)
        kept[strength] = float(F.cosine_similarity(x.flatten(), texture.flatten(), dim=0))
    assert kept[0.0] < 0.3 and kept[1.0] > 0.6, kept


def test_cached_equals_recompute_and_drafts_roll_back_with_the_carry(tiny: EngineConfig) -> None:
    m = dataclasses.replace(tiny.model, detail_carry=1.0, context_sigma=0.1, copy_shift=(0, 0, 0, 0, 1, -1, 0, 0),
                            copy_shift_rows=3)
    config = dataclasses.replace(tiny, model=m)
    shape = (m.latent_channels, m.latent_height, m.latent_width)
    off = dataclasses.replace(config, model=dataclasses.replace(m, detail_carry=0.0, copy_shift=()))
    check_generation_option(config, off, _frames(2, seed=5, shape=shape))


@pytest.mark.parametrize("bad", [-0.1, 1.5])
def test_bad_strength_is_refused(tiny: EngineConfig, bad: float) -> None:
    with pytest.raises(ConfigError, match="detail_carry"):
        dataclasses.replace(tiny.model, detail_carry=bad)


def test_a_pan_needs_a_copy_prior_or_the_carry(tiny: EngineConfig) -> None:
    shift = (0, 0, 0, 0, 1, -1, 0, 0)
    with pytest.raises(ConfigError, match="copy_shift"):
        dataclasses.replace(tiny.model, copy_shift=shift)
    assert dataclasses.replace(tiny.model, copy_shift=shift, detail_carry=0.5).copy_shift == shift
    from train.world import WorldArgs
    from train.world_setup import teacher_config

    with pytest.raises(ValueError, match="--copy-shift"):
        WorldArgs(data="-", tokenizer="-", out="-", copy_shift=shift)
    args = WorldArgs(data="-", tokenizer="-", out="-", copy_shift=shift, carry=1.0)  # a carry-only model pans
    assert teacher_config(args).model.copy_shift == shift and not teacher_config(args).model.copy_prior


def test_self_forced_frames_are_carried_in_training(tiny: EngineConfig) -> None:
    """``train world --carry``: a self-forced history frame is its (panned) predecessor plus a
    smooth change, as in a rollout, and the run's config carries the strength."""
    from pathlib import Path

    from engine.anchor import detail
    from tests.conftest import make_model
    from tests.test_train import _episodes
    from train.world import WorldArgs, WorldTask
    from train.world_setup import teacher_config

    shift = (0, 0, 0, 0, 1, -1, 0, 0)
    config = dataclasses.replace(tiny, model=dataclasses.replace(tiny.model, copy_prior=True, copy_shift=shift))
    rough = {}
    for strength in (0.0, 1.0):
        args = WorldArgs(data="-", tokenizer="-", out="-", frames=7, copy_prior=True, copy_shift=shift,
                         self_prob=1.0, self_frames=2, carry=strength)
        task = WorldTask(args, config, _episodes(config), [], Path("-"), torch.device("cpu"))
        g = torch.Generator().manual_seed(0)
        x0, actions, index, before = task.sample_clips(task.train, 3, g)
        sigma, target = task.noise_levels(tuple(index.shape), g)
        model = make_model(config)  # random weights: frames far from their predecessors
        x, _, _ = task.self_forced(model, x0, actions, index, before, sigma, target, torch.ones(3, dtype=torch.bool), g)
        moved = pan(x[:, 4:5].float(), actions[:, 5:6].float(), model.shift, 0, wrap=True)[:, 0]
        rough[strength] = float((detail(x[:, 5].float() - moved) / detail(x[:, 5].float())).mean())
        assert teacher_config(args).model.detail_carry == strength
    assert rough[1.0] < 0.6 * rough[0.0], rough
    with pytest.raises(ValueError, match="--carry"):
        WorldArgs(data="-", tokenizer="-", out="-", copy_prior=True, carry=2.0)
