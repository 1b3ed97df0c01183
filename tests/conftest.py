"""Shared fixtures: the tiny preset with weights large enough that every attended frame matters."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from engine.action import Action
from engine.config import PRESETS, EngineConfig
from engine.engine import Engine
from engine.model.dit import DiT

TEST_STD = 0.2  # at 0.02 attention barely moves the output and cache bugs could hide below fp32 noise


@pytest.fixture(autouse=True)
def _deterministic() -> None:
    torch.manual_seed(0)


@pytest.fixture
def tiny() -> EngineConfig:
    return PRESETS["tiny"]


def make_model(config: EngineConfig, seed: int = 0, std: float = TEST_STD) -> DiT:
    model = DiT(config.model)
    model.init_weights(torch.Generator().manual_seed(seed), std=std)
    return model.eval()


def make_engine(config: EngineConfig, seed: int = 0, **kwargs: Any) -> Engine:
    return Engine.build(config, make_model(config, seed), **kwargs)


def action_script(n: int) -> list[Action]:
    cycle = [Action.of("forward"), Action.of("forward", "turn_left"), Action(), Action.of("attack"),
             Action.of("strafe_right", "use"), Action.of("backward", "turn_right")]
    return [cycle[(i // 2) % len(cycle)] for i in range(n)]
