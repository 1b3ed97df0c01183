"""scripts/oracle_lag.py: its oracles show the frames they say they show."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("oracle_lag", ROOT / "scripts" / "oracle_lag.py")
assert _spec is not None and _spec.loader is not None
oracle_lag = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(oracle_lag)


def _truth(n: int) -> np.ndarray:
    """Frame i is filled with the value i (n <= 256), so a shown frame says which one it is."""
    return np.broadcast_to(np.arange(n, dtype=np.uint8)[:, None, None, None], (n, 4, 4, 3)).copy()


def test_lag_shows_the_late_frame_and_never_one_before_the_context() -> None:
    truth, k, fps = _truth(100), 10, 10.0
    shown = oracle_lag.oracle_frames(truth, k, 90, fps, "lag:0.5", np.random.default_rng(0))[:, 0, 0, 0]
    t = np.arange(k, 100)
    assert np.array_equal(shown, np.maximum(t - 5, k - 1))  # 5 frames late; copy-last until then


def test_elsewhere_is_the_same_episode_far_from_t() -> None:
    truth, k, fps = _truth(250), 10, 10.0
    shown = oracle_lag.oracle_frames(truth, k, 240, fps, "elsewhere", np.random.default_rng(0))[:, 0, 0, 0]
    t = np.arange(k, 250)
    assert np.all(np.abs(shown.astype(int) - t) >= oracle_lag.ELSEWHERE_MIN_S * fps)
    assert len(np.unique(shown)) > 100  # a draw, not one frame


def test_target_bar_is_copy_last_plus_one_then_the_mean_frame() -> None:
    table = {"copy-last": {"psnr@1s": 18.0, "psnr@30s": 17.0}, "mean-frame": {"psnr@1s": 19.0, "psnr@30s": 19.5}}
    assert oracle_lag.target_bar(table, 1) == 19.0
    assert oracle_lag.target_bar(table, 30) == 19.5


def test_unknown_oracle_and_bad_lags_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown oracle"):
        oracle_lag.oracle_frames(_truth(20), 5, 15, 10.0, "future", np.random.default_rng(0))
    with pytest.raises(SystemExit):
        oracle_lag.main(["--lags", "0,1", "--out", "unused"])
