"""Nothing a client sends can end a session (issue #16): each defect found by a hostile client
has a test here that failed before its fix; plus slow readers, disk-full recordings, ports in use."""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import socket
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from app.cli import main
from app.play.connection import Connection
from app.play.listen import bind
from app.play.protocol import ProtocolError, parse
from app.play.recorder import EventLog, Recorder, event_reset, event_step, read_events
from app.play.server import CLOSE_ERROR, CLOSE_POLICY, ServeArgs, create_app
from app.play.session import FrameOut, Plan, PlaySession, Tick
from engine.action import Action
from tests.conftest import TINY, MakeClient
from tests.test_play import next_frame, wait_for

ROOT = Path(__file__).parents[1]


def _decoded(path: Path, truncated: bool = False) -> tuple[int, int]:
    """(video streams, decoded frames) of an MP4; ``truncated``: the file was cut off by a full
    disk, count the frames before the cut (a player stops there too)."""
    frames = 0
    with av.open(str(path)) as c:
        try:
            for _ in c.decode(video=0):
                frames += 1
        except av.error.InvalidDataError:
            if not truncated:
                raise
        return len(c.streams.video), frames


def close_message(ws, limit: int) -> dict:
    """Read (at most ``limit`` messages) until the server's close; returns that message."""
    for _ in range(limit):
        m = ws.receive()
        if m["type"] == "websocket.close":
            return m
    raise AssertionError(f"no close within {limit} messages")


# ---------------------------------------------------------------- 1. a 400-digit ts
def test_huge_numbers_are_answered_not_fatal(make_client: MakeClient) -> None:
    for ts in ("1" * 400, "-" + "9" * 4000, "1e400", "NaN"):
        with pytest.raises(ProtocolError, match="ts must be a finite number"):
            parse('{"type": "input", "seq": 1, "ts": ' + ts + ', "keys": []}')
    with make_client().websocket_connect("/ws") as ws:
        next_frame(ws)
        ws.send_text('{"type": "input", "seq": 1, "ts": ' + "1" * 400 + ', "keys": ["KeyW"]}')
        assert "finite number" in wait_for(ws, "error")["message"]
        ws.send_text(json.dumps({"type": "input", "seq": 2, "ts": 5.0, "keys": ["KeyW"]}))
        for _ in range(10):
            meta, _, _ = next_frame(ws)
            if meta["seq"] == 2:
                break
        assert meta["seq"] == 2 and meta["ts"] == 5.0  # the session went on


# ---------------------------------------------------------------- 2. zero-frame recordings
@pytest.mark.parametrize("paused", [True, False])
def test_record_on_and_off_at_once_is_a_valid_empty_recording(tmp_path: Path, make_client: MakeClient,
                                                              paused: bool) -> None:
    with make_client().websocket_connect("/ws") as ws:
        next_frame(ws)
        if paused:
            ws.send_text(json.dumps({"type": "pause", "paused": True}))
            wait_for(ws, "paused")
        ws.send_text(json.dumps({"type": "record", "on": True}))
        ws.send_text(json.dumps({"type": "record", "on": False}))
        started = wait_for(ws, "recording")
        stopped = wait_for(ws, "recording")
        assert started["state"] == "started" and stopped["state"] == "stopped", stopped
        if paused:
            assert stopped["frames"] == 0
            ws.send_text(json.dumps({"type": "pause", "paused": False}))
        next_frame(ws)  # the session goes on
    stem = tmp_path / "rec" / stopped["id"]
    assert _decoded(stem.with_suffix(".mp4")) == (1, stopped["frames"])
    meta = json.loads(stem.with_suffix(".meta.json").read_text())
    assert meta["complete"] is True and meta["frames"] == stopped["frames"]


def test_empty_recording_when_the_client_left_first(tmp_path: Path, make_client: MakeClient,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    client = make_client()
    with caplog.at_level(logging.WARNING), client.websocket_connect("/ws") as ws:
        next_frame(ws)
        ws.send_text(json.dumps({"type": "pause", "paused": True}))
        ws.send_text(json.dumps({"type": "record", "on": True}))
        ws.send_text(json.dumps({"type": "record", "on": False}))
    # The test client cancels the handler as it leaves; the recording is closed on the engine
    # thread, queued before the handler returned: wait for that thread to drain.
    client.app.state.hub.executor.submit(lambda: None).result(timeout=60)
    assert client.get("/healthz").json()["ok"]
    metas = list((tmp_path / "rec").glob("*.meta.json"))
    if metas:  # the commands may not have been applied before the client left
        assert all(json.loads(m.read_text())["complete"] for m in metas)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


def test_recorder_zero_frames_and_shape_checks(tmp_path: Path) -> None:
    meta = Recorder(tmp_path / "empty", {}, fps=17.5, frame_size=(12, 16), scale=3).close()
    assert meta["complete"] and meta["frames"] == 0 and _decoded(tmp_path / "empty.mp4") == (1, 0)
    r = Recorder(tmp_path / "r", {}, fps=10.0, frame_size=(12, 16), scale=1)
    with pytest.raises(ValueError, match="shape"):
        r.add(event_step(Action()), 1, np.zeros((16, 12, 3), np.uint8))
    with pytest.raises(ValueError, match="even"):
        Recorder(tmp_path / "odd", {}, fps=10.0, frame_size=(11, 16), scale=1)


# ---------------------------------------------------------------- 3. a non-ASCII token
def test_non_ascii_token_is_refused_not_fatal(make_client: MakeClient) -> None:
    client = make_client(token="correct-horse")
    with client.websocket_connect("/ws?token=%C3%BCber-horse") as ws:
        assert json.loads(ws.receive_text())["code"] == "unauthorised"
        with pytest.raises(WebSocketDisconnect) as e:
            ws.receive_text()
        assert e.value.code == CLOSE_POLICY
    assert client.get(f"/recordings/{'0' * 32}.mp4?token=%C3%BCber").status_code == 403
    assert client.get(f"/recordings/{'0' * 32}.mp4?token=%F0%9F%98%80").status_code == 403
    assert client.get(f"/recordings/{'0' * 32}.mp4?token=correct-horse").status_code == 404


# ---------------------------------------------------------------- 4. half a tokenizer
def _checkpoint_with_tokenizer(folder: Path) -> Path:
    from engine.checkpoint import save_checkpoint
    from engine.config import PRESETS
    from engine.model.dit import DiT
    from engine.tokenizer import Tokenizer, TokenizerConfig, save_tokenizer

    tiny = PRESETS["tiny"]
    save_checkpoint(folder, tiny, DiT(tiny.model).state_dict())
    cfg = TokenizerConfig(latent_channels=4, widths=(4, 8, 8), blocks=(0, 0, 0), height=12, width=16)
    save_tokenizer(folder, Tokenizer(cfg))
    return folder


@pytest.mark.parametrize("missing", ["tokenizer.json", "tokenizer.safetensors"])
def test_half_a_tokenizer_is_an_error_not_the_stand_in(tmp_path: Path, missing: str) -> None:
    from app.engine_spec import EngineSpec
    from engine.engine import Engine

    folder = _checkpoint_with_tokenizer(tmp_path / "model")
    assert "tokenizer" in Engine.from_checkpoint(folder).decoder.name
    (folder / missing).unlink()
    with pytest.raises(ValueError, match=f"{missing}: missing"):
        EngineSpec(model=str(folder), dtype="fp32").build()


def test_a_model_without_tokenizer_is_served_with_a_warning(tmp_path: Path,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    from app.engine_spec import EngineSpec

    folder = _checkpoint_with_tokenizer(tmp_path / "model")
    for name in ("tokenizer.json", "tokenizer.safetensors"):
        (folder / name).unlink()
    with caplog.at_level(logging.WARNING):
        app = create_app(ServeArgs(recordings=str(tmp_path / "rec")), EngineSpec(model=str(folder), dtype="fp32"),
                         page=False)
    assert "untrained stand-in" in caplog.text
    assert "stand-in" in app.state.hub.health()["decoder"]


# ---------------------------------------------------------------- 5. unusable --recordings
def test_unusable_recordings_folder_fails_at_start(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(ValueError, match="is not a folder"):
        create_app(ServeArgs(recordings=str(afile / "rec")), TINY, page=False)
    assert main(["play", "--preset", "tiny", "--dtype", "fp32", "--port", "0", "--recordings", str(afile)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--recordings" in err and "not a folder" in err


# ---------------------------------------------------------------- 6. an hour of history
def test_history_is_run_length_encoded_and_replays_exactly(tmp_path: Path) -> None:
    log = EventLog()
    events = [event_reset(7, "map01")] + [event_step(Action.of("forward"))] * 5000 + \
        [event_step(Action()), event_step(Action.of("attack")), event_step(Action.of("attack"))]
    log.reset(events[0])
    for e in events[1:]:
        log.add(e)
    assert log.runs == 4 and log.events == len(events)
    path = tmp_path / "h.actions.jsonl"
    path.write_text(log.prefix())
    assert len(path.read_text().splitlines()) == 4
    assert [{k: v for k, v in e.items() if k != "rec"} for e in read_events(path)] == \
        [{"event": "step", **e} if "event" not in e else e for e in events]


def test_recording_after_many_held_steps_replays_exactly(tmp_path: Path) -> None:
    """A session held "forward" for 300 frames, then turned, then recorded: the recording's
    prefix is 3 lines, and ``record --replay`` regenerates its frames bit for bit."""
    from app.play.protocol import Input, Record
    from app.play.session import SessionInfo
    from app.scenes import SceneStarter

    engine = TINY.build()
    info = SessionInfo(model="tiny", fps=17.5, engine=TINY.describe(), recordings=tmp_path, starter=SceneStarter())
    session = PlaySession(engine, info)
    session.start(seed=3)
    for i, keys in enumerate([("KeyW",)] * 300 + [("KeyA",)] * 5):
        session.set_input(Input(seq=i + 1, ts=float(i), keys=keys, gamepad=None))
        session.tick(True)
    assert session.history.runs == 3
    session.command(Record(on=True))
    for _ in range(6):
        session.tick(True)
    session.command(Record(on=False))
    stopped = json.loads(session.tick(False).messages[0])
    assert stopped["frames"] == 6
    actions = tmp_path / f"{stopped['id']}.actions.jsonl"
    assert len(actions.read_text().splitlines()) == 3 + 6
    assert main(["record", "--replay", str(actions), "--out", str(tmp_path / "again.mp4")]) == 0


# ---------------------------------------------------------------- 7. slow readers, floods, ports
class BlockedSocket:
    """A websocket whose client does not read: every send waits until ``unblock``."""

    def __init__(self) -> None:
        self.open = asyncio.Event()
        self.sent: list[str | bytes] = []

    async def send_text(self, text: str) -> None:
        await self.open.wait()
        self.sent.append(text)

    async def send_bytes(self, data: bytes) -> None:
        await self.open.wait()
        self.sent.append(data)


def test_a_client_that_does_not_read_gets_the_newest_frame_not_a_queue(tmp_path: Path) -> None:
    class Hub:  # what Connection uses of the hub
        args = ServeArgs(recordings=str(tmp_path))
        frames_dropped = 0

    async def scenario() -> tuple[Connection, BlockedSocket]:
        ws = BlockedSocket()
        conn = Connection(ws, Hub(), session=None)  # type: ignore[arg-type]
        sender = asyncio.create_task(conn.sender())
        for i in range(500):  # 500 frames made while the client reads nothing
            meta = {"type": "frame", "index": i, "seq": 9 if i == 3 else None, "ts": 1.5 if i == 3 else None}
            conn.post(Tick([json.dumps({"type": "error", "message": str(i)})], FrameOut(meta, bytes(1000))))
            await asyncio.sleep(0)
        assert conn.latest is not None and len(conn.outbox) <= 256  # bounded: one frame, capped replies
        ws.open.set()
        await asyncio.sleep(0.05)
        sender.cancel()
        return conn, ws

    conn, ws = asyncio.run(scenario())
    assert conn.hub.frames_dropped == conn.frames_dropped
    frames = [json.loads(m) for m in ws.sent if isinstance(m, str) and '"frame"' in m]
    assert frames[-1]["index"] == 499  # the newest frame wins
    assert frames[-1]["seq"] == 9 and frames[-1]["ts"] == 1.5  # a dropped frame's input echo is kept
    assert conn.frames_dropped == 500 - len(frames) > 400 and conn.messages_dropped > 0


def test_an_input_flood_is_limited_then_closed_and_others_play_on(make_client: MakeClient) -> None:
    """A burst over the limit gets an error and goes on; a flood of more than max(1000, 20 x rate)
    dropped messages in one second is closed with 1008; the other session never notices."""
    client = make_client(rate_limit=20.0, max_sessions=2)
    with client.websocket_connect("/ws") as flood, client.websocket_connect("/ws") as calm:
        next_frame(flood)
        first, _, _ = next_frame(calm)
        for i in range(300):
            flood.send_text(json.dumps({"type": "input", "seq": i + 1, "ts": 0.0, "keys": ["KeyW"]}))
        assert "too many messages" in wait_for(flood, "error")["message"]
        next_frame(flood)  # limited, not closed
        for i in range(3000):
            flood.send_text(json.dumps({"type": "input", "seq": i + 1, "ts": 0.0, "keys": ["KeyW"]}))
        assert close_message(flood, 1000) == {"type": "websocket.close", "code": CLOSE_POLICY, "reason": "input flood"}
        for _ in range(20):
            meta, _, _ = next_frame(calm)
        assert meta["index"] >= first["index"] + 20
        calm.send_text(json.dumps({"type": "stats"}))
        assert wait_for(calm, "stats")["dropped_messages"] == 0


def test_port_in_use_fails_at_once_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    try:
        with pytest.raises(ValueError, match=f"port {port} on 127.0.0.1 is in use"):
            bind("127.0.0.1", port)
        assert main(["play", "--preset", "tiny", "--port", str(port)]) == 2
        err = capsys.readouterr()
        assert "in use" in err.err and "serving" not in err.out
    finally:
        taken.close()
    sock = bind("127.0.0.1", 0)  # port 0: any free port
    assert sock.getsockname()[1] > 0
    sock.close()


# ---------------------------------------------------------------- 8. no analytics
def test_page_has_gradio_analytics_off(tmp_path: Path) -> None:
    with TestClient(create_app(ServeArgs(recordings=str(tmp_path)), TINY, page=True)) as client:
        config = client.get("/config")
        assert config.status_code == 200
        assert config.json()["analytics_enabled"] is False


# ---------------------------------------------------------------- server and disk failures
def test_an_engine_failure_closes_only_that_session_and_leaks_no_path(make_client: MakeClient,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    client = make_client(max_sessions=2)
    with client.websocket_connect("/ws") as calm:
        next_frame(calm)
        original = PlaySession.begin

        def begin(self: PlaySession, step: bool) -> Plan:
            if self.engine.slot == 1:
                raise FileNotFoundError(2, "No such file", "/srv/secret/weights.bin")
            return original(self, step)

        monkeypatch.setattr(PlaySession, "begin", begin)
        with client.websocket_connect("/ws") as doomed:
            msg = wait_for(doomed, "error")
            assert msg["code"] == "server_error" and "/srv" not in json.dumps(msg)
            assert close_message(doomed, 100) == {"type": "websocket.close", "code": CLOSE_ERROR,
                                                  "reason": "server error"}
        for _ in range(5):
            next_frame(calm)


def test_a_recording_that_cannot_be_written_stops_the_recording_not_the_session(
        tmp_path: Path, make_client: MakeClient, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(self: Recorder, *args: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(self.video_path))

    with make_client().websocket_connect("/ws") as ws:
        next_frame(ws)
        ws.send_text(json.dumps({"type": "record", "on": True}))
        assert wait_for(ws, "recording")["state"] == "started"
        monkeypatch.setattr(Recorder, "add", full)
        failed = wait_for(ws, "recording")
        assert failed["state"] == "failed" and "disk full" in failed["message"], failed
        assert str(tmp_path) not in json.dumps(failed)
        next_frame(ws)
        next_frame(ws)  # the session goes on


CAPPED = """
import resource, sys
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]), int(sys.argv[1])))
from app.cli import main
sys.exit(main(sys.argv[2:]))
"""


def _capped(limit: int, *argv: str) -> subprocess.CompletedProcess[str]:
    """``worldstream ARGV`` where no file may grow past ``limit`` bytes (a disk that fills up)."""
    return subprocess.run([sys.executable, "-c", CAPPED, str(limit), *argv], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)


def test_record_on_a_full_disk_keeps_what_was_written(tmp_path: Path) -> None:
    out = tmp_path / "full.mp4"
    proc = _capped(60_000, "record", "--preset", "tiny", "--dtype", "fp32", "--seconds", "30", "--scale", "8",
                   "--out", str(out))
    assert proc.returncode == 2, proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert "disk full" in line and "kept" in line and "Traceback" not in proc.stderr
    streams, frames = _decoded(out, truncated=True)
    assert streams == 1 and frames > 0, proc.stderr
    assert len(read_events(tmp_path / "full.actions.jsonl")) >= frames
    meta = json.loads((tmp_path / "full.meta.json").read_text())
    assert meta["complete"] is False and "disk full" in meta["error"] and meta["frames"] >= frames


def test_eval_on_a_full_disk_keeps_scored_episodes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """The disk fills while eval rewrites its results after the second episode: the first
    episode's row stays (results are replaced atomically), one line says what happened, and a
    re-run on a free disk resumes from the kept row. (ViZDoom's shared memory dies under a file-size
    limit, so this disk is simulated in-process.)"""
    real_write = Path.write_text
    writes = {"n": 0}

    def write_text(self: Path, data: str, *args: object, **kwargs: object) -> int:
        if self.name == "episodes.jsonl.tmp":
            writes["n"] += 1
            if writes["n"] == 2:
                real_write(self, data[: len(data) // 2])  # half written, then the disk is full
                raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return real_write(self, data, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "write_text", write_text)
    args = ["eval", "--predictor", "copy-last", "--episodes", "2", "--seconds", "1", "--out", str(tmp_path)]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "disk full" in err, err
    rows = [json.loads(line) for line in (tmp_path / "episodes.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["status"] == "ok"
    monkeypatch.setattr(Path, "write_text", real_write)
    assert main([*args, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ok"] == 2


def test_corrupt_inputs_are_one_line_each(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A broken actions file, recording meta or repeat count: exit 2 and one line naming the file
    (and line), never a traceback; nothing is written for a run that could not start."""
    bad = tmp_path / "bad.actions.jsonl"
    bad.write_text('{"event": "reset", "seed": 1}\n{"event": "step", "buttons": ["forward"]}\n{"event": "st')
    out = tmp_path / "x.mp4"
    cases = [
        (["record", "--preset", "tiny", "--actions", str(bad), "--out", str(out)], f"{bad}:3: not JSON"),
        (["record", "--replay", str(bad)], "bad.meta.json"),
    ]
    (tmp_path / "r.meta.json").write_text("{not json")
    (tmp_path / "r.actions.jsonl").write_text('{"event": "reset", "seed": 1}\n')
    cases.append((["record", "--replay", str(tmp_path / "r.actions.jsonl")], "r.meta.json: not JSON"))
    rep = tmp_path / "rep.actions.jsonl"
    rep.write_text('{"event": "reset", "seed": 1}\n{"event": "step", "buttons": [], "repeat": 0}\n')
    cases.append((["record", "--preset", "tiny", "--actions", str(rep), "--out", str(out)],
                  "step repeat must be an integer"))
    for argv, expected in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert expected in err and err.count("\n") == 0 and "Traceback" not in err, (argv, err)
    assert not out.exists() and not (tmp_path / "x.actions.jsonl").exists()
