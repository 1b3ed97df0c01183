"""Scheduler: every rollout of one runner gets its frame of a tick from one batched forward.

Rollouts join (a free cache slot) and leave between ticks: continuous batching. A tick's
``step`` takes the actions of the rollouts that want a frame now; a rollout that is paused, or
whose client is slow, is simply not in it, so it never stalls the others. Each rollout attends
only its own sinks + window (the cache builds a per-slot mask from per-slot lengths on the
device), and draws its noise from its own generator: its frames are the same, up to float
rounding, whoever else is in the batch.

Speculative action frames: ``draft`` generates, for every rollout whose action has been held
for ``hold`` ticks, its next frame under that action (one batched forward, sequential steps, so
an accepted draft is bit for bit the frame made without speculation), at most ``speculate``
ahead. At the next ``step`` a draft made for the action that arrived is returned at once (no
model time: speculation buys latency); a draft for another action is rolled back (cache,
generator, context: nothing of it remains) and the frame is generated as if no draft had been.

Preemption (live play): ``step(..., refresh=)`` abandons a batch whose actions changed while it
was being generated (before any model block or decoder stage) and generates it again with the
new actions.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

from engine.action import Action
from engine.decoder import FrameDecoder
from engine.engine import Engine, generate
from engine.preempt import Preempted, armed
from engine.runner import Runner
from engine.types import Frame


@dataclass
class SchedulerStats:
    ticks: int = 0  # step calls with at least one rollout
    frames: int = 0  # frames returned by step
    generated: int = 0  # of them, generated in the tick (not taken from a draft)
    batched: int = 0  # rollouts stepped in a batch of two or more
    drafted: int = 0  # frames generated ahead
    accepted: int = 0  # drafts taken
    discarded: int = 0  # drafts rolled back (the action changed, or the rollout left)
    preempted: int = 0  # steps abandoned midway because an action changed (``step(refresh=...)``)

    @property
    def acceptance(self) -> float:
        """Share of resolved drafts that were taken."""
        done = self.accepted + self.discarded
        return self.accepted / done if done else 0.0

    def as_dict(self) -> dict[str, float]:
        return {**asdict(self), "acceptance": round(self.acceptance, 4)}


class Scheduler:
    """The rollouts of one ``Runner``: join, leave, ``step`` (one tick), ``draft`` (speculation)."""

    def __init__(self, runner: Runner, decoder: FrameDecoder, *, speculate: int = 0, hold: int = 1,
                 recompute: bool = False) -> None:
        if speculate < 0 or hold < 1:
            raise ValueError(f"speculate must be >= 0 and hold >= 1, got {speculate} and {hold}")
        spare = runner.cache.shape.spare_frames
        if speculate + 1 > spare:
            raise ValueError(f"speculate={speculate} needs a cache with spare_frames >= {speculate + 1} "
                             f"(this one has {spare}); build the runner with spare_frames={speculate + 1}")
        self.runner, self.decoder = runner, decoder
        self.speculate, self.hold, self.recompute = speculate, hold, recompute
        self.stats = SchedulerStats()
        self._free = list(range(runner.cache.shape.slots))
        self._rollouts: dict[int, Engine] = {}
        self._held: dict[int, tuple[Action, int]] = {}  # slot -> (last action stepped, ticks in a row)

    @classmethod
    def of(cls, engine: Engine, **kwargs: object) -> Scheduler:
        """A scheduler on ``engine``'s runner and decoder, with ``engine`` as its first rollout."""
        s = cls(engine.runner, engine.decoder, recompute=engine.recompute, **kwargs)  # type: ignore[arg-type]
        s._free.remove(engine.slot)
        s._rollouts[engine.slot] = engine
        return s

    # ------------------------------------------------------------------ membership
    @property
    def rollouts(self) -> list[Engine]:
        return [self._rollouts[s] for s in sorted(self._rollouts)]

    @property
    def size(self) -> int:
        """Rollouts joined (safe to read from another thread while the engine thread joins/leaves)."""
        return len(self._rollouts)

    @property
    def capacity(self) -> int:
        return self.runner.cache.shape.slots

    def join(self) -> Engine:
        """A new rollout on the lowest free slot (``reset`` it before stepping);
        ``RuntimeError`` when every slot is taken."""
        if not self._free:
            raise RuntimeError(f"all {self.capacity} rollout slots are taken")
        slot = min(self._free)
        self._free.remove(slot)
        engine = Engine(self.runner, self.decoder, slot=slot, recompute=self.recompute)
        self._rollouts[slot] = engine
        return engine

    def leave(self, engine: Engine) -> None:
        """Free ``engine``'s slot (its drafts are dropped); the others go on untouched."""
        self._check(engine)
        self.stats.discarded += engine.drafts
        engine.cancel_drafts()
        del self._rollouts[engine.slot]
        self._held.pop(engine.slot, None)
        self._free.append(engine.slot)

    def _check(self, engine: Engine) -> None:
        if self._rollouts.get(engine.slot) is not engine:
            raise ValueError(f"rollout on slot {engine.slot} is not one of this scheduler's")

    # ------------------------------------------------------------------ ticks
    def step(self, requests: Sequence[tuple[Engine, Action]],
             refresh: Callable[[], Sequence[Action]] | None = None) -> list[Frame]:
        """One frame for each (rollout, action), in order: drafts made for that action are
        taken, the rest generated in one batched forward per denoising step.

        ``refresh`` (live play) returns the requests' actions as they are now. While the batch is
        generated, a change abandons it before the next model block or decoder stage
        (engine/preempt.py) and it is
        generated again, once, with the actions as they are then: a key pressed mid-step waits
        for its own frame, not for a stale one first. A frame's ``action`` is the one it used;
        ``timings_ms["preempted"]`` is the time abandoned. Not with a draft taken in the tick."""
        if not requests:
            return []
        for engine, _ in requests:
            self._check(engine)
        if len({e.slot for e, _ in requests}) != len(requests):
            raise ValueError("a rollout can get one frame per tick")
        out: list[Frame | None] = []
        todo: list[int] = []
        for engine, action in requests:
            had = engine.drafts
            frame = engine.take_draft(action)
            if frame is not None:
                self.stats.accepted += 1
            else:
                self.stats.discarded += had
                todo.append(len(out))
            out.append(frame)
        if todo:
            made = self._generate([requests[i][0] for i in todo], [requests[i][1] for i in todo],
                                  refresh if len(todo) == len(requests) else None)
            for i, frame in zip(todo, made, strict=True):
                out[i] = frame
            self.stats.generated += len(todo)
            if len(todo) > 1:
                self.stats.batched += len(todo)
        frames = [f for f in out if f is not None]
        for (engine, _), frame in zip(requests, frames, strict=True):
            last, n = self._held.get(engine.slot, (None, 0))
            self._held[engine.slot] = (frame.action, n + 1 if frame.action == last else 1)
        self.stats.ticks += 1
        self.stats.frames += len(requests)
        return frames

    def _generate(self, engines: list[Engine], actions: list[Action],
                  refresh: Callable[[], Sequence[Action]] | None) -> list[Frame]:
        if refresh is None:
            return generate(engines, actions)
        t0 = time.perf_counter()
        try:
            with armed(lambda: list(refresh()) != actions):
                return generate(engines, actions)
        except Preempted:  # generate left no trace of it
            lost_ms = (time.perf_counter() - t0) * 1e3
        self.stats.preempted += 1
        fresh = list(refresh())
        if len(fresh) != len(actions):
            raise ValueError(f"refresh returned {len(fresh)} actions for {len(actions)} rollouts")
        made = generate(engines, fresh)
        return [dataclasses.replace(f, timings_ms={**f.timings_ms, "preempted": lost_ms}) for f in made]

    def draft(self, only: Sequence[Engine] | None = None, stale: Callable[[], bool] | None = None) -> int:
        """Draft one more frame for every rollout (of ``only``, if given) whose action has been
        held ``hold`` ticks and that has fewer than ``speculate`` drafts: one batched forward.
        Returns how many frames were drafted (0: nothing to draft, or abandoned: ``stale()``
        turned true while drafting, e.g. a player let go of the key, and the draft was dropped
        without a trace, earlier drafts kept)."""
        if self.speculate == 0:
            return 0
        pool = self.rollouts if only is None else [e for e in only if self._rollouts.get(e.slot) is e]
        chosen: list[Engine] = []
        actions: list[Action] = []
        for engine in pool:  # (a rollout of ``only`` that left meanwhile is skipped)
            held = self._held.get(engine.slot)
            if held is None or held[1] < self.hold or engine.drafts >= self.speculate or engine.frame_index < 0:
                continue
            chosen.append(engine)
            actions.append(held[0])
        if not chosen:
            return 0
        try:
            with armed(stale):
                generate(chosen, actions, draft=True)
        except Preempted:
            self.stats.preempted += 1
            return 0
        self.stats.drafted += len(chosen)
        return len(chosen)
