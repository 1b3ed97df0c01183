"""Controller state -> Action: the one mapping from keyboard keys and gamepad to the engine's
validated ``Action`` (the page shows this same table to the player).

Keys are ``KeyboardEvent.code`` values (layout-independent: "KeyW" is the key where W sits on a
US keyboard). Gamepads use the browser's "standard" mapping: axes[0]/[1] left stick x/y,
axes[2] right stick x; buttons 0 = A, 6/7 = left/right trigger, 12-15 = d-pad up/down/left/right.
Keyboard and gamepad are combined (a button is held if either holds it).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from engine.action import BUTTONS, Action

# button -> the key codes that hold it
KEYS: dict[str, tuple[str, ...]] = {
    "forward": ("KeyW", "ArrowUp"),
    "backward": ("KeyS", "ArrowDown"),
    "strafe_left": ("KeyA",),
    "strafe_right": ("KeyD",),
    "turn_left": ("KeyQ", "ArrowLeft"),
    "turn_right": ("KeyE", "ArrowRight"),
    "attack": ("Space", "ControlLeft", "ControlRight"),
    "use": ("KeyF",),
}
KEY_TO_BUTTON: dict[str, str] = {code: button for button, codes in KEYS.items() for code in codes}
assert set(KEYS) == set(BUTTONS), "every engine button needs a key"

STICK_THRESHOLD = 0.5  # a stick deflected past this holds the direction's button
TRIGGER_THRESHOLD = 0.5
# (axis index, sign, button): left stick up (negative y) is forward, etc.
AXES: tuple[tuple[int, int, str], ...] = (
    (1, -1, "forward"),
    (1, +1, "backward"),
    (0, -1, "strafe_left"),
    (0, +1, "strafe_right"),
    (2, -1, "turn_left"),
    (2, +1, "turn_right"),
)
# standard-mapping button index -> engine button
PAD_BUTTONS: dict[int, str] = {0: "use", 6: "attack", 7: "attack", 12: "forward", 13: "backward",
                               14: "turn_left", 15: "turn_right"}
PAD_LABELS: dict[str, str] = {
    "forward": "left stick up / d-pad up", "backward": "left stick down / d-pad down",
    "strafe_left": "left stick left", "strafe_right": "left stick right",
    "turn_left": "right stick left / d-pad left", "turn_right": "right stick right / d-pad right",
    "attack": "either trigger", "use": "A",
}


@dataclass(frozen=True)
class Gamepad:
    """One gamepad's state: axes in [-1, 1], buttons (pressed amount) in [0, 1]."""

    axes: tuple[float, ...] = ()
    buttons: tuple[float, ...] = ()


def to_action(keys: Iterable[str], pad: Gamepad | None = None) -> Action:
    """Held keys (codes; unmapped ones are ignored) and an optional gamepad -> ``Action``."""
    held = {KEY_TO_BUTTON[k] for k in keys if k in KEY_TO_BUTTON}
    if pad is not None:
        for axis, sign, button in AXES:
            if axis < len(pad.axes) and sign * pad.axes[axis] > STICK_THRESHOLD:
                held.add(button)
        for index, button in PAD_BUTTONS.items():
            if index < len(pad.buttons) and pad.buttons[index] > TRIGGER_THRESHOLD:
                held.add(button)
    return Action(tuple(b in held for b in BUTTONS))

