"""Fréchet distance between generated and true frames, per horizon bucket (FVD-style, per frame).

Each frame is a feature vector: the tokenizer encoder's latent (8 x 15 x 20 for 160x120),
averaged over a 2 x 2 grid of regions: 32 numbers (few enough that the ~17 frames a second of
10 episodes give a usable covariance). Fitting a Gaussian to the generated and to the true
frames of a bucket, FD = |mu_g - mu_t|^2 + Tr(S_g + S_t - 2 (S_g S_t)^(1/2)); 0 = the same
distribution, larger = further apart (it sees blur, colour casts and textures that PSNR
averages away, and does not ask a frame to match its own ground truth pixel for pixel).

Episodes store sufficient statistics (count, sum, sum of outer products) per bucket, so the
FD of any set of episodes (and bootstrap intervals over episodes) is computed without frames.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

GRID = (2, 2)


def frame_features(latents: np.ndarray) -> np.ndarray:
    """(T, C, h, w) encoder latents -> (T, C * 4) region means."""
    x = torch.from_numpy(np.ascontiguousarray(latents)).double()
    return F.adaptive_avg_pool2d(x, GRID).reshape(len(x), -1).numpy()


def stats(features: np.ndarray) -> dict[str, Any]:
    f = np.asarray(features, dtype=np.float64)
    return {"n": len(f), "sum": f.sum(0).tolist(), "outer": (f.T @ f).tolist()}


def add_stats(total: dict[str, Any] | None, part: dict[str, Any]) -> dict[str, Any]:
    if total is None:
        return {"n": part["n"], "sum": np.asarray(part["sum"]), "outer": np.asarray(part["outer"])}
    return {"n": total["n"] + part["n"], "sum": total["sum"] + np.asarray(part["sum"]),
            "outer": total["outer"] + np.asarray(part["outer"])}


def _gaussian(s: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    n = s["n"]
    mu = np.asarray(s["sum"]) / n
    cov = (np.asarray(s["outer"]) - n * np.outer(mu, mu)) / max(1, n - 1)
    return mu, (cov + cov.T) / 2


def _sqrt_psd(m: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh(m)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet(a: dict[str, Any], b: dict[str, Any]) -> float | None:
    """FD of two feature statistics; None with fewer than 2 samples on a side."""
    if a["n"] < 2 or b["n"] < 2:
        return None
    mu_a, s_a = _gaussian(a)
    mu_b, s_b = _gaussian(b)
    root_a = _sqrt_psd(s_a)
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(root_a @ s_b @ root_a), 0, None)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2 * cross)


def episode_fd_stats(pred_latents: np.ndarray, true_latents: np.ndarray, fps: float,
                     horizons: tuple[int, ...]) -> dict[str, dict[str, Any]]:
    """Per bucket "@{h}s" (frames after the previous horizon, up to h seconds): both sides' stats."""
    fp, ft = frame_features(pred_latents), frame_features(true_latents)
    out: dict[str, dict[str, Any]] = {}
    start = 0
    for h in horizons:
        end = min(len(fp), round(h * fps))
        if end > start:
            out[f"@{h}s"] = {"pred": stats(fp[start:end]), "true": stats(ft[start:end])}
        start = end
    return out


def aggregate_fd(rows: list[dict[str, Any]], resamples: int = 200, seed: int = 0) -> dict[str, Any]:
    """FD per bucket over ``rows``' stored stats, with a 95% bootstrap interval over episodes."""
    scored = [r["fd_stats"] for r in rows if r.get("fd_stats")]
    buckets = sorted({k for s in scored for k in s}, key=lambda k: float(k[1:-1]))
    out: dict[str, Any] = {"episodes": len(scored), "fd": {}, "ci95": {}}
    g = np.random.default_rng(seed)
    for key in buckets:
        have = [s[key] for s in scored if key in s]

        def fd_of(items: list[dict[str, Any]]) -> float | None:
            pred = true = None
            for item in items:
                pred, true = add_stats(pred, item["pred"]), add_stats(true, item["true"])
            return frechet(pred, true) if pred is not None and true is not None else None

        out["fd"][key] = fd_of(have)
        if len(have) >= 2:
            boot = [fd_of([have[i] for i in g.integers(0, len(have), len(have))]) for _ in range(resamples)]
            vals = [v for v in boot if v is not None]
            out["ci95"][key] = [float(np.percentile(vals, 2.5)), float(np.percentile(vals, 97.5))] if vals else None
    return out
