"""Per-frame scores of a video on its own (no ground truth), the inputs of VDE (eval/vde.py).

All offline: no weights are fetched. Each is a function (T, H, W, 3) uint8 -> (T,) float, higher
is better except ``dynamics`` (how much moves; a frozen video scores 0):

- ``clarity``: mean image-gradient magnitude (eval/metrics.py ``sharpness``); blur lowers it.
- ``motion_smoothness``: how well a frame is predicted by the average of its two neighbours,
  1 - mean |x_t - (x_{t-1} + x_{t+1}) / 2| / 255 (linear interpolation stands in for VBench's
  learned interpolator; flicker and noise lower it, steady motion keeps it near 1).
- ``subject_consistency`` / ``background_consistency``: cosine similarity of a frame's features
  to the first frame's and to the previous frame's, averaged (VBench's rule); "subject" is the
  centre of the view (the middle half of rows and columns, where the player looks), "background"
  the rest. Features: the project's tokenizer encoder by default (``TokenizerFeatures``, frames
  resized to its 160x120), any ``Features`` callable otherwise.
- ``dynamics``: mean |x_t - x_{t-1}| / 255.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from eval.metrics import sharpness

Features = Callable[[np.ndarray], np.ndarray]  # (T, H, W, 3) uint8 -> (T, C, h, w) float
CHUNK = 64


def _check(frames: np.ndarray) -> np.ndarray:
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"expected (T, H, W, 3) uint8 frames, got {frames.shape} {frames.dtype}")
    if len(frames) < 3:
        raise ValueError(f"a video needs at least 3 frames to be scored, got {len(frames)}")
    return frames


def clarity(frames: np.ndarray) -> np.ndarray:
    return sharpness(_check(frames))


def motion_smoothness(frames: np.ndarray) -> np.ndarray:
    x = _check(frames).astype(np.float32)
    mid = np.abs(x[1:-1] - 0.5 * (x[:-2] + x[2:])).reshape(len(x) - 2, -1).mean(1) / 255.0
    inner = 1.0 - mid
    return np.concatenate([inner[:1], inner, inner[-1:]]).astype(np.float64)


def dynamics(frames: np.ndarray) -> np.ndarray:
    x = _check(frames).astype(np.float32)
    d = np.abs(x[1:] - x[:-1]).reshape(len(x) - 1, -1).mean(1) / 255.0
    return np.concatenate([d[:1], d]).astype(np.float64)


def _consistency(feats: np.ndarray, mask: np.ndarray) -> np.ndarray:
    v = torch.from_numpy(feats[:, :, mask].reshape(len(feats), -1)).double()
    v = F.normalize(v, dim=1)
    first = v @ v[0]
    prev = torch.cat([torch.ones(1, dtype=v.dtype), (v[1:] * v[:-1]).sum(1)])
    return (0.5 * (first + prev)).numpy()


def regions(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """(subject, background) boolean masks of an h x w feature grid."""
    subject = np.zeros((h, w), dtype=bool)
    subject[h // 4 : h - h // 4, w // 4 : w - w // 4] = True
    return subject, ~subject


def consistency(frames: np.ndarray, features: Features) -> tuple[np.ndarray, np.ndarray]:
    """(subject, background) consistency per frame."""
    feats = np.asarray(features(_check(frames)), dtype=np.float64)
    if feats.ndim != 4 or len(feats) != len(frames):
        raise ValueError(f"features must be (T, C, h, w), got {feats.shape}")
    subject, background = regions(*feats.shape[2:])
    return _consistency(feats, subject), _consistency(feats, background)


class TokenizerFeatures:
    """The tokenizer's encoder as a feature extractor (frames resized to its input size)."""

    def __init__(self, folder: str | Path, size: tuple[int, int] = (120, 160)) -> None:
        from engine.tokenizer import TokenizerDecoder, load_tokenizer

        tokenizer, _ = load_tokenizer(folder)
        self.coder = TokenizerDecoder(tokenizer, name=f"tokenizer ({Path(folder).name})")
        self.size = size
        self.name = self.coder.name

    @torch.inference_mode()
    def __call__(self, frames: np.ndarray) -> np.ndarray:
        out = []
        for i in range(0, len(frames), CHUNK):
            x = torch.from_numpy(np.ascontiguousarray(frames[i : i + CHUNK]))
            if tuple(x.shape[1:3]) != self.size:
                x = F.interpolate(x.permute(0, 3, 1, 2).float(), size=self.size, mode="area")
                x = x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()
            out.append(self.coder.encode(x).numpy())
        return np.concatenate(out)


def score_frames(frames: np.ndarray, features: Features | None) -> dict[str, np.ndarray]:
    """Every per-frame score of a video (consistency only with ``features``)."""
    out = {"clarity": clarity(frames), "motion_smoothness": motion_smoothness(frames), "dynamics": dynamics(frames)}
    if features is not None:
        out["subject_consistency"], out["background_consistency"] = consistency(frames, features)
    return out
