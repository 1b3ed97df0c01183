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
    n, k, fps = 100, 10, 10.0
    shown = oracle_lag.oracle_sources(n, k, 90, fps, "lag:0.5", np.random.default_rng(0))
    t = np.arange(k, 100)
    assert np.array_equal(shown, np.maximum(t - 5, k - 1))  # 5 frames late; copy-last until then


def test_elsewhere_is_the_same_episode_far_from_t() -> None:
    n, k, fps = 250, 10, 10.0
    shown = oracle_lag.oracle_sources(n, k, 240, fps, "elsewhere", np.random.default_rng(0))
    t = np.arange(k, 250)
    assert np.all(np.abs(shown.astype(int) - t) >= oracle_lag.ELSEWHERE_MIN_S * fps)
    assert len(np.unique(shown)) > 100  # a draw, not one frame


def test_target_bar_is_copy_last_plus_one_then_the_mean_frame() -> None:
    table = {"copy-last": {"psnr@1s": 18.0, "psnr@30s": 17.0}, "mean-frame": {"psnr@1s": 19.0, "psnr@30s": 19.5}}
    assert oracle_lag.target_bar(table, 1) == 19.0
    assert oracle_lag.target_bar(table, 30) == 19.5


def test_unknown_oracle_and_bad_lags_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown oracle"):
        oracle_lag.oracle_sources(20, 5, 15, 10.0, "future", np.random.default_rng(0))
    with pytest.raises(SystemExit):
        oracle_lag.main(["--lags", "0,1", "--out", "unused"])


def test_constant_frames_are_encoded_once_and_give_the_same_features() -> None:
    calls: list[int] = []

    def features(frames: np.ndarray) -> np.ndarray:  # (T, H, W, 3) -> (T, C, h, w)
        calls.append(len(frames))
        return frames.astype(np.float64).transpose(0, 3, 1, 2)

    still = np.repeat(_truth(3)[1:2], 7, axis=0)
    out = oracle_lag.constant_aware(features, still)
    assert calls == [1] and np.array_equal(out, features(still))
    moving = _truth(7)
    assert np.array_equal(oracle_lag.constant_aware(features, moving), features(moving))


def test_fd_is_zero_for_the_truth_itself_and_not_for_a_still_frame() -> None:
    rng = np.random.default_rng(0)
    fps, rows = 10.0, []
    for episode in range(3):
        truth = rng.normal(size=(400, 8, 4, 4))  # features of 40 s of frames
        still = np.repeat(truth[:1], 400, axis=0)
        for name, pred in (("truth", truth), ("still", still)):
            rows.append({"episode": f"e{episode}", "split": "held-out", "predictor": name, "psnr@1s": 1.0,
                         "fd_stats": oracle_lag.episode_fd_stats(pred, truth, fps, (1, 5, 10, 30))})
    table = oracle_lag.summarise(rows, ["truth", "still"])["splits"]
    assert set(table) == {"all", "held-out"}
    assert abs(table["all"]["truth"]["fd@5s"]) < 1e-6
    assert table["all"]["still"]["fd@5s"] > 1.0
    assert "fd@60s" not in table["all"]["truth"]  # no frames that late
