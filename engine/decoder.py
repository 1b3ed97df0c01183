"""Frame decoder interface (latent <-> RGB uint8) and an untrained stand-in.

The world model never sees pixels. A decoder maps latents (B, C, h, w) to frames
(B, H, W, 3) uint8 and back (``encode``, for ground-truth context frames). The trained
tokenizer arrives with the training issue; until then ``StandInDecoder`` is used.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F

from engine.config import EngineConfig


class FrameDecoder(Protocol):
    name: str

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) float -> (B, H, W, 3) uint8, on the latent's device."""
        ...

    def encode(self, rgb: torch.Tensor) -> torch.Tensor:
        """(B, H, W, 3) uint8 -> (B, C, h, w) float32."""
        ...


class StandInDecoder:
    """NOT TRAINED. A fixed random linear map from each latent pixel to an s x s RGB patch,
    squashed by a sigmoid; ``encode`` is its least-squares inverse. It makes any latent
    visible (and costs about what a small conv decoder would), but it is not a tokenizer."""

    name = "stand-in (untrained)"

    def __init__(self, config: EngineConfig, device: torch.device | str = "cpu", seed: int = 0) -> None:
        channels, s = config.model.latent_channels, config.stride
        g = torch.Generator().manual_seed(seed)
        weight = torch.randn(3 * s * s, channels, generator=g) / channels**0.5  # (3 s^2, C)
        self.stride = s
        self.weight = weight.to(device)
        self.pinv = torch.linalg.pinv(weight).to(device)  # (C, 3 s^2)

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        logits = torch.einsum("oc,bchw->bohw", self.weight, latent.float())  # (B, 3 s^2, h, w)
        rgb = F.pixel_shuffle(logits, self.stride).sigmoid()  # (B, 3, H, W)
        return (rgb * 255).round().to(torch.uint8).permute(0, 2, 3, 1)

    def encode(self, rgb: torch.Tensor) -> torch.Tensor:
        p = (rgb.float().permute(0, 3, 1, 2) / 255).clamp(1 / 512, 1 - 1 / 512)  # (B, 3, H, W)
        logits = F.pixel_unshuffle(torch.logit(p), self.stride)  # (B, 3 s^2, h, w)
        return torch.einsum("co,bohw->bchw", self.pinv, logits)
