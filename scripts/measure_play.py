"""Measure browser play end to end: served FPS, key-to-photon latency, server CPU, recording.

Starts `worldstream play`'s app in-process on a free port, drives it from headless Chromium
(Debian `chromium` + Playwright) the way a player does (hold a key, release, another key...), and
prints one JSON object. Key-to-photon: from the browser's keydown timestamp to the moment the
first frame that used that input is drawn on the canvas (the server echoes the input's timestamp).

    python scripts/measure_play.py --model assets/models/doom-small --steps 2 --seconds 30 --record 60
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from playwright.sync_api import sync_playwright

from app.engine_spec import EngineSpec
from app.play.listen import serve_in_thread
from app.play.server import ServeArgs, create_app
from app.probe import play_and_measure
from engine.precision import serving_threads

FLAGS = ["--no-sandbox", "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--no-first-run", "--disable-gpu"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None)
    p.add_argument("--preset", default="small")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--fps", type=float, default=17.5)
    p.add_argument("--compile", action="store_true",
                   help="as play --compile: compiled in the background; measured once it is swapped in")
    p.add_argument("--int8", choices=["auto", "on", "off"], default="auto")
    p.add_argument("--threads", type=int, default=None, help="server torch threads (default: as play, cores - 1)")
    p.add_argument("--no-preempt", dest="preempt", action="store_false",
                   help="as play --no-preempt: a key change mid-step waits for the stale step")
    p.add_argument("--seconds", type=float, default=30.0, help="playing time measured")
    p.add_argument("--record", type=float, default=0.0, help="then record this many seconds of play")
    args = p.parse_args()
    chromium = shutil.which("chromium")
    if chromium is None:
        raise SystemExit("needs Debian chromium (apt-get install chromium)")
    if args.threads is None:
        args.threads = serving_threads()
    spec = EngineSpec(model=args.model, preset=args.preset, steps=args.steps, compile=args.compile, int8=args.int8,
                      threads=args.threads)
    t_start = time.monotonic()
    rec_dir = Path(tempfile.mkdtemp(prefix="worldstream-rec-"))
    app = create_app(ServeArgs(fps=args.fps, recordings=str(rec_dir), preempt=args.preempt), spec)
    with serve_in_thread(app) as port:
        out = measure(app, port, spec, args, chromium, rec_dir, t_start)
    print(json.dumps(out, indent=2))


def measure(app: Any, port: int, spec: EngineSpec, args: argparse.Namespace, chromium: str, rec_dir: Path,
            t_start: float) -> dict:
    hub = app.state.hub
    out: dict = {"model": spec.name, "steps": hub.info.engine["steps"], "compile": args.compile,
                 "preempt": args.preempt, "int8": spec.int8, "threads": args.threads, "target_fps": args.fps,
                 "startup_s": round(time.monotonic() - t_start, 1)}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=FLAGS)
        page = browser.new_page()
        page.goto(f"http://127.0.0.1:{port}/")
        page.wait_for_function("window.worldstream && window.worldstream.framesDrawn > 10", timeout=120_000)
        out["first_frame_s"] = round(time.monotonic() - t_start, 1)
        while hub.runner.compile_state == "compiling":  # measure what serves once the swap is done
            time.sleep(0.5)
        out["compile_state"], out["compile_s"] = hub.runner.compile_state, hub.runner.compile_seconds
        hub.cpu.read()
        out.update(play_and_measure(page, args.seconds), server_cpu_cores=round(hub.cpu.read(), 3),
                   preempted=hub.scheduler.stats.preempted, late_ticks=hub.late_ticks)
        if args.record > 0:
            page.click(".ws-record")
            page.wait_for_function("window.worldstream.recording !== null")
            page.keyboard.down("KeyW")
            time.sleep(args.record)
            page.keyboard.up("KeyW")
            t1 = time.monotonic()
            page.click(".ws-record")
            page.wait_for_selector(".ws-list a", timeout=120_000)
            stop_s = time.monotonic() - t1
            rec = page.evaluate("window.worldstream.recordings[0]")
            meta = json.loads((rec_dir / f"{rec['id']}.meta.json").read_text())
            state = page.evaluate("window.worldstream")
            out["recording"] = {"wall_s": args.record, "frames": rec["frames"], "video_s": rec["seconds"],
                                "mp4_bytes": meta["bytes"], "stop_to_link_s": round(stop_s, 3),
                                "record_ms_per_frame": state["serverStats"]["ms"].get("record")}
        browser.close()
    return out


if __name__ == "__main__":
    main()
