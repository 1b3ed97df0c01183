"""Convolutional head: a small residual CNN on the latent grid after the DiT.

A DiT token covers p x p latent cells (16 x 16 pixels here), so moving texture by one cell, the
next frame's typical change at 17.5 FPS, is a permutation *inside* a token that its linear
output layer must learn for every position and content. A 3 x 3 convolution moves a cell by
construction, at every position at once (DIAMOND's U-Net; our probe, scripts/probe_conv_predictor.py,
reached the GPU-trained DiT's next-latent error in 20 CPU minutes). The head sees, per latent
cell: a few channels of the DiT's last token features, the DiT's own output, the frame's noisy
input and its predecessor (copy prior, panned by the action), and adds a correction to the
DiT's output. Its last layer starts at zero, so a model with a fresh head is exactly the model
without one. Frames are independent here (time lives in the DiT's attention), so the KV cache,
drafts and rollback are untouched.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from engine.config import ModelConfig
from engine.model.layers import Linear, unpatchify

FEATURES = 16  # channels per latent cell taken from the DiT's last token features
BLOCKS = 3  # residual 3x3 blocks (receptive field 2 * BLOCKS + 5 cells with the input and output layers)


class ConvHead(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        c, lc, p = cfg.conv_head, cfg.latent_channels, cfg.patch_size
        self.cfg = cfg
        self.features = Linear(cfg.dim, FEATURES * p * p)
        self.inp = nn.Conv2d(FEATURES + 3 * lc, c, 3, padding=1)
        self.convs = nn.ModuleList(nn.Conv2d(c, c, 3, padding=1) for _ in range(BLOCKS))
        self.film = Linear(cfg.dim, 2 * c * BLOCKS)  # per-frame scale/shift from noise level and action
        self.out = nn.Conv2d(c, lc, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, tokens: torch.Tensor, cond: torch.Tensor, out: torch.Tensor, x: torch.Tensor,
                prev: torch.Tensor | None) -> torch.Tensor:
        """tokens (B, F, N, D) and cond (B, F, D): the DiT's last features and conditioning; out,
        x, prev (B, F, C, h, w): its output, the noisy input, the predecessor (None: zeros).
        Returns the correction to ``out`` (B, F, C, h, w), float32."""
        if self.features.rowwise and tokens.shape[0] > 1:  # batch-invariant: one rollout at a time
            return torch.cat([self.forward(*(t[i:i + 1] if t is not None else None
                                             for t in (tokens, cond, out, x, prev)))
                              for i in range(tokens.shape[0])])
        cfg = self.cfg
        dtype = self.inp.weight.dtype
        b, f = out.shape[:2]
        feat = unpatchify(self.features(tokens), cfg.patch_size, FEATURES, cfg.latent_height, cfg.latent_width)
        prev = torch.zeros_like(out) if prev is None else prev
        h = torch.cat([feat.to(dtype), out.to(dtype), x.to(dtype), prev.to(dtype)], dim=2).flatten(0, 1)
        h = self.inp(h)
        film = self.film(cond).reshape(b * f, BLOCKS, 2, -1, 1, 1).to(dtype)
        for i, conv in enumerate(self.convs):
            scale, shift = film[:, i, 0], film[:, i, 1]
            h = h + conv(F.silu(h * (1 + scale) + shift))
        return self.out(F.silu(h)).reshape(out.shape).float()
