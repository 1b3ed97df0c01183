"""Refusals in the server log: one clear line each, but a flood of them (an attacker reconnecting
hundreds of times a second) must not flood the log. ``Refusals.log`` writes at most one line per
second per kind of refusal; the lines it folds in are counted in the next one ("... and N more")."""

from __future__ import annotations

import logging
import threading
import time


class Refusals:
    def __init__(self, logger: logging.Logger, interval: float = 1.0) -> None:
        self.logger, self.interval = logger, interval
        self._last: dict[str, float] = {}
        self._folded: dict[str, int] = {}
        self._lock = threading.Lock()  # one server may run in a thread beside others (tests)

    def log(self, kind: str, message: str, *args: object, level: int = logging.WARNING) -> None:
        now = time.monotonic()
        with self._lock:
            if now - self._last.get(kind, -float("inf")) < self.interval:
                self._folded[kind] = self._folded.get(kind, 0) + 1
                return
            self._last[kind] = now
            folded = self._folded.pop(kind, 0)
        if folded:
            message += f" (and {folded} more like it since the last such line)"
        self.logger.log(level, message, *args)
