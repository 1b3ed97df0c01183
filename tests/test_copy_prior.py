"""Copy prior: a frame reads its predecessor, and the untrained (zero-output) model is copy-last.

Checks: the preconditioning's limits; the engine feeds each frame its predecessor's context
latent, the same in cached and recompute mode and the same as training's clip forward; a
fine-tune from a plain checkpoint starts exactly at copy-last; training lowers the loss."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from engine.action import Action
from engine.cache import FullContext
from engine.checkpoint import save_checkpoint
from engine.config import EngineConfig, SamplerConfig
from engine.engine import Engine
from engine.model.copy_prior import clean_gain, copy_gain, copy_scale, copy_x0
from engine.model.dit import DiT
from engine.runner import Runner
from tests.conftest import action_script, make_engine, make_model
from tests.test_train import _episodes, fit_one_batch
from train.world import WorldArgs, WorldTask
from train.world_losses import energy_score, marginal_crps, squared_error
from train.world_setup import init_from


def _copy(config: EngineConfig, **model: object) -> EngineConfig:
    return dataclasses.replace(config, model=dataclasses.replace(config.model, copy_prior=True, **model))


def _zero_head(config: EngineConfig) -> DiT:
    model = make_model(config)
    model.init_weights(torch.Generator().manual_seed(0), std=0.2, adaln_zero=True)
    return model


def test_preconditioning_limits() -> None:
    s = torch.tensor([[1.0, 0.5, 1e-4]])
    k, c = copy_gain(s, 0.5), copy_scale(s, 0.5)
    assert k[0, 0] == 0 and abs(float(k[0, 2]) - 1) < 1e-3  # pure noise: prev; no noise: x itself
    assert abs(float(c[0, 0]) - 0.5) < 1e-6 and float(c[0, 2]) < 1e-3
    x, prev = torch.randn(1, 3, 2, 3, 4), torch.randn(1, 3, 2, 3, 4)
    x0 = copy_x0(x, prev, s, torch.zeros_like(x), 0.5)
    assert torch.equal(x0[:, 0], prev[:, 0])
    torch.testing.assert_close(x0[:, 2], x[:, 2], atol=1e-3, rtol=0)


def test_untrained_model_is_copy_last(tiny: EngineConfig) -> None:
    """Zero output layer, 1 step from sigma 1: every generated frame is its predecessor."""
    config = dataclasses.replace(_copy(tiny), sampler=SamplerConfig(kind="consistency", steps=1))
    engine = Engine.build(config, _zero_head(config))
    m = config.model
    context = torch.randn(4, m.latent_channels, m.latent_height, m.latent_width)
    engine.reset(0, context=context, context_actions=[Action()] * 3)
    frames = list(engine.stream(action_script(5)))
    torch.testing.assert_close(frames[0].latent, context[-1], atol=1e-5, rtol=0)
    for a, b in itertools.pairwise(frames):
        torch.testing.assert_close(b.latent, a.latent, atol=1e-5, rtol=0)


@pytest.mark.parametrize("denoised", [False, True])
def test_copies_of_noisy_context_fade_unless_denoised(tiny: EngineConfig, denoised: bool) -> None:
    """Context written at c = 0.1: copying it as is shrinks every frame by 0.9 (a rollout fades to
    the mean within a second); copying its posterior mean keeps the frame's contrast."""
    base = _copy(tiny, context_sigma=0.1, copy_denoised=denoised)
    config = dataclasses.replace(base, sampler=SamplerConfig(kind="consistency", steps=1))
    engine = Engine.build(config, _zero_head(config))
    m = config.model
    g = torch.Generator().manual_seed(0)
    context = torch.randn(4, m.latent_channels, m.latent_height, m.latent_width, generator=g)
    engine.reset(0, context=context, context_actions=[Action()] * 3)
    frames = list(engine.stream(action_script(20)))
    kept = float(frames[-1].latent.std() / context[-1].std())
    assert (kept > 0.8) if denoised else (kept < 0.3), kept
    s = torch.tensor([[0.0, 0.1, 1.0]])
    torch.testing.assert_close(clean_gain(s), torch.tensor([[1.0, 0.9 / 0.82, 0.0]]))


def test_predecessor_changes_the_output_only_for_copy_models(tiny: EngineConfig) -> None:
    m = tiny.model
    x, sigma = torch.randn(1, 2, m.latent_channels, m.latent_height, m.latent_width), torch.full((1, 2), 0.5)
    action, ctx = torch.zeros(1, 2, 8), FullContext(torch.arange(2)[None], m.tokens_per_frame, 1, m.window_frames)
    p1, p2, ps = torch.randn_like(x), torch.randn_like(x), torch.full((1, 2), 0.1)
    plain, copy = make_model(tiny), make_model(_copy(tiny))
    with torch.no_grad():
        assert torch.equal(plain(x, sigma, action, ctx, p1, ps), plain(x, sigma, action, ctx, p2, ps))
        assert (copy(x, sigma, action, ctx, p1, ps) - copy(x, sigma, action, ctx, p2, ps)).abs().max() > 1e-3


def test_cached_equals_recompute_with_copy_prior(tiny: EngineConfig) -> None:
    config = _copy(tiny, context_sigma=0.2)
    horizon = config.model.sink_frames + config.model.window_frames
    runs = []
    for recompute in (False, True):
        e = make_engine(config, recompute=recompute)
        runs.append([e.reset(3), *e.stream(action_script(horizon))])
    for a, b in zip(*runs, strict=True):
        torch.testing.assert_close(a.latent, b.latent, atol=2e-5, rtol=0)
    again = make_engine(config)
    assert torch.equal(again.reset(3).latent, runs[0][0].latent)  # deterministic


def test_training_clip_matches_the_engine_inputs(tiny: EngineConfig) -> None:
    """With every frame at a context level, training's predecessors are exactly the frames the
    engine would pass (frame i-1 as shown, the sink's one zeros at level 1), and the clip forward
    equals the runner's cached step-by-step forward fed the same predecessors."""
    config = _copy(tiny)
    task = WorldTask(WorldArgs(data="-", tokenizer="-", out="-", frames=7, max_gap=0, copy_prior=True),
                     config, _episodes(config), [], Path("-"), torch.device("cpu"))
    model = make_model(config)
    g = torch.Generator().manual_seed(0)
    x0, actions, index, before = task.sample_clips(task.train, 1, g)
    sigma = torch.rand(index.shape, generator=g) * 0.15
    target = torch.zeros(index.shape, dtype=torch.bool)
    xt = (1 - sigma[..., None, None, None]) * x0 + sigma[..., None, None, None] * torch.randn(x0.shape)
    prev, prev_sigma = task.predecessors(x0, xt, sigma, target, before, g)
    assert torch.equal(prev[:, 0], torch.zeros_like(prev[:, 0])) and prev_sigma[0, 0] == 1
    assert torch.equal(prev[:, 1:], xt[:, :-1]) and torch.equal(prev_sigma[:, 1:], sigma[:, :-1])
    m = config.model
    with torch.no_grad():
        full = model(xt, sigma, actions, FullContext(index, m.tokens_per_frame, m.sink_frames, m.window_frames),
                     prev, prev_sigma)
        runner = Runner(config, model)
        steps = []
        for t in range(7):
            sl = slice(t, t + 1)
            steps.append(runner.forward(0, xt[:, sl], sigma[:, sl], actions[:, sl], prev[:, sl], prev_sigma[:, sl]))
            runner.cache.commit(0, 1)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=2e-5, rtol=1e-5)
    # A target predecessor is re-drawn at a context level, as inference always has it.
    target[:, 2] = True
    prev, prev_sigma = task.predecessors(x0, xt, sigma, target, before, g)
    assert not torch.equal(prev[:, 3], xt[:, 2]) and prev_sigma[0, 3] <= task.args.context_sigma_max


def test_finetune_from_a_plain_checkpoint_starts_at_copy_last(tiny: EngineConfig, tmp_path: Path) -> None:
    plain = make_model(tiny)
    save_checkpoint(tmp_path / "plain", tiny, plain.state_dict())
    config = _copy(tiny)
    model = DiT(config.model)
    model.init_weights(torch.Generator().manual_seed(1))
    new = init_from(model, str(tmp_path / "plain"))
    assert new and all(n.startswith(("prev_in", "prev_sigma_embed")) for n in new)
    assert torch.equal(model.blocks[0].attn.qkv.weight, plain.blocks[0].attn.qkv.weight)
    m = config.model
    x = torch.randn(1, 1, m.latent_channels, m.latent_height, m.latent_width)
    prev = torch.randn_like(x)
    ctx = FullContext(torch.zeros(1, 1, dtype=torch.long), m.tokens_per_frame, 1, m.window_frames)
    with torch.no_grad():
        v = model(x, torch.ones(1, 1), torch.zeros(1, 1, 8), ctx, prev, torch.full((1, 1), 0.05))
    torch.testing.assert_close(x - v, prev, atol=1e-6, rtol=0)


@pytest.mark.parametrize("loss", [{}, {"loss": "l1", "gdl": 1.0}, {"loss": "l1", "stats": 1.0}],
                         ids=["l2", "l1+gdl", "l1+stats"])
def test_copy_prior_training_lowers_the_loss(tiny: EngineConfig, loss: dict) -> None:
    config = _copy(tiny)
    task = WorldTask(WorldArgs(data="-", tokenizer="-", out="-", frames=6, copy_prior=True, target_one=0.3, **loss),
                     config, _episodes(config), [], Path("-"), torch.device("cpu"))
    model = _zero_head(config)
    losses, sigma = fit_one_batch(task, model, 150)
    assert (sigma == 1).any()
    assert losses[-1] < losses[0] / 3, (losses[0], losses[-1])


def test_self_forcing_replaces_the_last_history_frames(tiny: EngineConfig) -> None:
    config = _copy(tiny)
    task = WorldTask(WorldArgs(data="-", tokenizer="-", out="-", frames=7, copy_prior=True, self_prob=1.0,
                               self_frames=2), config, _episodes(config), [], Path("-"), torch.device("cpu"))
    model = make_model(config)
    g = torch.Generator().manual_seed(0)
    x0, actions, index, before = task.sample_clips(task.train, 3, g)
    sigma, target = task.noise_levels(tuple(index.shape), g)
    mine = torch.tensor([True, False, True])
    x, s, t = task.self_forced(model, x0, actions, index, before, sigma, target, mine, g)
    assert torch.equal(x[1], x0[1]) and torch.equal(s[1], sigma[1]) and torch.equal(t[1], target[1])
    for b in (0, 2):
        assert torch.equal(x[b, :4], x0[b, :4]) and torch.equal(x[b, 6], x0[b, 6])  # only frames 4, 5 replaced
        assert not torch.equal(x[b, 4], x0[b, 4]) and not torch.equal(x[b, 5], x0[b, 5])
        assert t[b].tolist() == [False] * 6 + [True]
        assert (s[b, :6] <= task.args.context_sigma_max).all()
    loss, info = task.loss(model, torch.Generator().manual_seed(1))
    assert torch.isfinite(loss) and info["self"] == 1.0


def test_latent_clip_bounds_generated_frames(tiny: EngineConfig) -> None:
    """With ``latent_clip`` every generated latent stays in [-clip, clip]; without it the same
    weights produce larger values (so the clamp is what bounds them)."""
    clipped = dataclasses.replace(tiny, model=dataclasses.replace(tiny.model, latent_clip=0.5))
    free = [make_engine(tiny).reset(0)]
    e = make_engine(clipped)
    frames = [e.reset(0), *e.stream(action_script(6))]
    assert max(float(f.latent.abs().max()) for f in frames) <= 0.5
    assert float(free[0].latent.abs().max()) > 0.5


def test_energy_score_prefers_samples_to_the_mean() -> None:
    """The energy score is proper: for x ~ N(0, 1), i.i.d. samples of that law score better than its
    mean (which the squared error prefers) and than samples with too little or too much spread."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, 2, 6, 6, generator=g)

    def score(spread: float) -> float:
        a, b = (spread * torch.randn(x.shape, generator=g) for _ in range(2))
        return float(energy_score(a, b, x).mean())

    scores = {s: score(s) for s in (0.0, 0.5, 1.0, 1.5)}
    assert scores[1.0] < min(scores[0.0], scores[0.5], scores[1.5]), scores
    assert squared_error(torch.zeros_like(x) - x).mean() < squared_error(torch.randn(x.shape, generator=g) - x).mean()


@pytest.mark.parametrize("score", [energy_score, marginal_crps], ids=["energy", "crps"])
def test_energy_score_trains_a_sampler(score: Callable[..., torch.Tensor]) -> None:
    """A generator of noise trained with the energy score (per frame or per value) learns the spread of a
    random target (every value +-1 at random, whatever the input): its samples have the target's std;
    trained with the squared error, the same generator returns the mean, 0, whatever its noise."""
    stds = {}
    for name in ("energy", "l2"):
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Linear(8, 64), torch.nn.SiLU(), torch.nn.Linear(64, 8))
        opt = torch.optim.Adam(net.parameters(), lr=3e-3)
        for _ in range(400):
            x = torch.randint(0, 2, (256, 1, 8, 1, 1)).float() * 2 - 1
            a, b = (net(torch.randn(256, 8)).reshape(x.shape) for _ in range(2))
            loss = score(a, b, x) if name == "energy" else squared_error(a - x)
            opt.zero_grad()
            loss.mean().backward()
            opt.step()
        with torch.no_grad():
            stds[name] = float(net(torch.randn(4096, 8)).std(dim=0).mean())
    assert 0.6 < stds["energy"] < 1.4 and stds["l2"] < 0.2, stds


@pytest.mark.parametrize("loss", ["energy", "crps"])
def test_energy_loss_trains_the_copy_prior(tiny: EngineConfig, loss: str) -> None:
    config = _copy(tiny)
    task = WorldTask(WorldArgs(data="-", tokenizer="-", out="-", frames=6, copy_prior=True, target_one=0.5,
                               loss=loss), config, _episodes(config), [], Path("-"), torch.device("cpu"))
    losses, _ = fit_one_batch(task, _zero_head(config), 100)
    assert losses[-1] < losses[0] / 3, (losses[0], losses[-1])
