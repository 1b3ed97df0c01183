"""Shared fixtures: the tiny preset with weights large enough that every attended frame matters."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient

from app.engine_spec import EngineSpec
from app.play.server import ServeArgs, create_app
from engine.action import Action
from engine.config import PRESETS, EngineConfig
from engine.engine import Engine
from engine.model.dit import DiT

TINY = EngineSpec(preset="tiny", dtype="fp32")  # the play server's engine in tests
MakeClient = Callable[..., TestClient]
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

def check_generation_option(config: EngineConfig, off: EngineConfig, context: torch.Tensor) -> None:
    """What every per-rollout generation option (anchor, carry) must keep: cached == recompute,
    with and without ``context``, while the window drops nothing (tests/test_cache.py); the option
    acts (``config``'s first step differs from ``off``'s); a draft under another action rolls back
    bit for bit."""
    m = config.model
    horizon = m.sink_frames + m.window_frames
    for ctx in (None, context):
        runs = []
        for recompute in (False, True):
            e = make_engine(config, recompute=recompute)
            k = 1 if ctx is None else len(ctx)
            runs.append([e.reset(1, context=ctx), *e.stream(action_script(horizon - k))])
        for a, b in zip(*runs, strict=True):
            torch.testing.assert_close(a.latent, b.latent, atol=2e-5, rtol=0)
    e, f = make_engine(config), make_engine(off)
    e.reset(1)
    f.reset(1)
    assert not torch.equal(e.step(Action()).latent, f.step(Action()).latent)  # the option did act
    e = make_engine(config)
    e.reset(2)
    e.step(Action.of("forward"))
    e.draft(Action.of("turn_left"))
    again = e.step(Action.of("forward"))
    f = make_engine(config)
    f.reset(2)
    f.step(Action.of("forward"))
    assert torch.equal(again.latent, f.step(Action.of("forward")).latent)



@pytest.fixture
def make_client(tmp_path: Path) -> Iterator[MakeClient]:
    """A factory of test clients for a tiny-preset server; each runs one event loop for its
    whole life (as uvicorn does), so handlers finish their clean-up after a client leaves."""
    clients: list[TestClient] = []

    def make(**kw: object) -> TestClient:
        args = ServeArgs(recordings=str(tmp_path / "rec"), **{"fps": 30.0, **kw})  # type: ignore[arg-type]
        client = TestClient(create_app(args, TINY, page=False))
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for c in clients:
        c.__exit__(None, None, None)
