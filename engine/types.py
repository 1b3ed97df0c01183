"""Contracts between the engine and its consumers (play, record, bench, eval)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from engine.action import Action


@dataclass(frozen=True)
class Frame:
    """One generated (or given) frame x_t of a rollout."""

    index: int  # t: 0 for the first frame of a rollout
    action: Action | None  # a_t that produced it; None for x_0 and for given context frames
    rgb: np.ndarray  # (H, W, 3) uint8
    latent: torch.Tensor  # (C, h, w) float32, on the engine's device
    timings_ms: dict[str, float] = field(default_factory=dict)  # per stage + "total"
    compiled: bool = False  # made by the step compiled in the background (Runner.compile_in_background)
