"""Preemption: a step whose action changed while it ran is abandoned between model blocks and
leaves no trace; the frame made again for the new action equals the frame of a run that never
began the stale step, bit for bit. The play server echoes the new input with that frame and
records the action it used."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from app.play.protocol import Input
from app.play.server import Hub, ServeArgs
from engine.action import Action
from engine.config import EngineConfig
from engine.engine import Engine, generate
from engine.preempt import Preempted, armed, preempt_point
from engine.scheduler import Scheduler
from engine.tokenizer import Tokenizer, TokenizerConfig, TokenizerDecoder
from tests.conftest import TINY, action_script, make_engine
from tests.test_scheduler import _context, _exact, _noisy

FWD, LEFT = Action.of("forward"), Action.of("turn_left")


def _steps(cfg: EngineConfig, steps: int) -> EngineConfig:
    return _noisy(dataclasses.replace(cfg, sampler=dataclasses.replace(cfg.sampler, steps=steps)))


def _after(n: int) -> Callable[[], bool]:
    """Stale from the n-th check on (0: the first preemption point of the step)."""
    calls = [0]

    def stale() -> bool:
        calls[0] += 1
        return calls[0] > n

    return stale


def test_nothing_armed_costs_nothing_and_armed_points_raise() -> None:
    x = torch.zeros(2)
    with torch.inference_mode():
        preempt_point(x)  # nothing armed: a no-op
        with armed(lambda: False):
            preempt_point(x)
        with armed(lambda: True), pytest.raises(Preempted):
            preempt_point(x)
        with armed(None):
            preempt_point(x)
        preempt_point(x)  # disarmed on exit
    with armed(lambda: True):
        preempt_point(x)  # gradients on (training): never a point


@pytest.mark.parametrize("recompute", [False, True])
@pytest.mark.parametrize(("steps", "at"), [(1, 0), (1, 1), (2, 1), (2, 3)])
def test_an_abandoned_step_leaves_no_trace(tiny: EngineConfig, steps: int, at: int, recompute: bool) -> None:
    """Abandoned at check ``at`` (tiny: 2 blocks a forward; with 2 denoising steps, checks 2-3 are
    in the second forward, after the previous frame was committed by the first), then made
    again with another action: every frame equals the run that never began the stale step."""
    cfg = _steps(tiny, steps)
    script = action_script(10)
    engine = make_engine(cfg, recompute=recompute)
    frames = [engine.reset(4, context=_context(cfg, 2, 0))]
    for t, action in enumerate(script):
        if t in (2, 6):  # past the tiny window (3): the ring has wrapped by the second one
            with armed(_after(at)), pytest.raises(Preempted):
                generate([engine], [LEFT if action != LEFT else FWD])
        frames.append(engine.step(action))
    clean = make_engine(cfg, recompute=recompute)
    _exact(frames, [clean.reset(4, context=_context(cfg, 2, 0)), *clean.stream(script)])


@pytest.mark.parametrize("at", [2, 4, 6])
def test_a_step_abandoned_while_decoding_leaves_no_trace(tiny: EngineConfig, at: int) -> None:
    """With a trained-style decoder (the tokenizer's, which has points between its stages): 2
    denoising steps of 2 blocks are checks 0-3, the decode 4-6. The frame was finished and the
    previous one committed: all of it is undone."""
    cfg = _steps(tiny, 2)
    m = cfg.model
    tok = TokenizerConfig(latent_channels=m.latent_channels, widths=(4, 8, 8), blocks=(0, 1, 0),
                          height=cfg.frame.height, width=cfg.frame.width)

    def engine() -> Engine:
        with torch.random.fork_rng():
            torch.manual_seed(1)
            net = Tokenizer(tok)
        return make_engine(cfg, decoder=TokenizerDecoder(net))

    script = action_script(7)
    e = engine()
    frames = [e.reset(4)]
    for t, action in enumerate(script):
        if t in (1, 5):
            with armed(_after(at)), pytest.raises(Preempted):
                generate([e], [LEFT if action != LEFT else FWD])
        frames.append(e.step(action))
    clean = engine()
    _exact(frames, [clean.reset(4), *clean.stream(script)])


@pytest.mark.parametrize("steps", [1, 2])
def test_the_scheduler_makes_the_frame_again_for_the_new_action(tiny: EngineConfig, steps: int) -> None:
    """Two rollouts in one batch; one player's key changes mid-step: the batch is abandoned and
    made again with the actions as they are then (once: a change during the redo waits for
    the next tick). Both rollouts equal runs that never had the stale step."""
    cfg = _steps(tiny, steps)
    sched = Scheduler.of(make_engine(cfg, slots=2))
    a, b = sched.rollouts[0], sched.join()
    got = [[a.reset(1)], [b.reset(2, context=_context(cfg, 2, 3))]]
    sa, sb = action_script(8), action_script(9)[1:]
    want_a = list(sa)
    for t in range(8):
        calls = [0]
        later = LEFT if sa[t] != LEFT else FWD

        def refresh(t: int = t, calls: list[int] = calls, later: Action = later) -> list[Action]:
            calls[0] += 1  # tick 3: the key changes at the 2nd check and back after the redo began
            return [later if t == 3 and calls[0] in (2, 3) else sa[t], sb[t]]

        made = sched.step([(a, sa[t]), (b, sb[t])], refresh=refresh)
        if t == 3:
            want_a[t] = later
            assert "preempted" in made[0].timings_ms and made[0].action == later and made[1].action == sb[t]
        else:
            assert "preempted" not in made[0].timings_ms
        for g, f in zip(got, made, strict=True):
            g.append(f)
    assert sched.stats.preempted == 1
    ref = make_engine(cfg, slots=2)
    _exact(got[0], [ref.reset(1), *ref.stream(want_a)])
    ref_b = make_engine(cfg, slots=2)
    _exact(got[1], [ref_b.reset(2, context=_context(cfg, 2, 3)), *ref_b.stream(sb)])


def test_no_preemption_when_a_draft_was_taken(tiny: EngineConfig) -> None:
    engine = make_engine(tiny, spare_frames=2)
    sched = Scheduler.of(engine, speculate=1)
    engine.reset(0)
    sched.step([(engine, FWD)])
    assert sched.draft() == 1
    frame = sched.step([(engine, FWD)], refresh=lambda: [LEFT])  # the draft is the frame: nothing runs
    assert frame[0].action == FWD and sched.stats.accepted == 1 and sched.stats.preempted == 0


def test_a_draft_abandoned_midway_leaves_no_trace_and_keeps_earlier_drafts(tiny: EngineConfig) -> None:
    cfg = _noisy(tiny)
    engine = make_engine(cfg, spare_frames=3)
    sched = Scheduler.of(engine, speculate=2)
    frames = [engine.reset(2)]
    frames += sched.step([(engine, FWD)])
    assert sched.draft(stale=lambda: False) == 1
    assert sched.draft(stale=_after(1)) == 0  # the key changed while the second draft ran
    assert engine.drafts == 1 and sched.stats.preempted == 1 and sched.stats.drafted == 1
    for action in (FWD, FWD, LEFT):
        frames += sched.step([(engine, action)])
    assert sched.stats.accepted == 1
    clean = make_engine(cfg, spare_frames=3)
    _exact(frames, [clean.reset(2), *clean.stream([FWD, FWD, FWD, LEFT])])


def test_a_compiled_step_keeps_its_preemption_points(tiny: EngineConfig) -> None:
    """Under torch.compile the point is one op in the graph (no graph break) and still raises."""
    torch._dynamo.reset()
    model = make_engine(tiny).runner.model
    compiled = torch.compile(model, backend="aot_eager", dynamic=False)
    m = tiny.model
    x = torch.zeros(1, 1, m.latent_channels, m.latent_height, m.latent_width)
    sigma, action = torch.ones(1, 1), torch.zeros(1, 1, m.num_actions)
    from engine.cache import FullContext

    ctx = FullContext(torch.zeros(1, 1, dtype=torch.long), m.tokens_per_frame, m.sink_frames, m.window_frames)
    with torch.inference_mode():
        want = model(x, sigma, action, ctx)
        torch.testing.assert_close(compiled(x, sigma, action, ctx), want)
        with armed(_after(1)), pytest.raises(Preempted):
            compiled(x, sigma, action, ctx)
        torch.testing.assert_close(compiled(x, sigma, action, ctx), want)
    torch._dynamo.reset()


def _hub(tmp_path: Path, preempt: bool = True) -> Hub:
    return Hub(ServeArgs(recordings=str(tmp_path), preempt=preempt), TINY)


def test_the_server_echoes_the_input_that_preempted_the_step(tmp_path: Path) -> None:
    hub = _hub(tmp_path)
    session = hub.open()
    assert session is not None
    session.start(0)
    session.set_input(Input(seq=1, ts=10.0, keys=("KeyW",), gamepad=None))
    first = hub.tick_all([(session, True)])[0]
    assert first.frame.meta["seq"] == 1 and first.frame.meta["action"] == ["forward"]
    late = Input(seq=2, ts=20.0, keys=("ArrowLeft",), gamepad=None)
    reads = [0]
    real = session.latest

    def latest() -> tuple[Input, Action]:  # the key changes while the step runs
        reads[0] += 1
        if reads[0] == 2:
            session.set_input(late)
        return real()

    session.latest = latest  # type: ignore[method-assign]
    tick = hub.tick_all([(session, True)])[0]
    assert tick.frame.meta["seq"] == 2 and tick.frame.meta["ts"] == 20.0, tick.frame.meta
    assert tick.frame.meta["action"] == ["turn_left"] and "preempted" in tick.frame.meta["ms"]
    assert session.history._run == {"event": "step", "buttons": ["turn_left"]}  # the recorded action
    assert hub.scheduler.stats.preempted == 1 and not session.changed()
    session.latest = real  # type: ignore[method-assign]
    session.set_input(Input(seq=3, ts=30.0, keys=("ArrowRight",), gamepad=None))
    assert session.changed()  # a change between ticks: the tick loop starts the next one now


def test_preemption_off_finishes_the_stale_step(tmp_path: Path) -> None:
    hub = _hub(tmp_path, preempt=False)
    session = hub.open()
    assert session is not None
    session.start(0)
    session.set_input(Input(seq=1, ts=10.0, keys=("KeyW",), gamepad=None))
    session.latest = lambda: (_ for _ in ()).throw(AssertionError("not read"))  # type: ignore[method-assign]
    tick = hub.tick_all([(session, True)])[0]
    assert tick.frame.meta["action"] == ["forward"] and hub.scheduler.stats.preempted == 0
