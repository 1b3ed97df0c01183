"""Which Freedoom 2 maps play which role: a module of constants with no game import, so that the
CLI can describe its defaults on machines without ViZDoom or gymnasium (a training box)."""

from __future__ import annotations

DEFAULT_MAPS = tuple(f"MAP{i:02d}" for i in range(1, 9))  # training data (collect's default)
UNSEEN_MAPS = ("MAP09", "MAP10")  # never collected: the eval suite's unseen-map split
