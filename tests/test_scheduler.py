"""Scheduler: batched frames equal per-rollout frames; joining and leaving leave the others
untouched; speculative drafts are exact when accepted and leave no trace when rejected."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from engine.action import Action
from engine.config import EngineConfig
from engine.engine import Engine
from engine.scheduler import Scheduler
from engine.types import Frame
from tests.conftest import action_script, make_engine

FWD, LEFT = Action.of("forward"), Action.of("turn_left")


def _noisy(cfg: EngineConfig) -> EngineConfig:
    """Context noise on: every finished frame draws from the rollout's generator (what a
    rollback must restore)."""
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, context_sigma=0.1))


def _context(cfg: EngineConfig, k: int, seed: int) -> torch.Tensor:
    m = cfg.model
    return torch.randn((k, m.latent_channels, m.latent_height, m.latent_width),
                       generator=torch.Generator().manual_seed(seed))


def _alone(cfg: EngineConfig, seed: int, actions: list[Action], context: torch.Tensor | None = None,
           **kw: object) -> list[Frame]:
    engine = make_engine(cfg, **kw)  # type: ignore[arg-type]
    first = engine.reset(seed, context=context)
    return [first, *engine.stream(actions)]


def _close(a: list[Frame], b: list[Frame], atol: float = 1e-4) -> None:
    assert len(a) == len(b)
    for fa, fb in zip(a, b, strict=True):
        assert fa.index == fb.index and fa.action == fb.action
        torch.testing.assert_close(fa.latent, fb.latent, atol=atol, rtol=0)


def _exact(a: list[Frame], b: list[Frame]) -> None:
    assert len(a) == len(b)
    for fa, fb in zip(a, b, strict=True):
        assert fa.index == fb.index and fa.action == fb.action
        assert torch.equal(fa.latent, fb.latent) and (fa.rgb == fb.rgb).all(), fa.index


@pytest.mark.parametrize(("steps", "invariant"), [(1, True), (2, True), (2, False)])
def test_a_batched_tick_equals_each_rollout_alone(tiny: EngineConfig, steps: int, invariant: bool) -> None:
    """Batch-invariant (the CPU default): bit for bit; otherwise within float rounding."""
    cfg = _noisy(dataclasses.replace(tiny, sampler=dataclasses.replace(tiny.sampler, steps=steps)))
    n, frames = 3, 9  # past the tiny window (3): the ring wraps
    scripts = [action_script(frames + i)[i:] for i in range(n)]
    sched = Scheduler.of(make_engine(cfg, slots=n, batch_invariant=invariant))
    rollouts = [sched.rollouts[0], sched.join(), sched.join()]
    got: list[list[Frame]] = [[r.reset(10 + i, context=_context(cfg, 1 + i, i) if i else None)]
                              for i, r in enumerate(rollouts)]  # different lengths: masks differ per slot
    for t in range(frames):
        for i, f in enumerate(sched.step([(r, scripts[i][t]) for i, r in enumerate(rollouts)])):
            got[i].append(f)
    assert sched.stats.batched == n * frames
    for i in range(n):
        alone = _alone(cfg, 10 + i, scripts[i], _context(cfg, 1 + i, i) if i else None)
        (_exact if invariant else _close)(got[i], alone)


def test_joining_and_leaving_leaves_the_others_unchanged(tiny: EngineConfig) -> None:
    cfg = _noisy(tiny)
    script = action_script(12)
    sched = Scheduler.of(make_engine(cfg, slots=3))
    a = sched.rollouts[0]
    frames = [a.reset(5)]
    b = c = None
    for t, action in enumerate(script):
        if t == 2:
            b = sched.join()
            b.reset(6)
        if t == 4:
            c = sched.join()
            c.reset(7, context=_context(cfg, 2, 1))
        if t == 8:
            assert b is not None
            sched.leave(b)
            b = None
        others = [(r, LEFT) for r in (b, c) if r is not None]
        frames.append(sched.step([*others[:1], (a, action), *others[1:]])[len(others[:1])])
    assert [e.slot for e in sched.rollouts] == [0, 2]
    again = sched.join()
    assert again.slot == 1  # the freed slot is reused
    _exact(frames, _alone(cfg, 5, script))


def test_scheduler_refuses_what_it_cannot_do(tiny: EngineConfig) -> None:
    engine = make_engine(tiny, slots=2)
    with pytest.raises(ValueError, match="spare_frames >= 3"):
        Scheduler.of(engine, speculate=2)
    sched = Scheduler.of(engine)
    other = sched.join()
    with pytest.raises(RuntimeError, match="all 2 rollout slots are taken"):
        sched.join()
    other.reset(0)
    with pytest.raises(ValueError, match="one frame per tick"):
        sched.step([(other, FWD), (other, FWD)])
    stranger = Engine(engine.runner, engine.decoder, slot=1)
    with pytest.raises(ValueError, match="not one of this scheduler's"):
        sched.step([(stranger, FWD)])


def _speculative_run(cfg: EngineConfig, script: list[Action], k: int, hold: int = 1) -> tuple[list[Frame], Scheduler]:
    engine = make_engine(cfg, spare_frames=k + 1)
    sched = Scheduler.of(engine, speculate=k, hold=hold)
    frames = [engine.reset(3, context=_context(cfg, 2, 0))]
    for action in script:
        frames.append(sched.step([(engine, action)])[0])
        while sched.draft():
            pass
    return frames, sched


@pytest.mark.parametrize("k", [1, 3])
def test_accepted_drafts_are_bit_identical_to_no_speculation(tiny: EngineConfig, k: int) -> None:
    cfg = _noisy(tiny)
    script = [FWD] * 10
    frames, sched = _speculative_run(cfg, script, k)
    _exact(frames, _alone(cfg, 3, script, _context(cfg, 2, 0), spare_frames=k + 1))
    assert sched.stats.accepted == 9 and sched.stats.discarded == 0
    assert frames[5].timings_ms["model"] == 0.0  # taken from a draft: no model time at the tick


@pytest.mark.parametrize("k", [1, 2, 4])
def test_a_rejected_draft_leaves_no_trace(tiny: EngineConfig, k: int) -> None:
    """Actions change every few frames: each change rolls k drafts back; every frame still equals
    the run that never drafted, bit for bit (past the ring's wrap: tiny window is 3)."""
    cfg = _noisy(tiny)
    script = [FWD] * 3 + [LEFT] * 4 + [FWD] + [Action.of("attack")] * 5 + [LEFT] * 2
    frames, sched = _speculative_run(cfg, script, k)
    _exact(frames, _alone(cfg, 3, script, _context(cfg, 2, 0), spare_frames=k + 1))
    assert sched.stats.discarded > 0 and sched.stats.accepted > 0


def test_hold_waits_before_drafting_and_step_rolls_back_alone(tiny: EngineConfig) -> None:
    engine = make_engine(tiny, spare_frames=3)
    sched = Scheduler.of(engine, speculate=2, hold=3)
    engine.reset(0)
    for t in range(3):
        sched.step([(engine, FWD)])
        assert sched.draft() == (1 if t == 2 else 0)
    assert engine.drafts == 1 and engine.draft_action == FWD
    index = engine.frame_index
    engine.step(LEFT)  # Engine.step alone also resolves drafts: rolled back, then generated
    assert engine.frame_index == index + 1 and engine.drafts == 0


def test_batch_invariance_holds_at_the_shipped_width() -> None:
    """At the small preset's width (K=1024 products) CPU GEMMs sum differently for 160 rows than
    for 480 (measured: 1e-5 apart without batch invariance); with it, a rollout in a batch of 3
    is bit for bit the rollout alone, pixels included: live recordings replay exactly."""
    from engine.config import PRESETS

    cfg = PRESETS["small"]
    script = [FWD, FWD, LEFT]
    engine = Engine.build(cfg, seed=0, slots=3)
    sched = Scheduler.of(engine)
    others = [sched.join(), sched.join()]
    frames = [engine.reset(0)]
    for i, r in enumerate(others):
        r.reset(i + 1)
    for action in script:
        frames.append(sched.step([(engine, action), *((r, LEFT) for r in others)])[0])
    alone = Engine.build(cfg, seed=0)
    _exact(frames, [alone.reset(0), *alone.stream(script)])
