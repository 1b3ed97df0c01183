"""Measure the copy prior's pan (``model.copy_shift``) from training latents.

For every action button, the whole-cell horizontal shift of the predecessor that best predicts
the frames made with that button pressed, kept where it beats copying by ``min_gain`` (relative
squared error, in the frame's upper half, where the view is); then the rows it applies to: the
leading rows in which the shifted copies, summed over the panning buttons, beat plain copies.
Nothing here knows the game: a turn in Doom measures +-1 cell, moving 0 (see docs/training.md).
"""

from __future__ import annotations

import torch

from engine.model.copy_prior import pan
from train.data import LatentEpisode


def _shift(z: torch.Tensor, dx: int) -> torch.Tensor:
    """(N, C, h, w) latents moved right by dx cells, all rows, by the engine's own ``pan`` (so the
    measured sign and edge handling are the ones the model will use)."""
    return pan(z[None], torch.ones(1, len(z), 1), torch.tensor([float(dx)]), 0)[0]


def measure_pan(episodes: list[LatentEpisode], max_shift: int = 3, min_gain: float = 0.05,
                min_frames: int = 50, max_pairs: int = 4000,
                seed: int = 0) -> tuple[tuple[int, ...], int, dict[str, list[float]]]:
    """(shift per button, rows, per-button squared error by shift -max_shift..max_shift)."""
    if not episodes:
        raise ValueError("measure_pan needs at least one episode")
    prev = torch.cat([e.latents[:-1] for e in episodes]).float()
    cur = torch.cat([e.latents[1:] for e in episodes]).float()
    act = torch.cat([e.actions[1:] for e in episodes])
    h = prev.shape[-2]
    top = max(1, h // 2)
    shifts = range(-max_shift, max_shift + 1)
    g = torch.Generator().manual_seed(seed)
    chosen: list[int] = []
    errors: dict[str, list[float]] = {}
    per_row: list[torch.Tensor] = []  # (h,) error gain of each panning button's shift, by row
    for b in range(act.shape[1]):
        idx = torch.nonzero(act[:, b] > 0.5).flatten()
        if len(idx) < min_frames:
            chosen.append(0)
            continue
        idx = idx[torch.randperm(len(idx), generator=g)[:max_pairs]]
        p, c = prev[idx], cur[idx]
        rows = torch.stack([((c - _shift(p, dx)) ** 2).mean(dim=(0, 1, 3)) for dx in shifts])  # (S, h)
        err = rows[:, :top].mean(dim=1)
        errors[str(b)] = [float(e) for e in err]
        best = int(torch.argmin(err))
        copy = err[max_shift]
        dx = shifts[best] if float(err[best]) < (1 - min_gain) * float(copy) else 0
        chosen.append(dx)
        if dx:
            per_row.append(rows[max_shift] - rows[best])
    if not per_row:
        return tuple(chosen), 0, errors
    gain = torch.stack(per_row).sum(dim=0)
    n = 0
    while n < h and float(gain[n]) > 0:
        n += 1
    return tuple(chosen), (0 if n == h else n), errors
