"""Schedules and pure samplers for flow matching.

Convention: x_sigma = (1 - sigma) * x_0 + sigma * noise, sigma in [0, 1]; the model predicts the
velocity v = noise - x_0, so x_0 = x_sigma - sigma * v (which meets the consistency boundary
condition f(x, 0) = x by construction).

Every sampler has one signature, ``sampler(denoise, x, sigmas, generator) -> x_0``, and never
sees the model or the cache: the engine passes a ``denoise(x, sigma) -> velocity`` closure.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from engine.config import SamplerConfig

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Generators = torch.Generator | Sequence[torch.Generator] | None
Sampler = Callable[[Denoiser, torch.Tensor, torch.Tensor, Generators], torch.Tensor]


def noise_like(x: torch.Tensor, generator: Generators = None) -> torch.Tensor:
    """Fresh standard-normal noise shaped like ``x``. A sequence of generators gives row ``i``
    of the batch from generator ``i``: a rollout draws the same noise alone or in any batch."""
    if generator is None or isinstance(generator, torch.Generator):
        return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    if len(generator) != x.shape[0]:
        raise ValueError(f"{len(generator)} generators for a batch of {x.shape[0]}")
    return torch.cat([torch.randn((1, *x.shape[1:]), generator=g, device=x.device, dtype=x.dtype)
                      for g in generator])


# ---------------------------------------------------------------------------- schedules
def linear_schedule(steps: int) -> torch.Tensor:
    """sigmas 1 -> 0 in ``steps`` equal steps: (steps + 1,)."""
    return torch.linspace(1.0, 0.0, steps + 1)


def shifted_schedule(steps: int, shift: float) -> torch.Tensor:
    """SD3-style shift: spends more steps at high noise for shift > 1."""
    s = linear_schedule(steps)
    return shift * s / (1 + (shift - 1) * s)


def make_sigmas(cfg: SamplerConfig, device: torch.device | str = "cpu") -> torch.Tensor:
    if cfg.schedule == "linear":
        sigmas = linear_schedule(cfg.steps)
    else:
        sigmas = shifted_schedule(cfg.steps, cfg.shift)
    return sigmas.to(device)


# ---------------------------------------------------------------------------- samplers
def sample_euler(denoise: Denoiser, x: torch.Tensor, sigmas: torch.Tensor,
                 generator: Generators = None) -> torch.Tensor:
    """Deterministic Euler integration of the flow ODE (the teacher's sampler)."""
    for i in range(len(sigmas) - 1):
        x = x + (sigmas[i + 1] - sigmas[i]) * denoise(x, sigmas[i])
    return x


def sample_consistency(denoise: Denoiser, x: torch.Tensor, sigmas: torch.Tensor,
                       generator: Generators = None) -> torch.Tensor:
    """Multi-step consistency sampling (the student's): jump to x_0, re-noise to the next sigma
    with fresh noise, repeat. With one step it equals one Euler step."""
    x0 = x
    for i in range(len(sigmas) - 1):
        x0 = x - sigmas[i] * denoise(x, sigmas[i])
        nxt = sigmas[i + 1]
        if i + 2 < len(sigmas):  # not the last step: back to noise level `nxt`
            x = (1 - nxt) * x0 + nxt * noise_like(x, generator)
    return x0


SAMPLERS: dict[str, Sampler] = {"euler": sample_euler, "consistency": sample_consistency}
