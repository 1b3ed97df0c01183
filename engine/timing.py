"""Per-stage timing that does not stall the device.

On CPU, stages are timed with ``perf_counter``. On CUDA, marks are CUDA events recorded on the
stream (no host sync); they are read in ``result()``, which the engine calls only after the
frame's pixels reached the host, when every event has already completed.
"""

from __future__ import annotations

import time

import torch


class StageTimer:
    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self._marks: list[tuple[str, object]] = []
        self.mark("start")

    def _now(self) -> object:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def mark(self, stage: str) -> None:
        """End of ``stage`` (the first mark, "start", begins the clock)."""
        self._marks.append((stage, self._now()))

    def result(self) -> dict[str, float]:
        """Milliseconds per stage, plus "total"."""
        out: dict[str, float] = {}
        for (_, a), (stage, b) in zip(self._marks, self._marks[1:], strict=False):
            out[stage] = out.get(stage, 0.0) + self._elapsed_ms(a, b)
        out["total"] = self._elapsed_ms(self._marks[0][1], self._marks[-1][1])
        return out

    def _elapsed_ms(self, a: object, b: object) -> float:
        if self.cuda:
            return float(a.elapsed_time(b))  # type: ignore[attr-defined]
        return (float(b) - float(a)) * 1000.0  # type: ignore[arg-type]
