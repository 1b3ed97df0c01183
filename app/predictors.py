"""Predictors for ``worldstream eval``: anything with the engine's step interface.

A predictor is given the ground-truth context x_0..x_{K-1} (and a_1..a_{K-1}) by ``reset``,
then returns one frame per action from ``step``, open loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
import torch

from engine.action import Action
from engine.engine import Engine


class Predictor(Protocol):
    name: str

    def reset(self, seed: int, context: np.ndarray, context_actions: Sequence[Action]) -> None:
        """context: (K, H, W, 3) uint8 frames x_0..x_{K-1}; context_actions: a_1..a_{K-1}."""
        ...

    def step(self, action: Action) -> np.ndarray:
        """x_t for a_t: (H, W, 3) uint8."""
        ...


class CopyLast:
    """Baseline: the world never changes after the last context frame."""

    name = "copy-last"

    def reset(self, seed: int, context: np.ndarray, context_actions: Sequence[Action]) -> None:
        self._last = context[-1].copy()

    def step(self, action: Action) -> np.ndarray:
        return self._last


class MeanFrame:
    """Baseline: the per-pixel mean of the context frames, forever."""

    name = "mean-frame"

    def reset(self, seed: int, context: np.ndarray, context_actions: Sequence[Action]) -> None:
        self._mean = context.astype(np.float64).mean(0).round().astype(np.uint8)

    def step(self, action: Action) -> np.ndarray:
        return self._mean


class RoundTrip:
    """Not a predictor: the tokenizer's encode -> decode of the true frame itself, the ceiling of
    any model that predicts latents (``eval --mode round-trip``)."""

    def __init__(self, folder: str) -> None:
        from engine.tokenizer import TokenizerDecoder, load_tokenizer

        self.tokenizer = TokenizerDecoder(load_tokenizer(folder)[0])
        self.name = f"round-trip:{folder}"

    def frames(self, truth: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) uint8 -> their round trips, the same shape."""
        out = [self.tokenizer.decode(self.tokenizer.encode(torch.from_numpy(truth[i:i + 32])))
               for i in range(0, len(truth), 32)]
        return torch.cat(out).numpy()


class EnginePredictor:
    """The world model: context frames are encoded to latents, then the engine rolls out."""

    def __init__(self, engine: Engine, name: str) -> None:
        self.engine = engine
        self.name = name

    def reset(self, seed: int, context: np.ndarray, context_actions: Sequence[Action]) -> None:
        f = self.engine.config.frame
        if context.shape[1:] != (f.height, f.width, 3):
            raise ValueError(f"model makes {f.width}x{f.height} frames, the suite has "
                             f"{context.shape[2]}x{context.shape[1]}")
        latents = self.engine.decoder.encode(torch.from_numpy(context).to(self.engine.device))
        self.engine.reset(seed, context=latents, context_actions=list(context_actions))

    def step(self, action: Action) -> np.ndarray:
        return self.engine.step(action).rgb


BASELINES = {"copy-last": CopyLast, "mean-frame": MeanFrame}
