"""``worldstream soak``: a bounded hostile-client campaign against a play server it starts itself.

    worldstream soak --preset tiny --short          # the configuration `make test` runs (~80 s)
    worldstream soak --memory-seconds 600           # the full campaign on the bundled model

The server is ``worldstream play`` in a child process on 127.0.0.1 and a free port (loopback only:
the harness never targets another host). One well-behaved player reads every frame for the whole
campaign; its frame rate is measured before, during each phase and after. Phases, one at a time:

    fuzz       N malformed/hostile messages on one connection (each must get an error reply)
    churn      N connections closed cleanly, by FIN without a close frame, by RST, mid-recording
    slow       a client that stops reading frames (dropped, not queued; the keepalive frees its slot)
    flood      a client sending input as fast as it can (rate-limited)
    recording  record on/off in one tick, while paused, a disconnect mid-recording
    keys, commands                 a key toggled ~90/s; 150 record toggles and 64 resets at once
    fragments, pings, origin, ...  below the message layer (app/wire.py), with and without the token
    memory     the player records for a long run; server RSS sampled throughout

The server runs with a token (the player and most attackers know it; some do not) and the player
records every attack phase; that recording is replayed and must come out identical.
It prints a table (``--json``: the numbers) and exits 1 if an invariant broke (``failures`` says which).
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import re
import secrets
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

from app import wire
from app.attacks import (
    churn,
    command_burst,
    drop,
    flood,
    fuzz,
    hostile_messages,
    key_toggle,
    open_ws,
    recording_faults,
    slow,
)
from app.record import RecordArgs, run_record


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
    keepalive: float = 20.0  # the server's --keepalive (a silent client is closed after about this long)

    def __post_init__(self) -> None:
        if self.model is not None and self.preset is not None:
            raise ValueError("give --model or --preset, not both")
        if not 0 <= self.fuzz <= 10**6 or not 0 <= self.churn <= 10**4:
            raise ValueError("--fuzz must be in 0..1e6 and --churn in 0..1e4")
        if not 1 <= self.phase_seconds <= 3600 or not 1 <= self.slow_seconds <= 3600:
            raise ValueError("--phase-seconds and --slow-seconds must be in 1..3600")
        if not 1 <= self.memory_seconds <= 86400:
            raise ValueError("--memory-seconds must be in 1..86400")
        if not 1 <= self.keepalive <= 600:
            raise ValueError("--keepalive must be in 1..600")


# Tiny frames are ~0.8 KB: at 30 FPS a silent client fills its buffers within the slow phase.
# The keepalive closes the slow reader once its buffers are full (~8 s here) and it has lost frames;
# the phase ends when its slot is free (~12 s), at the latest after slow_seconds.
SHORT = dict(fuzz=300, churn=12, phase_seconds=3.0, slow_seconds=16.0, memory_seconds=5.0, fps=30.0, keepalive=10.0)
RSS_GROWTH_MB = 50.0  # issue #38: an attack below the message layer may grow the server's RSS by less than this
WIRE = {"keys toggled 90/s", "command burst", "fragments", "fragments, wrong token", "pings, never reading",
        "pings, wrong token", "foreign origin", "invalid UTF-8", "routes"}


@dataclass
class Player:
    """The well-behaved client: reads every frame, changes keys every 0.3 s."""

    ws: ClientConnection
    frames: list[float] = field(default_factory=list)  # arrival times
    recordings: list[tuple[float, dict[str, Any]]] = field(default_factory=list)  # (arrival, recording message)
    lost: bool = False

    async def run(self) -> None:
        keys = [["KeyW"], ["KeyW", "KeyA"], [], ["KeyD"]]
        seq, last = 0, 0.0
        try:
            async for msg in self.ws:
                if isinstance(msg, str) and msg.startswith('{"type": "frame"'):
                    self.frames.append(time.monotonic())
                elif isinstance(msg, str) and msg.startswith('{"type": "recording"'):
                    self.recordings.append((time.monotonic(), json.loads(msg)))
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
               "--compile" if args.compile else "--no-compile", "--keepalive", str(args.keepalive)]
        self.token = secrets.token_hex(8)
        self._log = open(log, "w")  # closed in stop()
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self._log, text=True,
                                     cwd=Path(__file__).resolve().parents[1],
                                     env={**os.environ, "WORLDSTREAM_TOKEN": self.token})  # not on the command line
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if m := re.search(r"serving .* at http://127\.0\.0\.1:(\d+)/", line):
                self.port = int(m.group(1))
                self.url = f"ws://127.0.0.1:{self.port}/ws?token={self.token}"
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
    port, path, wrong = server.port, f"/ws?token={server.token}", "/ws?token=wrong-token"

    async def phase(name: str, work: Any) -> None:
        rss0, peak, done = server.rss_mb(), [server.rss_mb()], asyncio.Event()

        async def sample() -> None:
            while not done.is_set():
                peak.append(server.rss_mb())
                await asyncio.sleep(0.1)

        sampler = asyncio.create_task(sample())
        t0 = time.monotonic()
        result = await work
        t1 = time.monotonic()
        done.set()
        await sampler
        await asyncio.sleep(0.5)  # what the attack left behind, once it is over
        fps = round(player.fps(t0, t1), 2) if t1 - t0 >= 1.0 else None  # shorter: a few frames, noise
        rows.append({"phase": name, **result, "player_fps": fps,
                     "seconds": round(t1 - t0, 1), "server_alive": server.proc.poll() is None,
                     "rss_mb_growth": round(max(peak) - rss0, 1), "rss_mb_left": round(server.rss_mb() - rss0, 1)})

    async def companion(seconds: float) -> dict[str, Any]:
        """A second well-behaved player: the baseline every attack phase is compared with
        (each phase runs the player and one other session)."""
        other = Player(await open_ws(server.url))
        reading = asyncio.create_task(other.run())
        await asyncio.sleep(seconds)
        reading.cancel()
        await drop(other.ws, "clean")
        return {"messages": 0}

    def thread(fn: Any, *a: Any) -> Any:
        return asyncio.to_thread(fn, *a)

    await player.ws.send(json.dumps({"type": "record", "on": True}))  # the player records every attack
    await phase("before (2 players)", companion(args.phase_seconds))
    await phase("fuzz", fuzz(server.url, hostile_messages(args.fuzz, args.seed)))
    await phase("churn", churn(server.url, args.churn))
    await phase("slow reader", slow(server.url, args.slow_seconds))
    await phase("flood", flood(server.url, args.phase_seconds))
    await phase("recording", recording_faults(server.url))
    await phase("keys toggled 90/s", key_toggle(server.url, args.phase_seconds))
    await phase("command burst", command_burst(server.url))
    await phase("fragments", thread(wire.fragments, port, args.phase_seconds, path))
    await phase("fragments, wrong token", thread(wire.fragments_unauthorised, port, args.phase_seconds, wrong))
    await phase("pings, never reading", thread(wire.pings, port, args.phase_seconds, path))
    await phase("pings, wrong token", thread(wire.pings, port, args.phase_seconds, wrong))
    await phase("foreign origin", thread(wire.foreign, port, path))
    await phase("invalid UTF-8", thread(wire.invalid_utf8, port, path))
    await phase("routes", thread(routes, port, server.token, recordings))
    await phase("after (2 players)", companion(args.phase_seconds))
    await player.ws.send(json.dumps({"type": "record", "on": False}))
    rss_mid = server.rss_mb()
    await asyncio.sleep(1.0)
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
            "recordings_ok": good, "recordings": total, "player_recording": player_recording(player, recordings, args)}


def routes(port: int, token: str, recordings: Path) -> dict[str, Any]:
    """wire.routes, and HEAD on a recording (answered as GET is: 200)."""
    result = wire.routes(port, token)
    name = next((p.name for p in recordings.glob("*.mp4")), "0" * 32 + ".mp4")
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("HEAD", f"/recordings/{name}?token={token}")
    result["head_recording"] = conn.getresponse().status
    conn.close()
    return result


def player_recording(player: Player, recordings: Path, args: SoakArgs) -> dict[str, Any]:
    """The player's recording of the attack phases: its frames against its wall time (the world
    clock), and a replay that must regenerate every frame identically."""
    started = next(((t, m) for t, m in player.recordings if m.get("state") == "started"), None)
    stopped = next(((t, m) for t, m in player.recordings if m.get("state") == "stopped"), None)
    if started is None or stopped is None:
        return {"found": False}
    out: dict[str, Any] = {"found": True, "frames": stopped[1]["frames"], "wall_s": round(stopped[0] - started[0], 1),
                           "fps": args.fps}
    actions = recordings / f"{stopped[1]['id']}.actions.jsonl"
    with tempfile.TemporaryDirectory() as tmp:
        r = run_record(RecordArgs(replay=str(actions), out=str(Path(tmp) / "replay.mp4")))
    out.update(replay_identical=r["identical"], replay_mismatched=r["mismatched"], exact=r["exact"])
    return out


def failures(r: dict[str, Any], args: SoakArgs) -> list[str]:
    """Every invariant the campaign checks that did not hold (empty: all held)."""
    p = {row["phase"]: row for row in r["phases"]}
    bad = []
    if r["server_crashed"] or not all(row["server_alive"] for row in r["phases"]):
        bad.append("the server crashed")
    if r["server_tracebacks"]:
        bad.append(f"{r['server_tracebacks']} tracebacks in the server log")
    if r["sessions_lost"]:
        bad.append("the player's session was lost")
    if r["fuzz_unanswered"]:
        bad.append(f"{r['fuzz_unanswered']} fuzzed messages unanswered")
    if r["recordings_ok"] != r["recordings"]:
        bad.append(f"{r['recordings'] - r['recordings_ok']} recordings do not decode complete")
    rec = r["player_recording"]
    if not rec.get("found") or not rec["exact"]:
        bad.append(f"the player's recording does not replay exactly: {rec}")
    elif rec["frames"] > rec["wall_s"] * args.fps * 1.05 + 2:
        bad.append(f"the world ran fast: {rec['frames']} frames in {rec['wall_s']} s at {args.fps} FPS")
    if (p["keys toggled 90/s"]["player_fps"] or 0) > args.fps * 1.1 + 1:
        bad.append(f"key toggling sped the player's world up to {p['keys toggled 90/s']['player_fps']} FPS")
    if p["command burst"]["unanswered"] or not p["command burst"]["record_after_resets"]:
        bad.append(f"commands dropped silently: {p['command burst']}")
    if p["fragments"]["closed_after_s"] is None or p["fragments"]["close_code"] != 1008:
        bad.append(f"endless fragments were not closed: {p['fragments']}")
    if p["fragments, wrong token"]["longest_connection_s"] > 5:
        bad.append(f"an unauthorised connection lived too long: {p['fragments, wrong token']}")
    freed = p["slow reader"]["freed_after_s"]
    if args.slow_seconds >= args.keepalive + 5 and (freed is None or freed > args.keepalive + 5):
        bad.append(f"the slow reader held its slot {freed} s (keepalive {args.keepalive} s)")
    if (p["foreign origin"]["foreign_origin"], p["foreign origin"]["rebound_name"]) != (403, 403):
        bad.append(f"a foreign origin was let in: {p['foreign origin']}")
    if p["invalid UTF-8"]["close_code"] != 1007:
        bad.append(f"invalid UTF-8 was not closed with 1007: {p['invalid UTF-8']}")
    if p["routes"]["not_404"] or p["routes"]["head_recording"] != 200:
        bad.append(f"routes: {p['routes']}")
    for row in r["phases"]:
        if row["phase"] in WIRE and row["rss_mb_growth"] >= RSS_GROWTH_MB:
            bad.append(f"{row['phase']}: server RSS grew {row['rss_mb_growth']} MB")
    return bad


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
    result["failures"] = failures(result, args)
    result["ok"] = not result["failures"]
    result["refusals_logged"] = sum("refused" in line or "closed:" in line for line in text.splitlines())
    if result["server_tracebacks"]:
        result["server_log_tail"] = text[-2000:]
    return result


def format_table(r: dict[str, Any]) -> str:
    lines = ["| phase | messages | player FPS | vs before | seconds | RSS MB +peak / +left | server up | details |",
             "|---|---|---|---|---|---|---|---|"]
    base = r["phases"][0]["player_fps"] or float("nan")
    shown = ("phase", "messages", "player_fps", "seconds", "server_alive", "rss_mb_growth", "rss_mb_left")
    for p in r["phases"]:
        extra = {k: v for k, v in p.items() if k not in shown}
        fps = "–" if p["player_fps"] is None else f"{p['player_fps']:.1f} | {p['player_fps'] / base:.0%}"
        lines.append(f"| {p['phase']} | {p['messages']} | {fps if '|' in fps else fps + ' | –'} | "
                     f"{p['seconds']} | {p['rss_mb_growth']:+.1f} / {p['rss_mb_left']:+.1f} | "
                     f"{'yes' if p['server_alive'] else 'NO'} | {', '.join(f'{k}={v}' for k, v in extra.items())} |")
    lines.append("")
    rec = r["player_recording"]
    if rec.get("found"):
        lines.append(f"player's recording of the attacks: {rec['frames']} frames in {rec['wall_s']} s at "
                     f"{rec['fps']:g} FPS; replay: {rec['replay_identical']} identical, {rec['replay_mismatched']} "
                     f"different")
    lines.append(f"server crashed: {r['server_crashed']}; tracebacks logged: {r['server_tracebacks']}; sessions lost: "
                 f"{r['sessions_lost']}; fuzz messages unanswered: {r['fuzz_unanswered']}")
    lines.append(f"RSS MB: start {r['rss_mb_start']}, after attacks {r['rss_mb_after_attacks']}, "
                 f"end {r['rss_mb_end']}; "
                 f"recordings that decode complete: {r['recordings_ok']}/{r['recordings']}; "
                 f"server start {r['server_start_s']} s")
    lines.append(f"refusals logged (one line each): {r['refusals_logged']}")
    lines += [f"FAILED: {f}" for f in r["failures"]]
    lines.append("verdict: " + ("OK" if r["ok"] else "FAILED"))
    return "\n".join(lines)
