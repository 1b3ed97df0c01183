"""Compiling the step in the background while the eager model serves, then swapping it in.

The backend here is a recording pass-through (the FX graphs dynamo traced, run as they are), so
the frames must equal an eager run's bit for bit and the test sees which steps ran compiled;
inductor itself changes the last float bits (measured in docs/benchmarks.md)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from engine.config import EngineConfig
from tests.conftest import action_script, make_engine


class Recorder:
    """A torch.compile backend that counts graphs compiled and calls into them."""

    def __init__(self, fail: bool = False) -> None:
        self.graphs = 0
        self.calls = 0
        self.fail = fail

    def __call__(self, gm: torch.fx.GraphModule, example_inputs: list[Any]) -> Callable[..., Any]:
        if self.fail:
            raise RuntimeError("no C++ compiler here")
        self.graphs += 1

        def run(*args: Any) -> Any:
            self.calls += 1
            return gm.forward(*args)

        return run


def test_a_background_compile_swap_keeps_frames_identical(tiny: EngineConfig) -> None:
    torch._dynamo.reset()
    script = action_script(14)
    ref = make_engine(tiny)
    want = [ref.reset(3), *ref.stream(script)]
    engine = make_engine(tiny, slots=2)
    backend = Recorder()
    got = [engine.reset(3)]
    thread = engine.runner.compile_in_background(backend=backend)
    got += [engine.step(a) for a in script[:3]]  # served while it compiles (or already swapped)
    thread.join(timeout=300)
    assert engine.runner.compile_state == "compiled", engine.runner.compile_state
    graphs, calls = backend.graphs, backend.calls
    assert graphs >= 1
    got += [engine.step(a) for a in script[3:]]
    assert backend.calls > calls  # the steps after the swap ran the compiled code
    for g, w in zip(got, want, strict=True):
        assert torch.equal(g.latent, w.latent) and (g.rgb == w.rgb).all(), g.index
    # A shape it was not traced for (slot 1) runs eager: nothing compiles in the serving thread.
    other = engine.fork(1)
    other.step(script[0])
    assert backend.graphs == graphs


def test_a_failed_background_compile_leaves_the_engine_serving_eager(tiny: EngineConfig) -> None:
    torch._dynamo.reset()
    engine = make_engine(tiny)
    engine.reset(0)
    engine.runner.compile_in_background(backend=Recorder(fail=True)).join(timeout=300)
    assert engine.runner.compile_state.startswith("failed: "), engine.runner.compile_state
    frames = list(engine.stream(action_script(3)))
    assert len(frames) == 3


class Perturbed(Recorder):
    """A backend whose graphs return the model's output (B, F, C, h, w) + 1e-3: a compiled step
    that rounds differently from the eager one, as inductor's does, but visibly. (Other outputs,
    such as tables a layer caches on its first call, stay exact, as inductor keeps them.)"""

    def __call__(self, gm: torch.fx.GraphModule, example_inputs: list[Any]) -> Callable[..., Any]:
        self.graphs += 1

        def run(*args: Any) -> Any:
            out = gm.forward(*args)
            return type(out)(o + 1e-3 if isinstance(o, torch.Tensor) and o.dim() == 5 else o for o in out)

        return run


def test_a_recording_across_the_swap_replays_exactly(tiny: EngineConfig) -> None:
    """Frames made before the swap (eager) and after it (compiled) carry that in their events; a
    replay runs each with the same step and reproduces every frame; ignoring it does not."""
    from app.play.recorder import event_reset, event_step, frame_sha1
    from app.record import play_event
    from app.scenes import SceneStarter

    torch._dynamo.reset()
    script = action_script(10)
    live = make_engine(tiny)
    first = live.reset(3)
    events = [event_reset(3, compiled=first.compiled)]
    sha = [frame_sha1(first.rgb)]
    for i, action in enumerate(script):
        if i == 4:
            live.runner.compile_in_background(backend=Perturbed()).join(timeout=300)
        frame = live.step(action)
        events.append(event_step(action, frame.compiled))
        sha.append(frame_sha1(frame.rgb))
    assert [e.get("compiled", False) for e in events] == [False] * 5 + [True] * 6

    def replay(evs: list[dict[str, Any]]) -> list[str]:
        engine = make_engine(tiny)
        engine.runner.compile_in_background(backend=Perturbed()).join(timeout=300)
        return [frame_sha1(play_event(engine, e, SceneStarter())[0].rgb) for e in evs]

    assert replay(events) == sha
    assert replay([{k: v for k, v in e.items() if k != "compiled"} for e in events])[5:] != sha[5:]


def test_a_checkpoint_compiles_in_a_child_first(tiny: EngineConfig, tmp_path: Path) -> None:
    """From a checkpoint the compile runs in a child process first (which fills the on-disk
    cache the compile here then reads); the swap still keeps frames identical."""
    from engine.checkpoint import save_checkpoint
    from engine.engine import Engine
    from tests.conftest import make_model

    torch._dynamo.reset()
    folder = save_checkpoint(tmp_path / "ckpt", tiny, make_model(tiny).state_dict())
    script = action_script(6)
    ref = Engine.from_checkpoint(folder)
    want = [ref.reset(2), *ref.stream(script)]
    engine = Engine.from_checkpoint(folder)
    engine.runner.compile_in_background(backend="eager").join(timeout=600)
    assert engine.runner.compile_child == "ok" and engine.runner.compile_state == "compiled"
    got = [engine.reset(2), *engine.stream(script)]
    assert all(g.compiled for g in got)
    assert all(torch.equal(g.latent, w.latent) for g, w in zip(got, want, strict=True))
