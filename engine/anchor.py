"""A rollout's statistics anchor: a restoring force on the look of generated frames.

A world model rolled out on its own frames compounds its per-frame bias: every model trained
here either faded (each frame a little flatter than its history: a flat brown field within a
second) or blew up (each a little more contrasted: saturated stripes by 15 s). Neither is a
property of one frame; both are a drift of each latent channel's spatial statistics. The anchor
measures those statistics on the rollout's true context once (``reference``) and pulls every
generated frame a fraction ``strength`` of the way back to them (``pull``):

    per channel:  mean, spread (std) and detail (mean |neighbour difference|, the share of the
    spread that is high frequency) -> the context's.

Detail is restored by scaling the frame's high-pass part (the frame minus its 3x3 box blur); the
spread by scaling its deviation from the mean; the mean by shifting. Content, position and motion
are left to the model: only these 3 numbers per channel are pulled. A pure function of the
frame and the reference: no state, no host sync.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

EPS = 1e-5


def _blur(x: torch.Tensor) -> torch.Tensor:
    """3x3 box blur per channel, edges replicated: (B, C, h, w) -> same."""
    c = x.shape[1]
    k = torch.full((c, 1, 3, 3), 1 / 9, device=x.device, dtype=x.dtype)
    return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), k, groups=c)


def detail(x: torch.Tensor) -> torch.Tensor:
    """Per-channel mean |horizontal| + |vertical| neighbour difference: (B, C, h, w) -> (B, C)."""
    return (x[..., :, 1:] - x[..., :, :-1]).abs().mean((-2, -1)) + (x[..., 1:, :] - x[..., :-1, :]).abs().mean((-2, -1))


def statistics(x: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) latents -> (B, C, 3): per channel spatial mean, std, and detail."""
    return torch.stack([x.mean((-2, -1)), x.std((-2, -1)), detail(x)], dim=-1)


def reference(frames: torch.Tensor) -> torch.Tensor:
    """The anchor of a rollout from its true context frames (K, C, h, w): their statistics,
    averaged over the K frames -> (1, C, 3)."""
    if frames.ndim != 4 or frames.shape[0] < 1:
        raise ValueError(f"reference needs (K >= 1, C, h, w) frames, got {tuple(frames.shape)}")
    return statistics(frames.float()).mean(0, keepdim=True)


def pull(x: torch.Tensor, ref: torch.Tensor, strength: float) -> torch.Tensor:
    """``x`` (B, C, h, w) moved ``strength`` (0..1) of the way to a frame whose per-channel mean,
    spread and detail are ``ref``'s (B, C, 3). 0 returns x; 1 matches the reference's mean and
    std exactly (and its detail as far as the frame's own high frequencies allow)."""
    if strength <= 0:
        return x
    ref = ref.to(x.dtype)
    mean, std, det = ref[..., 0, None, None], ref[..., 1, None, None], ref[..., 2, None, None]
    low = _blur(x)
    high = x - low
    # detail: scale the high-pass part toward the reference's share (bounded, so noise-free
    # flat frames are not blown up from nothing)
    gain = (det / (detail(x)[..., None, None] + EPS)).clamp(0.25, 4.0)
    y = low + high * gain
    m = y.mean((-2, -1), keepdim=True)
    s = y.std((-2, -1), keepdim=True)
    y = (y - m) * (std / (s + EPS)).clamp(0.25, 4.0) + mean
    return x + strength * (y - x)
