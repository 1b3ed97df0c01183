"""Video Drift Error (VDE), as LV-Bench defines it: how far a per-frame quality score drifts from
where the video started.

Split a video's per-frame scores into N equal chunks (the frame count trimmed to a multiple of
N: the last ``T mod N`` frames are dropped), average each chunk (m_1 .. m_N), and sum the
weighted relative changes against the first chunk:

    VDE_m = sum_{i=2..N} w_i * |m_i - m_1| / |m_1|

Linear weights w_i = N - i + 1 (early drift weighs most: it is what the rest of the video
inherits); log weights w_i = ln(N - i + 2) as an option. Lower is better; 0 = no drift.
When m_1 = 0 the relative change is undefined: VDE is 0 if every chunk is 0 too, else +inf
(a video that starts with no sharpness or no motion at all and then gains some).
"""

from __future__ import annotations

import math

import numpy as np

WEIGHTS = ("linear", "log")


def chunk_means(scores: np.ndarray, chunks: int = 10) -> np.ndarray:
    """(T,) per-frame scores -> (chunks,) means of equal chunks; ``ValueError`` if T < chunks."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 1:
        raise ValueError(f"per-frame scores must be 1-D, got shape {scores.shape}")
    if chunks < 2:
        raise ValueError(f"VDE needs at least 2 chunks, got {chunks}")
    if len(scores) < chunks:
        raise ValueError(f"{len(scores)} frames cannot make {chunks} chunks")
    usable = len(scores) - len(scores) % chunks
    return scores[:usable].reshape(chunks, -1).mean(axis=1)


def weights(chunks: int, kind: str = "linear") -> np.ndarray:
    """w_2 .. w_N."""
    if kind not in WEIGHTS:
        raise ValueError(f"weights must be one of {WEIGHTS}, got {kind!r}")
    i = np.arange(2, chunks + 1, dtype=np.float64)
    return chunks - i + 1 if kind == "linear" else np.log(chunks - i + 2)


def vde(chunk_values: np.ndarray, kind: str = "linear") -> float:
    """VDE of chunk means m_1 .. m_N (see the module docstring)."""
    m = np.asarray(chunk_values, dtype=np.float64)
    if m.ndim != 1 or len(m) < 2:
        raise ValueError(f"VDE needs at least 2 chunk values, got shape {m.shape}")
    if not np.isfinite(m).all():
        raise ValueError("chunk values must be finite")
    change = np.abs(m[1:] - m[0])
    if m[0] == 0:
        return 0.0 if not change.any() else math.inf
    return float((weights(len(m), kind) * change / abs(m[0])).sum())


def video_vde(scores: np.ndarray, chunks: int = 10, kind: str = "linear") -> float:
    """VDE of a video's per-frame scores."""
    return vde(chunk_means(scores, chunks), kind)
