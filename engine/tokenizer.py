"""Tokenizer: a small convolutional autoencoder between frames and latents.

    RGB (B, H, W, 3) uint8 ──encode──> latent (B, C, H/8, W/8), normalised per channel
    latent ──decode──> RGB uint8

Encoder: a stem conv, then per stage a residual block and a stride-2 conv (x3), then a 1x1
conv to C channels. Decoder: the mirror, upsampling by 1x1 conv + pixel shuffle (cheap on a
CPU). No normalisation layers: they cost CPU time and the data is one game. The latents are
normalised with a per-channel mean/std measured on training frames after training, stored in
the weights, so the world model sees ~unit-variance latents.

Files: ``tokenizer.safetensors`` + ``tokenizer.json`` in a folder (a world-model checkpoint
folder carries its tokenizer this way; see ``engine.checkpoint``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from engine.config import ConfigError, from_dict
from engine.files import read_json_doc, save_pair
from engine.preempt import preempt_point

WEIGHTS = "tokenizer.safetensors"
CONFIG = "tokenizer.json"
FORMAT = "worldstream-tokenizer"


@dataclass(frozen=True)
class TokenizerConfig:
    latent_channels: int = 8  # C
    widths: tuple[int, ...] = (24, 48, 96, 128)  # channels at strides 1, 2, 4, 8
    blocks: tuple[int, ...] = (0, 1, 1, 2)  # residual blocks per stage (decoder side)
    height: int = 120  # frame size it was trained on
    width: int = 160

    def __post_init__(self) -> None:
        if len(self.widths) != len(self.blocks) or len(self.widths) < 2:
            raise ConfigError("tokenizer: widths and blocks need one entry per stage (>= 2)")
        if min(self.widths) <= 0 or self.latent_channels <= 0 or min(self.blocks) < 0:
            raise ConfigError("tokenizer: widths and latent_channels must be > 0, blocks >= 0")
        if self.height % self.stride or self.width % self.stride:
            raise ConfigError(f"tokenizer: frame {self.width}x{self.height} not divisible by stride {self.stride}")

    @property
    def stride(self) -> int:
        return 2 ** (len(self.widths) - 1)


class ResBlock(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(ch, ch, 3, padding=1)
        self.conv2 = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.silu(self.conv1(F.silu(x))))


class Tokenizer(nn.Module):
    def __init__(self, cfg: TokenizerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        w, nb = cfg.widths, cfg.blocks
        # Encoder: stride 1 -> 2 -> 4 -> 8 (one residual block before each downsampling).
        self.enc_in = nn.Conv2d(3, w[0], 3, padding=1)
        self.enc = nn.ModuleList(
            nn.Sequential(ResBlock(w[i]), nn.Conv2d(w[i], w[i + 1], 4, stride=2, padding=1))
            for i in range(len(w) - 1))
        self.enc_out = nn.Sequential(ResBlock(w[-1]), nn.SiLU(), nn.Conv2d(w[-1], cfg.latent_channels, 1))
        # Decoder: stride 8 -> 4 -> 2 -> 1.
        self.dec_in = nn.Conv2d(cfg.latent_channels, w[-1], 3, padding=1)
        stages = []
        for i in range(len(w) - 1, 0, -1):
            stages.append(nn.Sequential(*(ResBlock(w[i]) for _ in range(nb[i])), nn.SiLU(),
                                        nn.Conv2d(w[i], 4 * w[i - 1], 1), nn.PixelShuffle(2)))
        self.dec = nn.ModuleList(stages)
        self.dec_out = nn.Sequential(*(ResBlock(w[0]) for _ in range(nb[0])), nn.SiLU(),
                                     nn.Conv2d(w[0], 3, 3, padding=1))
        self.register_buffer("latent_mean", torch.zeros(cfg.latent_channels))
        self.register_buffer("latent_std", torch.ones(cfg.latent_channels))

    # Pixels are in [-1, 1] inside the network.
    def encode_raw(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> unnormalised latent (B, C, H/s, W/s)."""
        h = self.enc_in(x)
        for stage in self.enc:
            h = stage(h)
        return self.enc_out(h)

    def decode_raw(self, z: torch.Tensor) -> torch.Tensor:
        """Unnormalised latent -> (B, 3, H, W), ~[-1, 1] (not clamped: the loss sees it all)."""
        h = self.dec_in(z)
        for stage in [*self.dec, self.dec_out]:
            preempt_point(h)  # a live frame may be abandoned mid-decode (engine/preempt.py)
            h = stage(h)
        return h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode_raw(self.encode_raw(x))

    def normalise(self, z: torch.Tensor) -> torch.Tensor:
        return (z - self.latent_mean[:, None, None]) / self.latent_std[:, None, None]

    def denormalise(self, z: torch.Tensor) -> torch.Tensor:
        return z * self.latent_std[:, None, None] + self.latent_mean[:, None, None]


def to_unit(rgb: torch.Tensor) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float32 in [-1, 1]."""
    return rgb.permute(0, 3, 1, 2).float() / 127.5 - 1


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) ~[-1, 1] -> (B, H, W, 3) uint8."""
    return ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1)


class TokenizerDecoder:
    """A trained ``Tokenizer`` behind the engine's ``FrameDecoder`` interface, in the engine's
    dtype (one knob: engine/precision.py). bf16 halves decode time on CPUs with native bf16
    (2.8 vs 6.1 ms) at the same held-out PSNR (29.32 vs 29.32 dB over 128 frames) and is 4x slower
    where bf16 is emulated (AVX2). The world trainer encodes its latents in bf16 where native (train/data.py)."""

    def __init__(self, tokenizer: Tokenizer, name: str = "tokenizer",
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> None:
        self.name = name
        self.dtype = dtype
        self.net = tokenizer.to(device, dtype).eval().requires_grad_(False)
        self.net = self.net.to(memory_format=torch.channels_last)

    @torch.inference_mode()
    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        z = self.net.denormalise(latent.to(self.dtype)).contiguous(memory_format=torch.channels_last)
        return to_uint8(self.net.decode_raw(z))

    @torch.inference_mode()
    def encode(self, rgb: torch.Tensor) -> torch.Tensor:
        x = to_unit(rgb).to(self.dtype).contiguous(memory_format=torch.channels_last)
        return self.net.normalise(self.net.encode_raw(x)).float().contiguous()


# ---------------------------------------------------------------------------- files
def save_tokenizer(folder: str | Path, tokenizer: Tokenizer, meta: dict[str, Any] | None = None) -> Path:
    path = Path(folder)
    path.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().float().contiguous().cpu() for k, v in tokenizer.state_dict().items()}
    doc = {"format": FORMAT, "version": 1, "tokenizer": dataclasses.asdict(tokenizer.cfg), "meta": meta or {}}
    save_pair(path, WEIGHTS, tensors, CONFIG, doc)
    return path


def has_tokenizer(folder: str | Path) -> bool:
    """True if ``folder`` holds a tokenizer (both files), False if neither file; half a tokenizer
    is an error (ValueError naming the missing file), never a silent fallback to no tokenizer."""
    path = Path(folder)
    present = {name: (path / name).is_file() for name in (CONFIG, WEIGHTS)}
    if all(present.values()):
        return True
    if any(present.values()):
        missing = next(name for name, ok in present.items() if not ok)
        found = next(name for name, ok in present.items() if ok)
        raise ValueError(f"{path / missing}: missing ({found} is there; a tokenizer folder holds "
                         f"{WEIGHTS} and {CONFIG})")
    return False


def load_tokenizer(folder: str | Path) -> tuple[Tokenizer, dict[str, Any]]:
    """Validated load (never unpickles); raises ValueError naming the file on any mismatch."""
    path = Path(folder)
    cfg_file, w_file = path / CONFIG, path / WEIGHTS
    for f in (cfg_file, w_file):
        if not f.is_file():
            raise ValueError(f"{f}: missing (a tokenizer folder holds {WEIGHTS} and {CONFIG})")
    doc = read_json_doc(cfg_file, "worldstream tokenizer", FORMAT, 1, ValueError)
    try:
        cfg = from_dict(TokenizerConfig, doc.get("tokenizer"), "tokenizer")
    except ConfigError as e:
        raise ValueError(f"{cfg_file}: {e}") from None
    net = Tokenizer(cfg)
    try:
        state = load_file(str(w_file))
    except SafetensorError as e:
        raise ValueError(f"{w_file}: unreadable or truncated safetensors file ({e})") from None
    expected = net.state_dict()
    if set(state) != set(expected) or any(state[k].shape != expected[k].shape for k in expected):
        raise ValueError(f"{w_file}: tensors do not match the tokenizer config in {cfg_file}")
    net.load_state_dict(state)
    return net, doc.get("meta", {})
