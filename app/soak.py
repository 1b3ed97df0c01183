"""``worldstream soak``: a bounded hostile-client campaign against a play server it starts itself.

    worldstream soak --preset tiny --short          # the configuration `make test` runs (~40 s)
    worldstream soak --memory-seconds 600           # the full campaign on the bundled model

The server is ``worldstream play`` in a child process on 127.0.0.1 and a free port (loopback only:
the harness never targets another host). One well-behaved player reads every frame for the whole
campaign; its frame rate is measured before, during each phase and after. Phases, one at a time:

    fuzz       N malformed/hostile messages on one connection (each must get an error reply)
    churn      N connections closed cleanly, by FIN without a close frame, by RST, mid-recording
    slow       a client that stops reading frames (its frames must be dropped, not queued)
    flood      a client sending input as fast as it can (rate-limited)
    recording  record on/off in one tick, while paused, a disconnect mid-recording
    memory     the player records for a long run; server RSS sampled throughout

It prints a table (``--json``: the numbers) and exits 1 if the server crashed, a session was
lost, a recording does not decode, or the server logged a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from app.attacks import churn, drop, flood, fuzz, hostile_messages, open_ws, recording_faults, slow


@dataclass(frozen=True)
class SoakArgs:
    model: str | None = None  # checkpoint folder (default: the bundled model)
    preset: str | None = None  # or a preset with random weights (e.g. tiny)
    fuzz: int = 5000  # hostile messages
    churn: int = 100  # connections opened and dropped
    phase_seconds: float = 20.0  # length of the flood phase, and of "before"/"after"
    slow_seconds: float = 30.0  # how long the slow reader reads nothing
    fps: float = 17.5  # the server's frame rate per session
    memory_seconds: float = 300.0  # the long recorded run
    seed: int = 0
    json: bool = False
    compile: bool = False  # play's background compile (off: its minutes of compiling would be measured)

    def __post_init__(self) -> None:
        if self.model is not None and self.preset is not None:
            raise ValueError("give --model or --preset, not both")
        if not 0 <= self.fuzz <= 10**6 or not 0 <= self.churn <= 10**4:
            raise ValueError("--fuzz must be in 0..1e6 and --churn in 0..1e4")
        if not 1 <= self.phase_seconds <= 3600 or not 1 <= self.slow_seconds <= 3600:
            raise ValueError("--phase-seconds and --slow-seconds must be in 1..3600")
        if not 1 <= self.memory_seconds <= 86400:
            raise ValueError("--memory-seconds must be in 1..86400")


# Tiny frames are ~0.8 KB: at 30 FPS a silent client fills its buffers within the slow phase.
SHORT = dict(fuzz=300, churn=12, phase_seconds=3.0, slow_seconds=10.0, memory_seconds=5.0, fps=30.0)


@dataclass
class Player:
    """The well-behaved client: reads every frame, changes keys every 0.3 s."""

    ws: ClientConnection
    frames: list[float] = field(default_factory=list)  # arrival times
    lost: bool = False

    async def run(self) -> None:
        keys = [["KeyW"], ["KeyW", "KeyA"], [], ["KeyD"]]
        seq, last = 0, 0.0
        try:
            async for msg in self.ws:
                if isinstance(msg, str) and msg.startswith('{"type": "frame"'):
                    self.frames.append(time.monotonic())
                if time.monotonic() - last > 0.3:
                    seq, last = seq + 1, time.monotonic()
                    await self.ws.send(json.dumps({"type": "input", "seq": seq, "ts": 0.0,
                                                   "keys": keys[seq % len(keys)]}))
        except ConnectionClosed:
            pass
        self.lost = True  # the player never leaves on its own

    def fps(self, t0: float, t1: float) -> float:
        return sum(t0 <= t < t1 for t in self.frames) / max(t1 - t0, 1e-9)


class Server:
    """``worldstream play`` in a child process on a free loopback port."""

    def __init__(self, args: SoakArgs, recordings: Path, log: Path) -> None:
        model = ["--preset", args.preset] if args.preset else (["--model", args.model] if args.model else [])
        cmd = [sys.executable, "-m", "app.cli", "play", "--host", "127.0.0.1", "--port", "0", "--max-sessions", "2",
               "--fps", str(args.fps), "--recordings", str(recordings), *model,
               "--compile" if args.compile else "--no-compile"]
        self._log = open(log, "w")  # closed in stop()
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self._log, text=True,
                                     cwd=Path(__file__).resolve().parents[1])
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if m := re.search(r"serving .* at http://127\.0\.0\.1:(\d+)/", line):
                self.url = f"ws://127.0.0.1:{m.group(1)}/ws"
                return
        raise RuntimeError(f"the play server did not start; its log: {log}")

    def rss_mb(self) -> float:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        self.proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)
        if self.proc.poll() is None:
            self.proc.kill()
        self._log.close()


def check_recordings(folder: Path) -> tuple[int, int]:
    """(recordings that decode and say complete, recordings)."""
    good = total = 0
    for meta_path in folder.glob("*.meta.json"):
        total += 1
        mp4 = meta_path.with_name(meta_path.name.replace(".meta.json", ".mp4"))
        with contextlib.suppress(Exception):
            meta = json.loads(meta_path.read_text())
            with av.open(str(mp4)) as c:
                frames = sum(1 for _ in c.decode(video=0))
            good += bool(meta["complete"]) and frames == meta["frames"]
    return good, total


async def campaign(args: SoakArgs, server: Server, recordings: Path) -> dict[str, Any]:
    player = Player(await open_ws(server.url))
    task = asyncio.create_task(player.run())
    rows: list[dict[str, Any]] = []
    rss_start = server.rss_mb()

    async def phase(name: str, work: Any) -> None:
        t0 = time.monotonic()
        result = await work
        t1 = time.monotonic()
        rows.append({"phase": name, **result, "player_fps": round(player.fps(t0, t1), 2),
                     "seconds": round(t1 - t0, 1), "server_alive": server.proc.poll() is None})

    async def companion(seconds: float) -> dict[str, Any]:
        """A second well-behaved player: the baseline every attack phase is compared with
        (each phase runs the player and one other session)."""
        other = Player(await open_ws(server.url))
        reading = asyncio.create_task(other.run())
        await asyncio.sleep(seconds)
        reading.cancel()
        await drop(other.ws, "clean")
        return {"messages": 0}

    await phase("before (2 players)", companion(args.phase_seconds))
    await phase("fuzz", fuzz(server.url, hostile_messages(args.fuzz, args.seed)))
    await phase("churn", churn(server.url, args.churn))
    await phase("slow reader", slow(server.url, args.slow_seconds))
    await phase("flood", flood(server.url, args.phase_seconds))
    await phase("recording", recording_faults(server.url))
    await phase("after (2 players)", companion(args.phase_seconds))
    rss_mid = server.rss_mb()
    await player.ws.send(json.dumps({"type": "record", "on": True}))
    rss = [rss_mid]

    async def sample() -> dict[str, Any]:
        t_end = time.monotonic() + args.memory_seconds
        while time.monotonic() < t_end:
            await asyncio.sleep(min(1.0, args.memory_seconds / 10))
            rss.append(server.rss_mb())
        return {"messages": 1, "rss_mb_max": round(max(rss), 1)}

    await phase("memory (1 player, recording)", sample())
    await player.ws.send(json.dumps({"type": "record", "on": False}))
    await asyncio.sleep(1.0)
    lost = player.lost or task.done()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await drop(player.ws, "clean")
    await asyncio.sleep(0.5)
    good, total = check_recordings(recordings)
    return {"phases": rows, "rss_mb_start": round(rss_start, 1), "rss_mb_after_attacks": round(rss_mid, 1),
            "rss_mb_end": round(server.rss_mb(), 1), "sessions_lost": int(lost),
            "recordings_ok": good, "recordings": total}


def run_soak(args: SoakArgs) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="worldstream-soak-") as tmp:
        recordings, log = Path(tmp) / "recordings", Path(tmp) / "server.log"
        t0 = time.monotonic()
        server = Server(args, recordings, log)
        start_s = time.monotonic() - t0
        try:
            result = asyncio.run(campaign(args, server, recordings))
        finally:
            crashed = server.proc.poll() is not None
            server.stop()
        text = log.read_text(errors="replace")
    result.update(server_start_s=round(start_s, 1), server_crashed=crashed,
                  server_tracebacks=text.count("Traceback"), fuzz_unanswered=next(
                      r["messages"] - r["errors"] for r in result["phases"] if r["phase"] == "fuzz"))
    result["ok"] = (not crashed and result["sessions_lost"] == 0 and result["server_tracebacks"] == 0
                    and result["recordings_ok"] == result["recordings"] and result["fuzz_unanswered"] == 0)
    if result["server_tracebacks"]:
        result["server_log_tail"] = text[-2000:]
    return result


def format_table(r: dict[str, Any]) -> str:
    lines = ["| phase | messages | player FPS | seconds | server up | details |", "|---|---|---|---|---|---|"]
    for p in r["phases"]:
        extra = {k: v for k, v in p.items() if k not in ("phase", "messages", "player_fps", "seconds", "server_alive")}
        lines.append(f"| {p['phase']} | {p['messages']} | {p['player_fps']:.1f} | {p['seconds']} | "
                     f"{'yes' if p['server_alive'] else 'NO'} | {', '.join(f'{k}={v}' for k, v in extra.items())} |")
    lines.append("")
    lines.append(f"server crashed: {r['server_crashed']}; tracebacks logged: {r['server_tracebacks']}; sessions lost: "
                 f"{r['sessions_lost']}; fuzz messages unanswered: {r['fuzz_unanswered']}")
    lines.append(f"RSS MB: start {r['rss_mb_start']}, after attacks {r['rss_mb_after_attacks']}, "
                 f"end {r['rss_mb_end']}; "
                 f"recordings that decode complete: {r['recordings_ok']}/{r['recordings']}; "
                 f"server start {r['server_start_s']} s")
    lines.append("verdict: " + ("OK" if r["ok"] else "FAILED"))
    return "\n".join(lines)
