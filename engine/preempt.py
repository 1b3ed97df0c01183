"""Preemption: a step whose inputs went stale is abandoned between two model blocks (or decoder stages).

A live player's frame is generated from the action held when the step began. When the action
changes while that step runs, finishing it would show the old action's frame first and start
the new one only after it: the key waits for the rest of a stale step. Instead, the caller arms
a check for the duration of the step (``armed``); the model calls ``preempt_point`` before each
block, and the tokenizer's decoder before each stage, which raises ``Preempted`` when the check
says the step is stale. ``engine.generate`` then puts every rollout back exactly where it was
(cache length, generator, context; also when the frame was already finished and only being
decoded) and the caller regenerates with the new action. Nothing of the abandoned step remains:
its K/V were written to cache rows past the committed length, which the next step overwrites.

The check is host-side Python (reading the latest input): no device sync. Eagerly the point is a
plain call; under ``torch.compile`` it is one opaque custom op that declares it mutates the
tokens, so the graph keeps it in place between the blocks (no graph break). With nothing armed
(bench, eval, record, training) a point costs a thread-local read.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator

import torch


class Preempted(Exception):  # a control-flow signal, not an error
    """The armed check found the step stale; the step was abandoned."""


_local = threading.local()  # the check armed in this thread (the serving thread's, not a compile thread's)


@contextlib.contextmanager
def armed(stale: Callable[[], bool] | None) -> Iterator[None]:
    """Within the block, every ``preempt_point`` in this thread raises ``Preempted`` once
    ``stale()`` is true (None: nothing is armed in the block). Not reentrant: a nested arm
    replaces the outer one until it exits."""
    outer = getattr(_local, "stale", None)
    _local.stale = stale
    try:
        yield
    finally:
        _local.stale = outer


def _check() -> None:
    stale = getattr(_local, "stale", None)
    if stale is not None and stale():
        raise Preempted


@torch.library.custom_op("worldstream::preempt_point", mutates_args=("tokens",))
def _point_op(tokens: torch.Tensor) -> None:
    """``tokens`` is declared mutated (it is not) only so that the compiled graph keeps the check
    between the blocks that produce and consume it."""
    _check()


@_point_op.register_fake
def _(tokens: torch.Tensor) -> None:
    return None


def preempt_point(tokens: torch.Tensor) -> None:
    """Raise ``Preempted`` if the armed check says the step is stale (see the module doc).
    Inference only: with gradients on (training) it is never a point, and the custom op, which
    declares a mutation, never meets autograd."""
    if torch.is_grad_enabled():
        return
    if torch.compiler.is_compiling():
        _point_op(tokens)
    else:
        _check()
