"""Which Freedoom 2 maps play which role: a module of constants with no game import, so that the
CLI can describe its defaults on machines without ViZDoom or gymnasium (a training box)."""

from __future__ import annotations

import re

DEFAULT_MAPS = tuple(f"MAP{i:02d}" for i in range(1, 9))  # training data (collect's default)
UNSEEN_MAPS = ("MAP09", "MAP10")  # never collected: the eval suite's unseen-map split

_MAP = re.compile(r"^(MAP(\d\d)|E(\d)M(\d))$")


def parse_maps(text: str) -> tuple[str, ...]:
    """``"MAP01..MAP08,MAP11,MAP20..MAP32"`` -> the map names, in order, each once. A name must be
    MAPnn (Doom II / Freedoom 2) or ExMy (Doom / Freedoom 1); ViZDoom does not reject an unknown
    one, it waits on it forever, so a typo must fail here. ``A..B`` is inclusive, same kind."""
    maps: list[str] = []
    for part in (p.strip().upper() for p in text.split(",")):
        if not part:
            continue
        lo, sep, hi = part.partition("..")
        first, last = _MAP.match(lo.strip()), _MAP.match(hi.strip()) if sep else None
        if first is None or (sep and last is None):
            raise ValueError(f"bad map {part!r}: expected MAPnn or ExMy, or a range such as MAP01..MAP08")
        if not sep:
            names = [first.group(1)]
        elif first.group(2) and last.group(2):
            a, b = int(first.group(2)), int(last.group(2))
            names = [f"MAP{i:02d}" for i in range(a, b + 1)]
        elif first.group(3) and last.group(3) and first.group(3) == last.group(3):
            a, b = int(first.group(4)), int(last.group(4))
            names = [f"E{first.group(3)}M{i}" for i in range(a, b + 1)]
        else:
            raise ValueError(f"bad map range {part!r}: both ends MAPnn, or ExMy of one episode")
        if not names:
            raise ValueError(f"empty map range {part!r}: the first map comes after the last")
        maps += [n for n in names if n not in maps]
    if not maps:
        raise ValueError("expected a comma-separated list such as MAP01,MAP02 or MAP01..MAP08")
    return tuple(maps)
