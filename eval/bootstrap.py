"""95% bootstrap intervals of a mean over episodes (eval's tables, the report's bands)."""

from __future__ import annotations

import numpy as np


def mean_interval(x: np.ndarray, resamples: int = 1000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(2.5, 97.5) percentiles of the mean over axis 0 of ``x`` (episodes first, any trailing
    shape) across ``resamples`` resamples of the episodes with replacement; needs 2+ episodes."""
    x = np.asarray(x, dtype=np.float64)
    if len(x) < 2:
        raise ValueError(f"a bootstrap interval needs at least 2 episodes, got {len(x)}")
    g = np.random.default_rng(seed)
    means = x[g.integers(0, len(x), (resamples, len(x)))].mean(axis=1)
    return np.percentile(means, 2.5, axis=0), np.percentile(means, 97.5, axis=0)
