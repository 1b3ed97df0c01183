"""scripts/gpu_world.py, the one prepared GPU job: every variant's recipe is a valid ``train world``
run (a typo there would only show on a lent GPU, minutes into its budget)."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import pytest

from train.world import WorldArgs
from train.world_setup import teacher_config

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("gpu_world", ROOT / "scripts" / "gpu_world.py")
assert _spec is not None and _spec.loader is not None
gpu_world = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gpu_world)


@pytest.mark.parametrize("name", sorted(gpu_world.VARIANTS))
def test_every_variant_is_a_valid_run(name: str) -> None:
    args = argparse.Namespace(init=ROOT / "assets" / "models" / "doom-small-teacher", batch=64, lr=3e-4,
                              ema=0.999, device="cuda")
    fields = gpu_world.world_args(args, Path("data"), Path("out") / name, name, 7.0)
    config = teacher_config(WorldArgs(**fields))
    assert config.model.copy_prior and config.model.window_frames == 8
    assert config.model.conv_head == fields.get("conv_head", 0)
