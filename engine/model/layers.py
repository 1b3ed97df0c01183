"""Building blocks of the DiT: embedders, adaLN modulation, RMSNorm, 3-axis RoPE, patchify."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters, same checkpoints) that can run batch-invariant: with
    ``rowwise`` set, a (B, ...) input is B matrix products of the size one rollout makes. GEMM
    libraries choose how to split and sum by matrix size (on CPU, a K=1024 product of 160 rows
    and one of 640 rows differ in the last bits), so without it a rollout's frames would depend
    on who else shares its batch, and a recording made while others played would not replay
    bit for bit. The runner sets it for inference on CPU; training leaves it off."""

    rowwise = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.rowwise or x.dim() < 3 or x.shape[0] == 1:
            return super().forward(x)
        return torch.cat([super(Linear, self).forward(x[i : i + 1]) for i in range(x.shape[0])])


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: x (B, F, N, D), shift/scale (B, F, D), one per frame."""
    return x * (1 + scale[:, :, None]) + shift[:, :, None]


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


class SigmaEmbedder(nn.Module):
    """Noise level sigma in [0, 1] -> (.., D) via sinusoidal features and an MLP."""

    def __init__(self, dim: int, freq_dim: int = 256) -> None:
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(Linear(freq_dim, dim), nn.SiLU(), Linear(dim, dim))

    def forward(self, sigma: torch.Tensor) -> torch.Tensor:
        half = self.freq_dim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=sigma.device) / half)
        args = (sigma.float() * 1000.0)[..., None] * freqs  # (.., half)
        feats = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        return self.mlp(feats.to(self.mlp[0].weight.dtype))


class Rope3D:
    """Rotary embedding over (time, row, col). head_dim is split into pairs: time gets the rest
    after rows and cols take a third each.

    Spatial angles are fixed per token. Temporal angles come from each frame's absolute index
    (computed in float64, so they stay exact over long rollouts); RoPE depends only on the
    offset q - k, which the window bounds by W. Keys of sink frames (index < S) have their
    temporal part zeroed: a sink has no temporal position, so offsets to it never grow.
    """

    def __init__(self, head_dim: int, grid: tuple[int, int], theta: float, sink_frames: int) -> None:
        pairs = head_dim // 2
        self.spatial_pairs = pairs // 3
        self.time_pairs = pairs - 2 * self.spatial_pairs
        self.sink_frames = sink_frames
        self.theta = theta
        rows, cols = grid
        r = torch.arange(rows, dtype=torch.float64).repeat_interleave(cols)  # (N,)
        c = torch.arange(cols, dtype=torch.float64).repeat(rows)
        angles = torch.cat([r[:, None] * self._freqs(self.spatial_pairs),
                            c[:, None] * self._freqs(self.spatial_pairs)], dim=-1)  # (N, 2*sp)
        self._host = (angles, self._freqs(self.time_pairs))
        self._device: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def _on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(spatial angles, temporal freqs) on ``device``, copied once (not in every step)."""
        if device not in self._device:
            self._device[device] = (self._host[0].to(device), self._host[1].to(device))
        return self._device[device]

    def _freqs(self, pairs: int) -> torch.Tensor:
        return self.theta ** (-torch.arange(pairs, dtype=torch.float64) / max(pairs, 1))

    def tables(self, frame_index: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(cos_q, sin_q, cos_k, sin_k), each (B, 1, F*N, pairs) float32. The key tables are
        the query tables with the temporal pairs of sink frames zeroed."""
        device = frame_index.device
        b, f = frame_index.shape
        spatial, time_freqs = self._on(device)
        n = spatial.shape[0]
        t = frame_index.double()[:, :, None] * time_freqs  # (B, F, tp)
        angles = torch.cat([t[:, :, None, :].expand(b, f, n, -1),
                            spatial.expand(b, f, n, -1)], dim=-1).reshape(b, 1, f * n, -1)
        cos, sin = angles.cos().float(), angles.sin().float()
        keep = torch.ones(b, f, 1, cos.shape[-1], device=device)
        keep[..., : self.time_pairs] = (frame_index >= self.sink_frames)[:, :, None, None].float()
        keep = keep.expand(b, f, n, -1).reshape(b, 1, f * n, -1)
        return cos, sin, cos * keep, sin * keep

    @staticmethod
    def apply(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """x: (B, H, L, Dh). Rotates each pair (x[2i], x[2i+1]) by the table's angle (pairs whose
        table entries are zero come out zero)."""
        xf = x.float().unflatten(-1, (-1, 2))  # (B, H, L, pairs, 2)
        x0, x1 = xf[..., 0], xf[..., 1]
        out = torch.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], dim=-1)
        return out.flatten(-2).to(x.dtype)


def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """(B, F, C, h, w) -> (B, F, rows*cols, C*p*p), zero-padding h and w up to multiples of p."""
    b, f, c, h, w = x.shape
    x = F.pad(x, (0, -w % p, 0, -h % p))
    rows, cols = x.shape[-2] // p, x.shape[-1] // p
    x = x.reshape(b, f, c, rows, p, cols, p).permute(0, 1, 3, 5, 2, 4, 6)
    return x.reshape(b, f, rows * cols, c * p * p)


def unpatchify(x: torch.Tensor, p: int, channels: int, height: int, width: int) -> torch.Tensor:
    """(B, F, rows*cols, C*p*p) -> (B, F, C, height, width), cropping the padding."""
    b, f = x.shape[:2]
    rows, cols = -(-height // p), -(-width // p)
    x = x.reshape(b, f, rows, cols, channels, p, p).permute(0, 1, 4, 2, 5, 3, 6)
    x = x.reshape(b, f, channels, rows * p, cols * p)
    return x[..., :height, :width]
