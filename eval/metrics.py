"""Frame metrics for rollouts: PSNR and SSIM per frame (uint8 RGB in, one value per frame out).

SSIM is pytorch-msssim's (Gaussian window 11, sigma 1.5, on 0..255 data); MS-SSIM needs
frames larger than 160x120 at its default five scales, so single-scale SSIM is used.
"""

from __future__ import annotations

import numpy as np
import torch
from pytorch_msssim import ssim as _ssim

PSNR_CAP = 100.0  # identical frames: reported as 100 dB instead of infinity
CHUNK = 128


def _pair(pred: np.ndarray, target: np.ndarray) -> None:
    if pred.shape != target.shape or pred.ndim != 4 or pred.shape[-1] != 3:
        raise ValueError(f"expected two (N, H, W, 3) arrays of one shape, got {pred.shape} and {target.shape}")


def psnr(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Per-frame PSNR in dB of (N, H, W, 3) uint8 frames."""
    _pair(pred, target)
    err = ((pred.astype(np.float64) - target.astype(np.float64)) ** 2).reshape(len(pred), -1).mean(1)
    with np.errstate(divide="ignore"):
        out = 10 * np.log10(255.0**2 / err)
    return np.minimum(out, PSNR_CAP)


def ssim(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Per-frame SSIM of (N, H, W, 3) uint8 frames, computed in chunks on the CPU."""
    _pair(pred, target)
    out = []
    for i in range(0, len(pred), CHUNK):
        x = torch.from_numpy(pred[i : i + CHUNK]).permute(0, 3, 1, 2).float()
        y = torch.from_numpy(target[i : i + CHUNK]).permute(0, 3, 1, 2).float()
        out.append(_ssim(x, y, data_range=255.0, size_average=False))
    return torch.cat(out).numpy().astype(np.float64)


def sharpness(frames: np.ndarray) -> np.ndarray:
    """Per-frame mean image-gradient magnitude of (N, H, W, 3) uint8 frames (grey levels, forward
    differences): a blurred or flat frame scores low. Compare a prediction's to the truth's."""
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected (N, H, W, 3) frames, got {frames.shape}")
    grey = frames.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)  # (N, H, W)
    dx = np.diff(grey, axis=2)[:, :-1, :]
    dy = np.diff(grey, axis=1)[:, :, :-1]
    return np.sqrt(dx**2 + dy**2).reshape(len(frames), -1).mean(1).astype(np.float64)


HIST_BINS = 32


def color_hist_distance(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Per-frame distance of colour histograms: total variation (half the L1 distance) between
    the two frames' 32-bin histograms, averaged over R, G, B. 0 = same colours, 1 = disjoint."""
    _pair(pred, target)
    n = len(pred)

    def hist(frames: np.ndarray) -> np.ndarray:
        bins = (frames.reshape(n, -1, 3) // (256 // HIST_BINS)).astype(np.int64)  # (N, P, 3)
        offsets = (np.arange(n)[:, None] * 3 + np.arange(3)[None, :]) * HIST_BINS  # (N, 3)
        counts = np.bincount((bins + offsets[:, None, :]).ravel(), minlength=n * 3 * HIST_BINS)
        return counts.reshape(n, 3, HIST_BINS) / bins.shape[1]

    return 0.5 * np.abs(hist(pred) - hist(target)).sum(-1).mean(-1)
