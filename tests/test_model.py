"""The DiT: shapes, patching, block-causal attention, and temporal positions."""

from __future__ import annotations

import torch

from engine.cache import FullContext
from engine.config import PRESETS, EngineConfig
from engine.model.layers import patchify, unpatchify
from tests.conftest import make_model


def _run(cfg: EngineConfig, x: torch.Tensor, index: torch.Tensor, seed: int = 0) -> torch.Tensor:
    m = cfg.model
    f = x.shape[1]
    sigma = torch.full((1, f), 0.5)
    action = torch.zeros(1, f, m.num_actions)
    action[..., 0] = 1
    model = make_model(cfg, seed)
    with torch.no_grad():
        return model(x, sigma, action, FullContext(index, m.tokens_per_frame, m.sink_frames, m.window_frames))


def _latents(cfg: EngineConfig, frames: int) -> torch.Tensor:
    m = cfg.model
    return torch.randn(1, frames, m.latent_channels, m.latent_height, m.latent_width)


def test_patchify_roundtrip_with_padding() -> None:
    m = PRESETS["small"].model  # 15 rows: padded to 16 for 2x2 patches
    x = torch.randn(2, 3, m.latent_channels, m.latent_height, m.latent_width)
    tokens = patchify(x, m.patch_size)
    assert tokens.shape == (2, 3, m.tokens_per_frame, m.patch_dim) == (2, 3, 80, 32)
    assert torch.equal(unpatchify(tokens, m.patch_size, m.latent_channels, m.latent_height, m.latent_width), x)


def test_output_shape_and_params(tiny: EngineConfig) -> None:
    x = _latents(tiny, 4)
    assert _run(tiny, x, torch.arange(4)[None]).shape == x.shape
    small = make_model(PRESETS["small"])
    assert 5e6 < small.num_params() < 20e6


def test_block_causal(tiny: EngineConfig) -> None:
    """A later frame never changes an earlier one; every token of a frame sees its whole frame."""
    x = _latents(tiny, 4)
    idx = torch.arange(4)[None]
    base = _run(tiny, x, idx)
    later = x.clone()
    later[:, 3] += 1
    assert torch.equal(_run(tiny, later, idx)[:, :3], base[:, :3])
    corner = x.clone()
    corner[:, 2, :, 0, 0] += 1  # one latent pixel of frame 2 (in its first token)
    out = _run(tiny, corner, idx)
    assert (out[:, 2, :, -1, -1] - base[:, 2, :, -1, -1]).abs().max() > 1e-3  # its last token
    assert (out[:, 3] - base[:, 3]).abs().max() > 1e-3


def test_temporal_position_is_relative_and_exact_far_out(tiny: EngineConfig) -> None:
    """Shifting every (non-sink) frame index by a million changes nothing: attention sees only
    offsets, and the angles stay exact over long rollouts."""
    x = _latents(tiny, 3)
    near = _run(tiny, x, torch.tensor([[5, 6, 7]]))
    far = _run(tiny, x, torch.tensor([[1_000_005, 1_000_006, 1_000_007]]))
    torch.testing.assert_close(far, near, atol=1e-5, rtol=0)


def test_sink_frames_have_no_temporal_position(tiny: EngineConfig) -> None:
    """A sink is equally far from a query at frame 3 and at frame 10,003 (offsets never grow),
    while the order of the window frames does matter."""
    x = _latents(tiny, 4)
    near = _run(tiny, x, torch.tensor([[0, 1, 2, 3]]))
    far = _run(tiny, x, torch.tensor([[0, 10_001, 10_002, 10_003]]))
    torch.testing.assert_close(far[:, 1:], near[:, 1:], atol=1e-5, rtol=0)
    swapped = _run(tiny, x, torch.tensor([[0, 2, 1, 3]]))  # same frames, other temporal order
    assert (swapped[:, 3] - near[:, 3]).abs().max() > 1e-3


def test_conditioning_matters(tiny: EngineConfig) -> None:
    m = tiny.model
    model = make_model(tiny)
    x = _latents(tiny, 2)
    ctx = FullContext(torch.arange(2)[None], m.tokens_per_frame, m.sink_frames, m.window_frames)
    sigma = torch.full((1, 2), 0.5)
    a0 = torch.zeros(1, 2, m.num_actions)
    a1 = a0.clone()
    a1[:, 1, 4] = 1  # turn_left on frame 1
    with torch.no_grad():
        base = model(x, sigma, a0, ctx)
        assert torch.equal(model(x, sigma, a1, ctx)[:, 0], base[:, 0])  # frame 0 unaffected
        assert (model(x, sigma, a1, ctx)[:, 1] - base[:, 1]).abs().max() > 1e-3
        assert (model(x, sigma * 0.5, a0, ctx) - base).abs().max() > 1e-3
