"""Checkpoints: a folder with ``model.safetensors`` and ``config.json``. Never unpickles.

Loading validates everything before a tensor reaches a model: the folder and both files exist,
the JSON parses and is a worldstream checkpoint of a known version, the config is complete and
consistent, the safetensors file is whole, and every tensor the model needs is present with the
right shape and a floating dtype. Every failure is a ``CheckpointError`` that names the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from engine.config import ConfigError, EngineConfig, from_dict, to_dict
from engine.files import read_json_doc, save_pair

FORMAT = "worldstream-checkpoint"
VERSION = 1
WEIGHTS = "model.safetensors"
CONFIG = "config.json"
FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


class CheckpointError(ValueError):
    """A checkpoint is missing, truncated, or does not match its config."""


def save_checkpoint(path: str | Path, config: EngineConfig, state: dict[str, torch.Tensor],
                    meta: dict[str, Any] | None = None, dtype: torch.dtype | None = None) -> Path:
    """Write ``state`` (a model state dict) and ``config`` to folder ``path``; returns it."""
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: (v.to(dtype) if dtype is not None else v).detach().contiguous().cpu()
               for k, v in state.items()}
    doc = {"format": FORMAT, "version": VERSION, "engine": to_dict(config), "meta": meta or {}}
    save_pair(folder, WEIGHTS, tensors, CONFIG, doc)
    return folder


def load_config(path: str | Path) -> tuple[EngineConfig, dict[str, Any]]:
    """Read and validate ``config.json`` of checkpoint folder ``path``: (config, meta)."""
    file = _require(Path(path), CONFIG)
    doc = read_json_doc(file, "worldstream checkpoint", FORMAT, VERSION, CheckpointError)
    try:
        config = from_dict(EngineConfig, doc.get("engine"), "engine")
    except ConfigError as e:
        raise CheckpointError(f"{file}: {e}") from None
    meta = doc.get("meta", {})
    if not isinstance(meta, dict):
        raise CheckpointError(f"{file}: meta must be an object")
    return config, meta


def load_weights(path: str | Path, expected: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Read ``model.safetensors`` and check it against ``expected`` (a model's state dict):
    same names, same shapes, floating dtypes. Returns tensors cast to the expected dtypes."""
    file = _require(Path(path), WEIGHTS)
    try:
        with safe_open(str(file), framework="pt") as f:
            names = set(f.keys())
            missing = sorted(set(expected) - names)
            unexpected = sorted(names - set(expected))
            if missing or unexpected:
                raise CheckpointError(f"{file}: tensor names do not match the config's model: "
                                      f"missing {_few(missing)}, unexpected {_few(unexpected)}")
            out: dict[str, torch.Tensor] = {}
            for name, want in expected.items():
                tensor = f.get_tensor(name)
                if tuple(tensor.shape) != tuple(want.shape):
                    raise CheckpointError(f"{file}: {name} has shape {tuple(tensor.shape)}, "
                                          f"the config needs {tuple(want.shape)}")
                if tensor.dtype not in FLOAT_DTYPES:
                    raise CheckpointError(f"{file}: {name} has dtype {tensor.dtype}, expected a float dtype")
                out[name] = tensor.to(want.dtype)
    except SafetensorError as e:
        raise CheckpointError(f"{file}: unreadable or truncated safetensors file ({e})") from None
    return out


def _require(folder: Path, name: str) -> Path:
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: checkpoint folder not found")
    file = folder / name
    if not file.is_file():
        raise CheckpointError(f"{file}: missing (a checkpoint folder holds {WEIGHTS} and {CONFIG})")
    return file


def _few(names: list[str]) -> str:
    return (str(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")) if names else "none"
