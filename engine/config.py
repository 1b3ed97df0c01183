"""Configuration: frozen dataclasses and the ``PRESETS`` registry.

Config is parsed at the edge (CLI, checkpoint JSON) into these dataclasses; nothing below the
edge reads raw dicts. ``from_dict`` is strict: unknown or missing keys raise ``ConfigError``.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from typing import Any, TypeVar


class ConfigError(ValueError):
    """A configuration is malformed or inconsistent."""


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of the block-causal DiT and the temporal contract it was trained with."""

    latent_channels: int  # C of one latent frame
    latent_height: int  # h of one latent frame (pixels / tokenizer stride)
    latent_width: int  # w of one latent frame
    patch_size: int  # p: a token covers p x p latent pixels (latents are padded to a multiple)
    dim: int  # transformer width D
    depth: int  # number of DiT blocks
    heads: int  # attention heads; head_dim = dim // heads
    mlp_ratio: float = 4.0
    num_actions: int = 8  # multi-hot buttons per frame (see engine/action.py)
    sink_frames: int = 1  # first frames of a rollout kept forever (attention sinks)
    window_frames: int = 16  # most recent frames attended (trained temporal window)
    context_sigma: float = 0.0  # noise level at which finished frames are written as context
    rope_theta: float = 10000.0
    # Copy prior (engine/model/copy_prior.py): each frame also gets its predecessor's latent and
    # the denoiser is preconditioned so that its default output is the predecessor (copy-last).
    copy_prior: bool = False
    copy_tau: float = 0.5  # prior std of a frame's change from its predecessor (latent units)
    copy_denoised: bool = False  # copy the predecessor's posterior mean g(c) prev, not the noisy context (no fade)
    # copy prior: the predecessor moved right by this many latent cells per pressed button (summed; one
    # entry per action, () = none) in the top ``copy_shift_rows`` rows (0 = all): turning pans the view
    copy_shift: tuple[int, ...] = ()
    copy_shift_rows: int = 0
    copy_residual: float = 1.0  # copy prior, inference knob: x0 = base + this * scale F (0: the copy alone)
    latent_clip: float = 0.0  # > 0: generated latents are clamped to [-clip, clip] (the tokenizer's range)
    # inference: each generated frame's per-channel mean, spread and detail pulled this fraction of
    # the way back to the rollout's true context's (engine/anchor.py; 0 = off): a restoring force
    stats_anchor: float = 0.0
    # inference: this fraction of each generated frame's high-pass part (its texture) replaced by
    # the previous frame's, panned by the action (engine/carry.py; 0 = off): detail cannot fade
    detail_carry: float = 0.0
    # > 0: a residual CNN of this many channels on the latent grid corrects the DiT's output
    # (engine/model/conv_head.py): moving texture by a cell is easy for a convolution; 0 = none
    conv_head: int = 0

    def __post_init__(self) -> None:
        positive = ("latent_channels", "latent_height", "latent_width", "patch_size", "dim",
                    "depth", "heads", "num_actions", "window_frames")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"model.{name} must be > 0, got {getattr(self, name)}")
        if self.sink_frames < 0:
            raise ConfigError(f"model.sink_frames must be >= 0, got {self.sink_frames}")
        if self.dim % self.heads:
            raise ConfigError(f"model.dim ({self.dim}) must be divisible by heads ({self.heads})")
        if self.head_dim % 2 or self.head_dim < 6:
            raise ConfigError(f"head_dim ({self.head_dim}) must be even and >= 6 for 3-axis RoPE")
        if not 0.0 <= self.context_sigma < 1.0:
            raise ConfigError(f"model.context_sigma must be in [0, 1), got {self.context_sigma}")
        if self.mlp_ratio <= 0:
            raise ConfigError(f"model.mlp_ratio must be > 0, got {self.mlp_ratio}")
        if self.latent_clip < 0:
            raise ConfigError(f"model.latent_clip must be >= 0 (0 = off), got {self.latent_clip}")
        if self.copy_tau <= 0:
            raise ConfigError(f"model.copy_tau must be > 0, got {self.copy_tau}")
        if self.copy_shift and len(self.copy_shift) != self.num_actions:
            raise ConfigError(f"model.copy_shift needs one entry per action ({self.num_actions}), "
                              f"got {len(self.copy_shift)}")
        if any(abs(d) >= self.latent_width for d in self.copy_shift):
            raise ConfigError(f"model.copy_shift entries must be < latent_width ({self.latent_width}) in size")
        if not 0 <= self.copy_shift_rows <= self.latent_height:
            raise ConfigError(f"model.copy_shift_rows must be in [0, {self.latent_height}], got {self.copy_shift_rows}")
        if not 0 <= self.stats_anchor <= 1:
            raise ConfigError(f"model.stats_anchor must be in [0, 1], got {self.stats_anchor}")
        if not 0 <= self.detail_carry <= 1:
            raise ConfigError(f"model.detail_carry must be in [0, 1], got {self.detail_carry}")
        if self.conv_head < 0:
            raise ConfigError(f"model.conv_head must be >= 0 (0 = none), got {self.conv_head}")
        if not 0 <= self.copy_residual <= 1:
            raise ConfigError(f"model.copy_residual must be in [0, 1], got {self.copy_residual}")
        if self.copy_shift and not (self.copy_prior or self.detail_carry > 0):
            raise ConfigError("model.copy_shift applies to copy_prior models and to detail_carry")

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads

    @property
    def grid(self) -> tuple[int, int]:
        """Token grid (rows, cols) of one frame after padding the latent to the patch size."""
        p = self.patch_size
        return math.ceil(self.latent_height / p), math.ceil(self.latent_width / p)

    @property
    def tokens_per_frame(self) -> int:
        rows, cols = self.grid
        return rows * cols

    @property
    def patch_dim(self) -> int:
        return self.latent_channels * self.patch_size**2


@dataclass(frozen=True)
class SamplerConfig:
    """How a frame is sampled: which pure sampler, how many steps, which schedule."""

    kind: str = "consistency"  # "euler" (flow-matching teacher) | "consistency" (student)
    steps: int = 1
    schedule: str = "linear"  # "linear" | "shifted"
    shift: float = 1.0  # only for schedule="shifted" (SD3-style timestep shift)
    temperature: float = 1.0  # scale of the starting noise (1: the trained law; 0: the same frame every time)

    def __post_init__(self) -> None:
        if self.kind not in ("euler", "consistency"):
            raise ConfigError(f"sampler.kind must be 'euler' or 'consistency', got {self.kind!r}")
        if self.schedule not in ("linear", "shifted"):
            raise ConfigError(f"sampler.schedule must be 'linear' or 'shifted', got {self.schedule!r}")
        if not 1 <= self.steps <= 1000:
            raise ConfigError(f"sampler.steps must be in [1, 1000], got {self.steps}")
        if self.shift <= 0:
            raise ConfigError(f"sampler.shift must be > 0, got {self.shift}")
        if not 0 <= self.temperature <= 2:
            raise ConfigError(f"sampler.temperature must be in [0, 2], got {self.temperature}")


@dataclass(frozen=True)
class FrameConfig:
    """The pixel side: RGB frame size and the game clock."""

    height: int = 120
    width: int = 160
    fps: float = 17.5  # ViZDoom at frame skip 2

    def __post_init__(self) -> None:
        if self.height <= 0 or self.width <= 0 or self.fps <= 0:
            raise ConfigError(f"frame size and fps must be > 0, got {self}")


@dataclass(frozen=True)
class EngineConfig:
    """Everything needed to build an engine: model, sampler, frames."""

    model: ModelConfig
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    frame: FrameConfig = field(default_factory=FrameConfig)

    def __post_init__(self) -> None:
        m, f = self.model, self.frame
        if f.height % m.latent_height or f.width % m.latent_width:
            raise ConfigError(
                f"frame {f.width}x{f.height} is not an integer multiple of the latent "
                f"{m.latent_width}x{m.latent_height}")
        if f.height // m.latent_height != f.width // m.latent_width:
            raise ConfigError("frame/latent stride must be the same along height and width")

    @property
    def stride(self) -> int:
        """Pixels per latent pixel along each axis (the tokenizer's downsampling)."""
        return self.frame.height // self.model.latent_height


PRESETS: dict[str, EngineConfig] = {
    # Tests: a few tokens per frame, a short window that wraps quickly.
    "tiny": EngineConfig(
        model=ModelConfig(latent_channels=4, latent_height=3, latent_width=4, patch_size=2,
                          dim=32, depth=2, heads=2, sink_frames=1, window_frames=3),
        sampler=SamplerConfig(kind="consistency", steps=2),
        frame=FrameConfig(height=12, width=16, fps=17.5),
    ),
    # The Doom model: 160x120 frames, 8x latent (20x15), 2x2 patches -> 80 tokens per frame.
    "small": EngineConfig(
        model=ModelConfig(latent_channels=8, latent_height=15, latent_width=20, patch_size=2,
                          dim=256, depth=8, heads=4, sink_frames=1, window_frames=16),
        sampler=SamplerConfig(kind="consistency", steps=1),
        frame=FrameConfig(height=120, width=160, fps=17.5),
    ),
    # NFD-310M-shaped, random weights, GPU speed benchmarks only: 384x224, 8x latent, 336 tokens.
    "nfd-310m": EngineConfig(
        model=ModelConfig(latent_channels=16, latent_height=28, latent_width=48, patch_size=2,
                          dim=1024, depth=16, heads=16, sink_frames=1, window_frames=16),
        sampler=SamplerConfig(kind="consistency", steps=2),
        frame=FrameConfig(height=224, width=384, fps=20.0),
    ),
}


def get_preset(name: str) -> EngineConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}") from None


T = TypeVar("T")


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def from_dict(cls: type[T], data: Any, where: str = "config") -> T:
    """Build dataclass ``cls`` from ``data`` strictly: every key known, every required key present,
    every leaf of the declared type."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected an object, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; expected {sorted(fields)}")
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        if name not in data:
            required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            if required:
                raise ConfigError(f"{where}: missing key {name!r}")
            continue
        kwargs[name] = _convert(hints[name], data[name], f"{where}.{name}")
    return cls(**kwargs)


def _convert(tp: Any, value: Any, where: str) -> Any:
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)  # type: ignore[arg-type]
    if tp is bool and isinstance(value, bool):
        return value
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is float and number:
        return float(value)
    if tp is int and number and float(value).is_integer():
        return int(value)
    if tp is str and isinstance(value, str):
        return value
    if typing.get_origin(tp) is tuple and isinstance(value, (list, tuple)):
        item = typing.get_args(tp)[0]
        return tuple(_convert(item, v, f"{where}[{i}]") for i, v in enumerate(value))
    raise ConfigError(f"{where}: expected {getattr(tp, '__name__', tp)}, got {value!r}")
