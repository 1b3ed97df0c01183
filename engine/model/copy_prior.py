"""Copy prior: precondition the denoiser so that its default answer is the previous frame.

At 17.5 FPS a frame is mostly its predecessor moved a little. Model the change as Gaussian,
x_0 = prev + d with d ~ N(0, tau^2 I), observed through x_s = (1 - s) x_0 + s eps. The posterior
mean of x_0 is the linear estimate

    base(x_s, prev, s) = prev + k(s) (x_s - (1 - s) prev),   k(s) = (1 - s) tau^2 / ((1 - s)^2 tau^2 + s^2)

(s = 1: pure noise, base = prev, i.e. copy-last; s -> 0: base -> x_s), with posterior std

    scale(s) = tau s / sqrt((1 - s)^2 tau^2 + s^2).

The network predicts the rest in units of that std (EDM-style): x0_hat = base + scale(s) F. With
F = 0 (a zero-initialised output layer) the model *is* copy-last at s = 1, so training starts
from the baseline it must beat. The samplers keep their velocity interface:
v = (x_s - x0_hat) / s, so x_s - s v = x0_hat exactly.

The predecessor is context, written at a level c: prev = (1 - c) x + c eps. Copied as is, every
frame of a rollout is shrunk by (1 - c) (a 10 % fade per frame at c = 0.1, to a flat mean-coloured
field within a second) unless the network learns to undo it exactly. With ``denoised`` the copy
starts from the predecessor's posterior mean instead, g(c) prev with g(c) = (1 - c) / ((1 - c)^2 + c^2)
(latents of unit variance), whose per-frame gain is ~1 by construction (``clean_gain``).

Panning (``pan``): where an action moves the whole view sideways (turning), the copy is the
predecessor moved by a whole number of latent cells per pressed button, in the rows that move
with the view (the rest, e.g. a status bar, stays). A permutation of the predecessor's values:
no blur, and a rollout of copies pans at the right speed with no network at all.
"""

from __future__ import annotations

import torch

MIN_SIGMA = 1e-3  # v is undefined at s = 0 (clean context frames); their output is never used


def _expand(sigma: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B, F) -> (B, F, 1, 1, 1) for (B, F, C, h, w) latents."""
    return sigma.float().reshape(*sigma.shape, *([1] * (like.ndim - sigma.ndim)))


def copy_gain(sigma: torch.Tensor, tau: float) -> torch.Tensor:
    """k(s): how much of the noisy observation the linear estimate trusts, (B, F)."""
    a = 1 - sigma.float()
    return a * tau**2 / (a**2 * tau**2 + sigma.float() ** 2)


def copy_scale(sigma: torch.Tensor, tau: float) -> torch.Tensor:
    """scale(s): the posterior std the network's output is measured in, (B, F)."""
    s = sigma.float()
    return tau * s / torch.sqrt((1 - s) ** 2 * tau**2 + s**2)


def clean_gain(prev_sigma: torch.Tensor) -> torch.Tensor:
    """g(c) = (1 - c) / ((1 - c)^2 + c^2): E[x | (1 - c) x + c eps] / ((1 - c) x + c eps) for
    x ~ N(0, 1); 1 at c = 0, 0 at c = 1 (no predecessor), (B, F)."""
    a = 1 - prev_sigma.float()
    return a / (a**2 + prev_sigma.float() ** 2)


def pan(prev: torch.Tensor, action: torch.Tensor, shift: torch.Tensor | None, rows: int,
        wrap: bool = False) -> torch.Tensor:
    """``prev`` (B, F, C, h, w) moved right by round(action . shift) cells (B, F) in its top
    ``rows`` rows (0: all), the edge column repeated into the space uncovered (``wrap``: the
    columns moved out come back in on the other side). ``shift``: (A,) on the model's device (a
    buffer, so no host copy per step); None: no pan. No host sync."""
    if shift is None:
        return prev
    w = prev.shape[-1]
    rows = rows or prev.shape[-2]
    dx = torch.round(action.float() @ shift.float()).long()
    src = torch.arange(w, device=prev.device) - dx[..., None]  # (B, F, w)
    src = src % w if wrap else src.clamp(0, w - 1)
    top = prev[..., :rows, :]
    moved = torch.gather(top, -1, src[:, :, None, None, :].expand(top.shape))
    return torch.cat([moved, prev[..., rows:, :]], dim=-2)


def copy_x0(x: torch.Tensor, prev: torch.Tensor, sigma: torch.Tensor, out: torch.Tensor,
            tau: float, prev_sigma: torch.Tensor | None = None) -> torch.Tensor:
    """x0_hat = base + scale F. x, prev, out: (B, F, C, h, w); sigma: (B, F). With ``prev_sigma``
    (the predecessor's level, (B, F)) the copy is of its posterior mean g(c) prev."""
    if prev_sigma is not None:
        prev = prev * _expand(clean_gain(prev_sigma), prev)
    s = _expand(sigma, x)
    k = _expand(copy_gain(sigma, tau), x)
    base = prev + k * (x - (1 - s) * prev)
    return base + _expand(copy_scale(sigma, tau), x) * out


def velocity(x: torch.Tensor, x0: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """v = (x_s - x0_hat) / s (s clamped at MIN_SIGMA), so that x_s - s v = x0_hat."""
    return (x - x0) / _expand(sigma, x).clamp(min=MIN_SIGMA)


def x0_from_velocity(x: torch.Tensor, v: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """The inverse of ``velocity`` (same clamp)."""
    return x - _expand(sigma, x).clamp(min=MIN_SIGMA) * v
