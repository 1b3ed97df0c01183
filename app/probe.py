"""Key-to-photon, measured the way a player feels it: drive the play page in a browser (Playwright
page, headless Chromium) with held and released keys, and read what the page measured.

Key-to-photon: from the browser's keydown timestamp to the moment the first frame that used that
input is drawn on the canvas (the server echoes the input's timestamp with that frame; app/play/web/play.js
keeps the samples in ``window.worldstream.latencies``). Used by ``scripts/measure_play.py`` and
the browser test that plays 30 s against the bundled model.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

KEYS = ("KeyW", "ArrowLeft", "KeyW", "ArrowRight", "KeyD")


def play_and_measure(page: Any, seconds: float) -> dict[str, Any]:
    """Hold a key 0.4 s, release 0.2 s (~1.7 inputs a second) for ``seconds`` on a page already
    drawing frames; returns key-to-photon n/p50/p95/max (ms), frames drawn per second, and the
    server's last stats."""
    page.click(".ws-stage")
    page.evaluate("window.worldstream.latencies.length = 0")
    drawn0, t0, i = page.evaluate("window.worldstream.framesDrawn"), time.monotonic(), 0
    while time.monotonic() - t0 < seconds:
        key = KEYS[i % len(KEYS)]
        page.keyboard.down(key)
        time.sleep(0.4)
        page.keyboard.up(key)
        time.sleep(0.2)
        i += 1
    wall = time.monotonic() - t0
    state = page.evaluate("window.worldstream")
    lat = sorted(state["latencies"])
    return {"seconds": round(wall, 1), "inputs": 2 * i, "client_fps": round((state["framesDrawn"] - drawn0) / wall, 2),
            "server_fps": (state.get("serverStats") or {}).get("fps"),
            "server_ms": (state.get("serverStats") or {}).get("ms"),
            "key_to_photon_ms": {"n": len(lat), "p50": round(statistics.median(lat), 1) if lat else None,
                                 "p95": round(lat[min(len(lat) - 1, int(0.95 * len(lat)))], 1) if lat else None,
                                 "max": round(lat[-1], 1) if lat else None}}
