"""The adversarial critic (``train world --adv``): it teaches a generator out of a blur, it judges
only the 1-step frames, its gradient reaches the model and not itself, and a resumed run
continues the same game exactly."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from engine.config import EngineConfig
from tests.conftest import make_model
from tests.test_train import _episodes
from train.loop import LoopConfig, Trainer
from train.world import WorldArgs, WorldTask
from train.world_critic import Critic


def _blur(x: torch.Tensor) -> torch.Tensor:
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


def test_critic_pulls_a_blurred_generator_sharp() -> None:
    """A 'generator' with one parameter t makes t x + (1 - t) blur(x) from real frames x (t = 0.1:
    nearly all blur). Trained by the critic alone (no reconstruction term), t climbs past 0.8 and
    stays out of the blur (GAN training oscillates around t = 1: measured 0.89, 1.32, 0.76 at steps
    40, 60, 100); the generator's loss leaves the critic's weights without gradient."""
    g = torch.Generator().manual_seed(0)
    critic = Critic(4, lr=1e-3, device=torch.device("cpu"))
    t = torch.tensor(0.1, requires_grad=True)
    opt = torch.optim.Adam([t], lr=2e-2)
    seen = []
    for _ in range(100):
        x = torch.randn(8, 4, 15, 20, generator=g)
        fake = t * x + (1 - t) * _blur(x)
        loss = critic.generator_loss(fake)
        opt.zero_grad()
        loss.backward()
        opt.step()
        assert all(p.grad is None for p in critic.net.parameters())
        critic.update(torch.randn(8, 4, 15, 20, generator=g), fake)
        seen.append(float(t.detach()))
    assert max(seen) > 0.8 and seen[-1] > 0.5, seen[::10]


def test_adv_needs_one_step_targets() -> None:
    with pytest.raises(ValueError, match="target-one"):
        WorldArgs(data="-", tokenizer="-", out="-", copy_prior=True, adv=0.1)
    with pytest.raises(ValueError, match="adv"):
        WorldArgs(data="-", tokenizer="-", out="-", copy_prior=True, adv=-1, target_one=0.5)


def _task(config: EngineConfig, adv: float) -> WorldTask:
    args = WorldArgs(data="-", tokenizer="-", out="-", frames=6, batch=3, copy_prior=True, target_one=0.5, adv=adv,
                     checkpoint_every=2)
    eps = _episodes(config)
    return WorldTask(args, config, eps, eps[:1], Path("-"), torch.device("cpu"))


def test_the_critic_judges_one_step_frames_and_moves_the_model(tiny: EngineConfig) -> None:
    config = dataclasses.replace(tiny, model=dataclasses.replace(tiny.model, copy_prior=True))
    g = torch.Generator().manual_seed(3)
    with_critic, without = _task(config, 1.0), _task(config, 0.0)
    model = make_model(config)
    loss_a, info = with_critic.loss(model, torch.Generator().manual_seed(3))
    loss_b, _ = without.loss(model, torch.Generator().manual_seed(3))
    assert info["adv_g"] != 0 and float((loss_a - loss_b).detach()) != 0  # the term is in the model's loss
    real, fake = with_critic._judged
    x0, _, index, _ = with_critic.sample_clips(with_critic.train, 3, g)  # the batch loss() drew
    sigma, target = with_critic.noise_levels(tuple(index.shape), g)
    one = target & (sigma == 1)
    assert one.any() and torch.equal(real, x0[one]) and fake.shape == real.shape  # just the sigma-1 targets
    before = {k: v.clone() for k, v in with_critic.critic.net.state_dict().items()}
    with_critic.after_step(model)
    assert with_critic._judged is None and set(info) >= {"critic", "critic_gap", "adv_g"}
    assert any(not torch.equal(before[k], v) for k, v in with_critic.critic.net.state_dict().items())


def test_resume_with_a_critic_is_exact(tiny: EngineConfig, tmp_path: Path) -> None:
    config = dataclasses.replace(tiny, model=dataclasses.replace(tiny.model, copy_prior=True))
    loop = LoopConfig(steps=4, lr=1e-3, warmup=1, checkpoint_every=2, log_every=1, bf16=False)

    def trainer(out: Path) -> Trainer:
        task = _task(config, 0.5)
        task.export = lambda ema, folder, meta: None  # type: ignore[method-assign]
        return Trainer(make_model(config), task, loop, out, progress=False)

    trainer(tmp_path / "once").run()
    trainer(tmp_path / "twice").run(stop_after=2)
    trainer(tmp_path / "twice").run()
    a = load_file(str(tmp_path / "once" / "train" / "state.safetensors"))
    b = load_file(str(tmp_path / "twice" / "train" / "state.safetensors"))
    assert any(k.startswith("task.critic.net.") for k in a) and any(k.startswith("task.critic.opt.") for k in a)
    assert a.keys() == b.keys()
    assert [k for k in a if not torch.equal(a[k], b[k])] == []


def test_a_conditional_critic_judges_pairs_with_the_same_predecessor(tiny: EngineConfig) -> None:
    """``--critic-cond``: real and model frames each go to the critic beside the same predecessor
    (the frame before, panned by the action), stacked on channels; the term still moves the model."""
    with pytest.raises(ValueError, match="critic-cond"):
        WorldArgs(data="-", tokenizer="-", out="-", copy_prior=True, target_one=0.5, critic_cond=True)
    with pytest.raises(ValueError, match="--copy-prior"):
        WorldArgs(data="-", tokenizer="-", out="-", target_one=0.5, adv=1.0, critic_cond=True)
    config = dataclasses.replace(tiny, model=dataclasses.replace(tiny.model, copy_prior=True))
    args = WorldArgs(data="-", tokenizer="-", out="-", frames=6, batch=3, copy_prior=True, target_one=0.5, adv=1.0,
                     critic_cond=True)
    eps = _episodes(config)
    task = WorldTask(args, config, eps, eps[:1], Path("-"), torch.device("cpu"))
    c = config.model.latent_channels
    assert task.critic.net.net[0].weight.shape[1] == 2 * c
    _, info = task.loss(make_model(config), torch.Generator().manual_seed(3))
    real, fake = task._judged
    assert info["adv_g"] != 0 and real.shape == fake.shape and real.shape[1] == 2 * c
    assert torch.equal(real[:, c:], fake[:, c:]) and not torch.equal(real[:, :c], fake[:, :c])


def test_a_pixel_critic_judges_decoded_frames(tiny: EngineConfig, tmp_path: Path) -> None:
    """``--critic-pixels``: the frames go through the frozen tokenizer's decoder before the critic
    (with ``--critic-cond`` the decoded predecessor beside them); the model still gets the gradient
    and the decoder none."""
    from engine.tokenizer import Tokenizer, TokenizerConfig, save_tokenizer

    m = tiny.model
    tok = tmp_path / "tok"
    save_tokenizer(tok, Tokenizer(TokenizerConfig(latent_channels=m.latent_channels, widths=(4, 4, 4, 4),
                                                  blocks=(0, 0, 0, 0), height=m.latent_height * 8,
                                                  width=m.latent_width * 8)))
    config = dataclasses.replace(tiny, model=dataclasses.replace(m, copy_prior=True))
    args = WorldArgs(data="-", tokenizer="-", out="-", frames=6, batch=3, copy_prior=True, target_one=0.5, adv=1.0,
                     critic_cond=True, critic_pixels=True)
    eps = _episodes(config)
    task = WorldTask(args, config, eps, eps[:1], tok, torch.device("cpu"))
    model = make_model(config)
    loss, info = task.loss(model, torch.Generator().manual_seed(3))
    real, fake = task._judged
    assert real.shape == fake.shape and real.shape[1:] == (6, m.latent_height * 8, m.latent_width * 8)
    assert torch.equal(real[:, 3:], fake[:, 3:]) and info["adv_g"] != 0
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    assert task.decoder is not None and all(p.grad is None for p in task.decoder.parameters())
    task.after_step(model)
    with pytest.raises(ValueError, match="critic-pixels"):
        WorldArgs(data="-", tokenizer="-", out="-", copy_prior=True, target_one=0.5, critic_pixels=True)
