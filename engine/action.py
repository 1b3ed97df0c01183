"""The action type: one validated multi-hot over the 8 Doom buttons.

This is the single definition used by the engine, the Doom environment and the app. Sequence
convention (worldstream-wide): a rollout is x_0, (a_1, x_1), (a_2, x_2), ... where frame x_t is
the result of action a_t applied to the state after x_{t-1}. So ``Engine.step(a_t)`` returns x_t.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch

BUTTONS: tuple[str, ...] = (
    "forward",
    "backward",
    "strafe_left",
    "strafe_right",
    "turn_left",
    "turn_right",
    "attack",
    "use",
)
NUM_BUTTONS = len(BUTTONS)


@dataclass(frozen=True)
class Action:
    """Buttons held during one frame. Immutable and hashable; compare with ``==``."""

    buttons: tuple[bool, ...] = (False,) * NUM_BUTTONS

    def __post_init__(self) -> None:
        if not isinstance(self.buttons, tuple) or len(self.buttons) != NUM_BUTTONS:
            raise ValueError(f"Action needs a tuple of {NUM_BUTTONS} bools, got {self.buttons!r}")
        if not all(isinstance(b, bool) for b in self.buttons):
            raise ValueError(f"Action buttons must be bools, got {self.buttons!r}")

    @classmethod
    def of(cls, *names: str) -> Action:
        """``Action.of("forward", "turn_left")``; unknown names raise ``ValueError``."""
        unknown = sorted(set(names) - set(BUTTONS))
        if unknown:
            raise ValueError(f"unknown button(s) {unknown}; buttons are {list(BUTTONS)}")
        return cls(tuple(b in names for b in BUTTONS))

    @classmethod
    def from_multi_hot(cls, values: Iterable[int | bool]) -> Action:
        """From 8 values, each 0/1 (or bool)."""
        values = tuple(values)
        if len(values) != NUM_BUTTONS or any(v not in (0, 1) for v in values):
            raise ValueError(f"expected {NUM_BUTTONS} values in {{0, 1}}, got {values!r}")
        return cls(tuple(bool(v) for v in values))

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(n for n, b in zip(BUTTONS, self.buttons, strict=True) if b)

    def to_multi_hot(self) -> list[int]:
        return [int(b) for b in self.buttons]

    def __str__(self) -> str:
        return "+".join(self.names) or "noop"


NOOP = Action()


def actions_to_tensor(actions: Iterable[Action], device: torch.device | str = "cpu") -> torch.Tensor:
    """Stack actions into a float multi-hot tensor of shape (len, NUM_BUTTONS)."""
    rows = [a.to_multi_hot() for a in actions]
    return torch.tensor(rows, dtype=torch.float32, device=device).reshape(len(rows), NUM_BUTTONS)
