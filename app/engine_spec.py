"""Which engine a front end runs: model or preset, sampler overrides, dtype, device.

play, record and replay build their engine from one ``EngineSpec``; recordings store its
``describe()`` in meta.json so that a replay can build the identical engine again.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from engine.config import PRESETS, EngineConfig, SamplerConfig, get_preset
from engine.engine import Engine
from engine.precision import CHOICES, DTYPES, resolve_dtype, resolve_int8, set_threads

# The model `make play` serves: resolved against the source tree (make installs it editable).
BUNDLED_MODEL = Path(__file__).resolve().parents[1] / "assets" / "models" / "doom-small"


def default_model(model: str | None, preset: str | None) -> str | None:
    """The model a command uses: ``model`` if given, none for a preset, else the bundled model."""
    if model is not None or preset is not None:
        return model
    if not BUNDLED_MODEL.is_dir():
        raise ValueError(f"the bundled model {BUNDLED_MODEL} is missing; pass --model or --preset")
    return str(BUNDLED_MODEL)


@dataclass(frozen=True)
class EngineSpec:
    model: str | None = None  # checkpoint folder; None: ``preset`` with random weights
    preset: str = "small"
    steps: int | None = None  # override the checkpoint's sampler steps
    sampler: str | None = None  # override the sampler kind
    dtype: str = "auto"  # "auto" is resolved at construction (engine/precision.py): describe() is concrete
    device: str = "cpu"
    weight_seed: int = 0  # random weights of a preset
    compile: bool = False  # torch.compile the model step (first frames compile: seconds)
    threads: int | None = None  # torch intra-op threads (process-wide); None: torch's default
    int8: str = "off"  # block linears in int8: auto | on | off, resolved at construction (describe() is concrete)

    def __post_init__(self) -> None:
        if self.model is None and self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; presets are {sorted(PRESETS)}")
        if self.model is not None and not Path(self.model).is_dir():
            raise ValueError(f"model folder {self.model} does not exist")
        if self.dtype not in CHOICES:
            raise ValueError(f"dtype must be one of {list(CHOICES)}, got {self.dtype!r}")
        if self.steps is not None and not 1 <= self.steps <= 1000:
            raise ValueError("steps must be in 1..1000")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError("device cuda: no CUDA device is available on this machine")
        object.__setattr__(self, "dtype", resolve_dtype(self.dtype, self.device))
        object.__setattr__(self, "int8", resolve_int8(self.int8, self.device, self.dtype))
        if self.threads is not None and not 1 <= self.threads <= 1024:
            raise ValueError("--threads must be in 1..1024")

    def config(self) -> EngineConfig:
        if self.model is not None:
            from engine.checkpoint import load_config

            config = load_config(self.model)[0]
        else:
            config = get_preset(self.preset)
        return dataclasses.replace(config, sampler=self.sampler_config(config.sampler))

    def sampler_config(self, base: SamplerConfig) -> SamplerConfig:
        out = base
        if self.sampler is not None:
            out = dataclasses.replace(out, kind=self.sampler)
        if self.steps is not None:
            out = dataclasses.replace(out, steps=self.steps)
        return out

    @property
    def name(self) -> str:
        return Path(self.model).name if self.model is not None else f"preset:{self.preset} (random weights)"

    def build(self, slots: int = 1, speculate: int = 0) -> Engine:
        """The engine on slot 0 of a runner with ``slots`` cache slots (more rollouts: an
        ``engine.scheduler.Scheduler`` on it), able to draft ``speculate`` frames ahead."""
        config = self.config()
        set_threads(self.threads)
        opts: dict[str, Any] = dict(device=self.device, dtype=DTYPES[self.dtype], slots=slots,
                                    sampler=config.sampler, compile=self.compile,
                                    spare_frames=max(2, speculate + 1), int8=self.int8 == "on")
        if self.model is not None:
            return Engine.from_checkpoint(self.model, **opts)
        return Engine.build(config, seed=self.weight_seed, **opts)

    def describe(self) -> dict[str, Any]:
        """What a recording's meta.json stores (``from_description`` rebuilds the spec)."""
        sampler = self.config().sampler
        return {"model": str(Path(self.model).resolve()) if self.model is not None else None,
                "preset": self.preset, "sampler": sampler.kind, "steps": sampler.steps,
                "dtype": self.dtype, "device": self.device, "weight_seed": self.weight_seed,
                "compile": self.compile, "int8": self.int8,
                "threads": self.threads}  # threads: CPU sums may depend on them

    @classmethod
    def from_description(cls, d: dict[str, Any]) -> EngineSpec:
        try:
            return cls(model=d["model"], preset=d["preset"], steps=d["steps"], sampler=d["sampler"],
                       dtype=d["dtype"], device=d.get("device", "cpu"), weight_seed=d.get("weight_seed", 0),
                       compile=bool(d.get("compile", False)), threads=d.get("threads"),
                       int8=d.get("int8", "off"))  # recordings made before int8 existed ran float
        except KeyError as e:
            raise ValueError(f"recording meta lacks the engine field {e}") from None
