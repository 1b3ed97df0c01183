"""The copy prior's pan: turning moves the copied predecessor by whole latent cells.

Checks: ``pan`` is a permutation of the top rows by action . shift (edge column repeated), the
rest untouched; an untrained copy model holding a turn pans the view a cell per frame, the same
cached and recomputed; ``measure_pan`` finds a planted shift and where it applies; bad configs
and CLI values are refused."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from app.cli import _copy_shift
from engine.action import Action
from engine.config import ConfigError, EngineConfig, SamplerConfig
from engine.engine import Engine
from engine.model.copy_prior import pan
from tests.conftest import make_engine, make_model
from train.data import LatentEpisode
from train.world import WorldArgs
from train.world_pan import measure_pan

LEFT, RIGHT = 4, 5  # turn_left, turn_right in engine/action.py's button order


def _pan_config(tiny: EngineConfig, rows: int = 0, **model: object) -> EngineConfig:
    shift = tuple(1 if i == LEFT else -1 if i == RIGHT else 0 for i in range(tiny.model.num_actions))
    m = dataclasses.replace(tiny.model, copy_prior=True, copy_shift=shift, copy_shift_rows=rows, **model)
    return dataclasses.replace(tiny, model=m)


def _reference(z: torch.Tensor, dx: int, rows: int) -> torch.Tensor:
    """Shift right by dx with the edge column repeated, one column at a time."""
    out = z.clone()
    for _ in range(abs(dx)):
        top = out[..., :rows, :]
        if dx > 0:
            out[..., :rows, :] = torch.cat([top[..., :1], top[..., :-1]], dim=-1)
        else:
            out[..., :rows, :] = torch.cat([top[..., 1:], top[..., -1:]], dim=-1)
    return out


def test_pan_moves_the_top_rows_by_the_action() -> None:
    z = torch.randn(2, 3, 4, 5, 7)
    action = torch.zeros(2, 3, 8)
    action[0, 0, LEFT] = 1  # +1
    action[0, 1, RIGHT] = 1  # -1
    action[0, 2, [LEFT, RIGHT]] = 1  # cancel
    action[1, 0, [LEFT, 0]] = 1  # forward has no shift: +1
    action[1, 1, LEFT] = 2  # a value of 2 counts twice
    shift = torch.tensor([0.0, 0, 0, 0, 1, -1, 0, 0])
    out = pan(z, action, shift, 3)
    for b, f, dx in [(0, 0, 1), (0, 1, -1), (0, 2, 0), (1, 0, 1), (1, 1, 2), (1, 2, 0)]:
        assert torch.equal(out[b, f], _reference(z[b, f], dx, 3)), (b, f, dx)
    assert torch.equal(out[..., 3:, :], z[..., 3:, :])
    assert torch.equal(pan(z, action, shift, 0)[0, 0], _reference(z[0, 0], 1, 5))  # 0 rows: all
    assert pan(z, action, None, 3) is z


def test_untrained_pan_model_holds_a_turn_as_a_pan(tiny: EngineConfig) -> None:
    """Zero output layer, 1 step, clean context: each frame is its predecessor moved a cell
    toward the turn in the panned rows, and exactly the predecessor below them."""
    from tests.test_copy_prior import _zero_head

    rows = tiny.model.latent_height - 1
    config = dataclasses.replace(_pan_config(tiny, rows=rows, context_sigma=0.0),
                                 sampler=SamplerConfig(kind="consistency", steps=1))
    engine = Engine.build(config, _zero_head(config))
    m = config.model
    context = torch.randn(3, m.latent_channels, m.latent_height, m.latent_width,
                          generator=torch.Generator().manual_seed(0))
    engine.reset(0, context=context, context_actions=[Action()] * 2)
    script = [Action.of("turn_left")] * 2 + [Action.of("forward", "turn_right")] * 3 + [Action()]
    frames = list(engine.stream(script))
    prev = context[-1]
    for action, frame in zip(script, frames, strict=True):
        dx = int(action.buttons[LEFT]) - int(action.buttons[RIGHT])
        torch.testing.assert_close(frame.latent, _reference(prev, dx, rows), atol=1e-5, rtol=0)
        prev = frame.latent
    assert not torch.allclose(frames[0].latent, context[-1])


def test_cached_equals_recompute_with_pan(tiny: EngineConfig) -> None:
    config = _pan_config(tiny, rows=2, context_sigma=0.2, copy_denoised=True)
    horizon = config.model.sink_frames + config.model.window_frames  # beyond it a window is an approximation
    script = ([Action.of("turn_left"), Action.of("turn_right"), Action.of("forward", "turn_left")] * horizon)[:horizon]
    runs = []
    for recompute in (False, True):
        e = make_engine(config, recompute=recompute)
        runs.append([e.reset(3), *e.stream(script)])
    for a, b in zip(*runs, strict=True):
        torch.testing.assert_close(a.latent, b.latent, atol=2e-5, rtol=0)
    plain = dataclasses.replace(config, model=dataclasses.replace(config.model, copy_shift=()))
    e = make_engine(plain)
    other = [e.reset(3), *e.stream(script)]
    assert not torch.allclose(other[-1].latent, runs[0][-1].latent)  # the pan is used
    assert make_model(config).cfg.copy_shift_rows == 2


def test_measure_pan_finds_a_planted_shift() -> None:
    """Episodes whose top 3 rows move +2 cells on button 4 and -1 on button 5 (the rest re-drawn
    every frame on other buttons, still on none)."""
    g = torch.Generator().manual_seed(0)
    eps = []
    for _ in range(3):
        z = [torch.randn(2, 6, 12, generator=g)]
        acts = [torch.zeros(8)]
        for t in range(120):
            a = torch.zeros(8)
            b = [0, 4, 5, 7][t % 4]
            a[b] = 1
            dx = {4: 2, 5: -1}.get(b, 0)
            nxt = _reference(z[-1], dx, 3) if b in (4, 5) else z[-1].clone()
            if b == 0:
                nxt[:, :3] = torch.randn(2, 3, 12, generator=g)
            nxt[:, 3:] = z[-1][:, 3:] if b in (4, 5) else torch.randn(2, 3, 12, generator=g)
            z.append(nxt)
            acts.append(a)
        eps.append(LatentEpisode(torch.stack(z).half(), torch.stack(acts)))
    shift, rows, errors = measure_pan(eps, min_frames=20)
    assert shift == (0, 0, 0, 0, 2, -1, 0, 0) and rows == 3, (shift, rows)
    assert len(errors["4"]) == 7 and min(errors["4"]) == errors["4"][3 + 2]


def test_bad_pan_settings_are_refused(tiny: EngineConfig) -> None:
    m = tiny.model
    with pytest.raises(ConfigError, match="one entry per action"):
        dataclasses.replace(m, copy_prior=True, copy_shift=(1, -1))
    with pytest.raises(ConfigError, match="copy_prior"):
        dataclasses.replace(m, copy_shift=(0,) * 8)
    with pytest.raises(ConfigError, match="copy_shift_rows"):
        dataclasses.replace(m, copy_prior=True, copy_shift_rows=m.latent_height + 1)
    with pytest.raises(ConfigError, match="latent_width"):
        dataclasses.replace(m, copy_prior=True, copy_shift=(m.latent_width,) + (0,) * 7)
    with pytest.raises(ValueError, match="copy-prior"):
        WorldArgs(data="-", tokenizer="-", out="-", copy_shift_auto=True)
    with pytest.raises(ValueError, match="not both"):
        WorldArgs(data="-", tokenizer="-", out="-", copy_prior=True, copy_shift=(0,) * 8, copy_shift_auto=True)
    args = WorldArgs(data="-", tokenizer="-", out="-", copy_prior=True, copy_shift=[0, 0, 0, 0, 1, -1, 0, 0])  # JSON
    assert args.copy_shift == (0, 0, 0, 0, 1, -1, 0, 0)
    assert _copy_shift("auto") == "auto" and _copy_shift("none") == ()
    assert _copy_shift("0,0,0,0,1,-1,0,0") == (0, 0, 0, 0, 1, -1, 0, 0)
    import argparse
    with pytest.raises(argparse.ArgumentTypeError, match="integers"):
        _copy_shift("left")


def test_a_frame_never_sees_later_frames(tiny: EngineConfig) -> None:
    """Self forcing generates history frame j from the clip cut after j (train/world.py): exact only
    because frame j's output does not depend on later frames (block-causal attention)."""
    from engine.cache import FullContext

    config = _pan_config(tiny, rows=2)
    m = config.model
    model = make_model(config)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 6, m.latent_channels, m.latent_height, m.latent_width, generator=g)
    prev, sigma, ps = torch.randn(x.shape, generator=g), torch.rand(1, 6, generator=g), torch.full((1, 6), 0.1)
    action = torch.zeros(1, 6, 8)
    action[0, ::2, LEFT] = 1
    index = torch.arange(6)[None]

    def run(f: int) -> torch.Tensor:
        ctx = FullContext(index[:, :f], m.tokens_per_frame, m.sink_frames, m.window_frames)
        with torch.no_grad():
            return model(x[:, :f], sigma[:, :f], action[:, :f], ctx, prev[:, :f], ps[:, :f])

    torch.testing.assert_close(run(4), run(6)[:, :4], atol=2e-5, rtol=1e-5)


def test_copy_residual_zero_is_the_panned_copy(tiny: EngineConfig) -> None:
    """``copy_residual`` 0 (inference knob): whatever the weights, a 1-step frame from clean context is
    the panned predecessor; 1 is the model as trained (a different frame)."""
    rows = tiny.model.latent_height
    frames = {}
    for r in (0.0, 1.0):
        config = dataclasses.replace(_pan_config(tiny, copy_residual=r, context_sigma=0.0),
                                     sampler=SamplerConfig(kind="consistency", steps=1))
        engine = make_engine(config)
        m = config.model
        context = torch.randn(3, m.latent_channels, m.latent_height, m.latent_width,
                              generator=torch.Generator().manual_seed(0))
        engine.reset(0, context=context, context_actions=[Action()] * 2)
        frames[r] = [f.latent for f in engine.stream([Action.of("turn_right")] * 2)]
    expected = torch.randn(3, tiny.model.latent_channels, tiny.model.latent_height, tiny.model.latent_width,
                           generator=torch.Generator().manual_seed(0))[-1]
    for f in frames[0.0]:
        expected = _reference(expected, -1, rows)
        torch.testing.assert_close(f, expected, atol=1e-5, rtol=0)
    assert (frames[1.0][0] - frames[0.0][0]).abs().max() > 1e-3
    with pytest.raises(ConfigError, match="copy_residual"):
        dataclasses.replace(tiny.model, copy_residual=1.5)
