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
        self._stages: list[str] = []
        self._events: list[torch.cuda.Event] = []  # CUDA
        self._times: list[float] = []  # CPU
        self.mark("start")

    def mark(self, stage: str) -> None:
        """End of ``stage`` (the first mark, "start", begins the clock)."""
        self._stages.append(stage)
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self._events.append(event)
        else:
            self._times.append(time.perf_counter())

    def result(self) -> dict[str, float]:
        """Milliseconds per stage (a stage marked twice adds up), plus "total"."""
        out: dict[str, float] = {}
        for i, stage in enumerate(self._stages[1:], start=1):
            out[stage] = out.get(stage, 0.0) + self._ms(i - 1, i)
        out["total"] = self._ms(0, len(self._stages) - 1)
        return out

    def _ms(self, i: int, j: int) -> float:
        if self.cuda:
            return float(self._events[i].elapsed_time(self._events[j]))
        return (self._times[j] - self._times[i]) * 1000.0
