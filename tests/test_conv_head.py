"""The convolutional head (engine/model/conv_head.py, model.conv_head, train world --conv-head)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from engine.cache import FullContext
from engine.config import ConfigError, EngineConfig
from engine.model.conv_head import ConvHead
from engine.model.dit import DiT
from tests.conftest import check_generation_option, make_model


def _with_head(config: EngineConfig, channels: int = 8, **model: object) -> EngineConfig:
    return dataclasses.replace(config, model=dataclasses.replace(config.model, conv_head=channels, **model))


def _inputs(config: EngineConfig, b: int = 2, f: int = 3, seed: int = 0) -> tuple[torch.Tensor, ...]:
    m = config.model
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, f, m.latent_channels, m.latent_height, m.latent_width, generator=g)
    return (x, torch.rand(b, f, generator=g), torch.randint(0, 2, (b, f, m.num_actions), generator=g).float(),
            torch.randn(x.shape, generator=g), torch.rand(b, f, generator=g) * 0.3)


def _forward(model: DiT, x: torch.Tensor, sigma: torch.Tensor, action: torch.Tensor, prev: torch.Tensor,
             prev_sigma: torch.Tensor) -> torch.Tensor:
    m = model.cfg
    index = torch.arange(x.shape[1]).repeat(x.shape[0], 1)
    ctx = FullContext(index, m.tokens_per_frame, m.sink_frames, m.window_frames)
    with torch.no_grad():
        return model(x, sigma, action, ctx, prev, prev_sigma)


@pytest.mark.parametrize("copy_prior", [False, True])
def test_a_fresh_head_changes_nothing(tiny: EngineConfig, copy_prior: bool) -> None:
    """A head at its training init (zero output layer) leaves the DiT's output bit for bit."""
    plain = dataclasses.replace(tiny, model=dataclasses.replace(tiny.model, copy_prior=copy_prior))
    base = DiT(plain.model)
    base.init_weights(torch.Generator().manual_seed(0), std=0.2)
    headed = DiT(_with_head(plain).model)
    headed.init_weights(torch.Generator().manual_seed(1), std=0.2, adaln_zero=True)
    headed.load_state_dict({**headed.state_dict(), **base.state_dict()})
    args = _inputs(plain)
    assert torch.equal(_forward(base, *args), _forward(headed, *args))
    torch.nn.init.normal_(headed.head.out.weight, std=0.1)  # a trained head does act
    assert not torch.allclose(_forward(base, *args), _forward(headed, *args))


def test_cached_equals_recompute_and_drafts_roll_back_with_a_head(tiny: EngineConfig) -> None:
    config = _with_head(tiny, copy_prior=True, copy_shift=(0, 0, 0, 0, 1, -1, 0, 0))
    off = dataclasses.replace(config, model=dataclasses.replace(config.model, conv_head=0))
    m = config.model
    context = torch.randn(2, m.latent_channels, m.latent_height, m.latent_width,
                          generator=torch.Generator().manual_seed(3))
    check_generation_option(config, off, context)


def test_the_head_is_batch_invariant(tiny: EngineConfig) -> None:
    """Rowwise (the runner's CPU default) runs each rollout alone: the same bits as a batch of one."""
    config = _with_head(tiny, copy_prior=True)
    model = make_model(config)
    args = _inputs(config, b=3)
    for module in model.modules():
        if hasattr(module, "rowwise"):
            module.rowwise = True
    batched = _forward(model, *args)
    for i in range(3):
        alone = _forward(model, *(a[i:i + 1] for a in args))
        assert torch.equal(batched[i:i + 1], alone)


def test_the_head_learns_to_move_the_predecessor_by_a_cell(tiny: EngineConfig) -> None:
    """What the head is for: predecessor -> predecessor moved one cell right (the copy a turn
    needs), learned on random latents to a tenth of the copy's error in a few hundred steps."""
    m = _with_head(tiny, channels=16, copy_prior=True).model
    head = ConvHead(m)
    opt = torch.optim.Adam(head.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    shape = (4, 1, m.latent_channels, m.latent_height, m.latent_width)

    def batch() -> tuple[torch.Tensor, torch.Tensor]:
        prev = torch.randn(shape, generator=g)
        return prev, torch.roll(prev, 1, dims=-1)

    def error(prev: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        tokens, cond = torch.zeros(4, 1, m.tokens_per_frame, m.dim), torch.zeros(4, 1, m.dim)
        pred = prev + head(tokens, cond, torch.zeros_like(prev), torch.zeros_like(prev), prev)
        return (pred - target)[..., 1:].pow(2).mean()  # column 0 is the wrapped-in one: unknowable

    for _ in range(300):
        loss = error(*batch())
        opt.zero_grad()
        loss.backward()
        opt.step()
    prev, target = batch()
    with torch.no_grad():
        copy = (prev - target)[..., 1:].pow(2).mean()
        assert error(prev, target) < 0.1 * copy


def test_bad_head_is_refused(tiny: EngineConfig) -> None:
    with pytest.raises(ConfigError, match="conv_head"):
        dataclasses.replace(tiny.model, conv_head=-1)
    from train.world import WorldArgs

    with pytest.raises(ValueError, match="--train-only head"):
        WorldArgs(data="-", tokenizer="-", out="-", train_only="head", conv_head=8)  # no --init
    with pytest.raises(ValueError, match="--train-only head"):
        WorldArgs(data="-", tokenizer="-", out="-", train_only="head")
    with pytest.raises(ValueError, match="--train-only output"):
        WorldArgs(data="-", tokenizer="-", out="-", train_only="output")
    with pytest.raises(ValueError, match="--train-only"):
        WorldArgs(data="-", tokenizer="-", out="-", train_only="trunk", init=".")


@pytest.mark.parametrize("which", ["all", "head", "output"])
def test_train_only_freezes_the_rest(tiny: EngineConfig, which: str) -> None:
    from train.world_setup import freeze_except

    model = make_model(_with_head(tiny, copy_prior=True))
    freeze_except(model, which)
    learns = {name.split(".")[0] for name, p in model.named_parameters() if p.requires_grad}
    assert learns == {"all": {n.split(".")[0] for n, _ in model.named_parameters()}, "head": {"head"},
                      "output": {"ada_out", "patch_out"}}[which]
    with pytest.raises(ValueError, match="conv head"):
        freeze_except(make_model(tiny), "head")
