"""Browser play: controls mapping, protocol validation, the websocket server, recording, replay."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
from pathlib import Path

import av
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from starlette.websockets import WebSocketDisconnect

from app.attacks import hostile_messages
from app.cli import main
from app.play.controls import KEYS, Gamepad, to_action
from app.play.protocol import MAX_MESSAGE_BYTES, Input, Pause, ProtocolError, Record, Reset, Stats, parse
from app.play.recorder import Recorder, read_events
from app.play.server import CLOSE_FULL, CLOSE_POLICY
from engine.action import BUTTONS, Action
from tests.conftest import MakeClient


def next_frame(ws) -> tuple[dict, bytes, list[dict]]:
    """Read until a frame; returns (frame meta, JPEG, other text messages seen)."""
    others = []
    while True:
        msg = json.loads(ws.receive_text())
        if msg["type"] == "frame":
            return msg, ws.receive_bytes(), others
        others.append(msg)


def wait_for(ws, kind: str, limit: int = 500) -> dict:
    for _ in range(limit):
        m = ws.receive()
        if m.get("text"):
            msg = json.loads(m["text"])
            if msg["type"] == kind:
                return msg
    raise AssertionError(f"no {kind} message")


def sessions_drop_to(client: TestClient, n: int) -> bool:
    """The server frees a slot just after a client leaves: poll /healthz for a moment."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if client.get("/healthz").json()["sessions"] == n:
            return True
        time.sleep(0.02)
    return False


# ---------------------------------------------------------------- controls + protocol
def test_keys_and_gamepad_map_to_actions() -> None:
    for button, codes in KEYS.items():
        for code in codes:
            assert to_action([code]) == Action.of(button)
    assert to_action(["KeyW", "ArrowLeft", "Space"]) == Action.of("forward", "turn_left", "attack")
    assert to_action(["KeyZ", "F13"]) == Action()  # unmapped keys are ignored
    pad = Gamepad(axes=(0.9, -0.8, -0.7, 0.0), buttons=(1.0,) + (0.0,) * 6 + (0.8,))
    assert to_action([], pad) == Action.of("strafe_right", "forward", "turn_left", "use", "attack")
    assert to_action([], Gamepad(axes=(0.3, -0.4, 0.45))) == Action()  # inside the thresholds
    assert to_action(["KeyS"], Gamepad(buttons=(0.0,) * 14 + (1.0,))) == Action.of("backward", "turn_left")
    assert set(KEYS) == set(BUTTONS)


def test_protocol_accepts_valid_messages() -> None:
    m = parse(json.dumps({"type": "input", "seq": 3, "ts": 12.5, "keys": ["KeyW"],
                          "gamepad": {"axes": [0.5, -1], "buttons": [0, 1]}}))
    assert isinstance(m, Input) and m.keys == ("KeyW",) and m.gamepad == Gamepad((0.5, -1.0), (0.0, 1.0))
    assert parse('{"type": "reset"}') == Reset(None) and parse('{"type": "reset", "seed": 7}') == Reset(7)
    assert parse('{"type": "pause", "paused": true}') == Pause(True)
    assert parse('{"type": "record", "on": false}') == Record(False)
    assert parse('{"type": "stats"}') == Stats()


@pytest.mark.parametrize(("text", "error"), [
    ("{nope", "malformed JSON"),
    ("[1, 2]", "JSON object"),
    ('{"type": "teleport"}', "unknown message type"),
    ('{"type": "reset", "seed": 1, "extra": 2}', "unknown field"),
    ('{"type": "input", "seq": 1, "ts": 0}', "missing field"),
    ('{"type": "input", "seq": true, "ts": 0, "keys": []}', "seq must be an integer"),
    ('{"type": "input", "seq": 1, "ts": NaN, "keys": []}', "finite number"),
    ('{"type": "input", "seq": 1, "ts": 0, "keys": "KeyW"}', "list of at most"),
    ('{"type": "input", "seq": 1, "ts": 0, "keys": [], "gamepad": {"axes": [2]}}', "axes"),
    ('{"type": "reset", "seed": -1}', "seed must be an integer"),
    ('{"type": "pause", "paused": "yes"}', "true or false"),
    (b"\x00\xff", "binary"),
    ('{"type": "stats", "pad": "' + "x" * MAX_MESSAGE_BYTES + '"}', "too large"),
    ("[" * 4000, "malformed JSON"),  # deeper than the JSON parser recurses
])
def test_protocol_rejects_bad_messages(text: str | bytes, error: str) -> None:
    with pytest.raises(ProtocolError, match=error):
        parse(text)


# ---------------------------------------------------------------- server
def test_frames_are_jpegs_of_the_frame_size(make_client: MakeClient) -> None:
    client = make_client()
    assert client.get("/healthz").json()["sessions"] == 0
    with client.websocket_connect("/ws") as ws:
        hello = json.loads(ws.receive_text())
        assert hello["type"] == "hello" and (hello["width"], hello["height"]) == (16, 12)
        indices = []
        for _ in range(4):
            meta, jpeg, _ = next_frame(ws)
            img = Image.open(io.BytesIO(jpeg))
            assert img.format == "JPEG" and img.size == (16, 12)
            indices.append(meta["index"])
            assert meta["ms"]["model"] > 0 and "jpeg" in meta["ms"]
        assert indices == [0, 1, 2, 3]
        assert client.get("/healthz").json()["sessions"] == 1
    assert sessions_drop_to(client, 0)


def _first_step_after_reset(ws, seed: int, keys: list[str]) -> tuple[dict, bytes]:
    """Pause, reset to ``seed``, set ``keys``, resume: the first stepped frame (x_1) and its meta."""
    while next_frame(ws)[0]["index"] < 1:  # past the session's own x_0
        pass
    ws.send_text(json.dumps({"type": "pause", "paused": True}))
    wait_for(ws, "paused")
    ws.send_text(json.dumps({"type": "reset", "seed": seed}))
    while True:  # frames already in flight before the pause may still arrive
        meta, _, _ = next_frame(ws)
        if meta["index"] == 0:
            break
    ws.send_text(json.dumps({"type": "input", "seq": 1, "ts": 1.0, "keys": keys}))
    ws.send_text(json.dumps({"type": "pause", "paused": False}))
    meta, jpeg, _ = next_frame(ws)
    assert meta["index"] == 1
    return meta, jpeg


def test_keys_change_frames(make_client: MakeClient) -> None:
    client = make_client()
    runs = {}
    for name, keys in (("none", []), ("none again", []), ("forward", ["KeyW"]), ("turn", ["ArrowLeft"])):
        with client.websocket_connect("/ws") as ws:
            runs[name] = _first_step_after_reset(ws, seed=5, keys=keys)
    assert runs["forward"][0]["action"] == ["forward"] and runs["forward"][0]["seq"] == 1
    assert runs["none"][1] == runs["none again"][1]  # same seed, same keys: same frame
    assert runs["forward"][1] != runs["none"][1] and runs["turn"][1] != runs["forward"][1]


def test_bad_messages_are_answered_and_the_session_goes_on(make_client: MakeClient) -> None:
    client = make_client()
    with client.websocket_connect("/ws") as ws:
        next_frame(ws)
        for bad in ("{", '{"type": "fly"}', '{"type": "stats", "x": 1}', "x" * (MAX_MESSAGE_BYTES + 10)):
            ws.send_text(bad)
            assert wait_for(ws, "error")["message"]
        ws.send_bytes(b"\x89PNG junk")
        assert "binary" in wait_for(ws, "error")["message"]
        ws.send_text('{"type": "record", "on": false}')
        assert "already stopped" in wait_for(ws, "error")["message"]
        ws.send_text('{"type": "stats"}')
        stats = wait_for(ws, "stats")
        assert stats["sessions"] == 1 and stats["frames_sent"] >= 1
        meta, _, _ = next_frame(ws)
        assert meta["index"] >= 1


def test_flood_is_rate_limited_not_fatal(make_client: MakeClient) -> None:
    client = make_client(rate_limit=20.0)
    with client.websocket_connect("/ws") as ws:
        for i in range(300):
            ws.send_text(json.dumps({"type": "input", "seq": i + 1, "ts": 0.0, "keys": []}))
        assert "too many messages" in wait_for(ws, "error")["message"]
        next_frame(ws)  # still alive


def test_server_full_and_token(make_client: MakeClient) -> None:
    client = make_client(max_sessions=1, token="s3cret-token")
    with pytest.raises(WebSocketDisconnect) as refused, client.websocket_connect("/ws?token=wrong") as ws:
        assert json.loads(ws.receive_text())["code"] == "unauthorised"
        ws.receive_text()
    assert refused.value.code == CLOSE_POLICY
    with client.websocket_connect("/ws?token=s3cret-token") as ws:
        next_frame(ws)
        with pytest.raises(WebSocketDisconnect) as full, client.websocket_connect("/ws?token=s3cret-token") as ws2:
            msg = json.loads(ws2.receive_text())
            assert msg["code"] == "server_full" and "server full" in msg["message"]
            ws2.receive_text()
        assert full.value.code == CLOSE_FULL
        next_frame(ws)  # the first player is unaffected
    assert sessions_drop_to(client, 0)
    with client.websocket_connect("/ws?token=s3cret-token") as ws:  # the slot is free again
        next_frame(ws)


def _record(ws, frames: int) -> str:
    ws.send_text(json.dumps({"type": "input", "seq": 1, "ts": 1.0, "keys": ["KeyW", "KeyQ"]}))
    ws.send_text('{"type": "record", "on": true}')
    rid = wait_for(ws, "recording")["id"]
    for _ in range(frames):
        next_frame(ws)
    return rid


def _decoded_frames(path: Path) -> int:
    with av.open(str(path)) as c:
        return sum(1 for _ in c.decode(video=0))


def test_recording_to_mp4_download_and_exact_replay(tmp_path: Path, make_client: MakeClient) -> None:
    client = make_client(max_sessions=2)
    with client.websocket_connect("/ws") as other, client.websocket_connect("/ws") as ws:
        next_frame(other)  # the recorded session runs on cache slot 1
        for _ in range(5):
            next_frame(ws)
        rid = _record(ws, 12)
        ws.send_text('{"type": "record", "on": false}')
        stopped = wait_for(ws, "recording")
    assert stopped["state"] == "stopped" and stopped["url"] == f"recordings/{rid}.mp4"
    r = client.get(f"/recordings/{rid}.mp4")
    assert r.status_code == 200 and r.headers["content-type"] == "video/mp4"
    video = tmp_path / "dl.mp4"
    video.write_bytes(r.content)
    assert _decoded_frames(video) == stopped["frames"] >= 12
    with av.open(str(video)) as c:
        assert (c.streams.video[0].width, c.streams.video[0].height) == (48, 36)  # 3x nearest-neighbour
    events = read_events(tmp_path / "rec" / f"{rid}.actions.jsonl")
    assert events[0]["event"] == "reset" and not events[0]["rec"]  # the replay prefix
    assert sum(e["rec"] for e in events) == stopped["frames"]
    meta = json.loads(client.get(f"/recordings/{rid}.meta.json").text)
    assert meta["complete"] and meta["frames"] == stopped["frames"]
    # path safety: only ids, never paths
    for bad in ("..%2F..%2Fetc%2Fpasswd", f"{rid}.py", "x" * 32 + ".mp4", f"{rid[:-1]}.mp4"):
        assert client.get(f"/recordings/{bad}").status_code == 404
    # the replay regenerates the identical frames (on a fresh single-slot engine)
    assert main(["record", "--replay", str(tmp_path / "rec" / f"{rid}.actions.jsonl"),
                 "--out", str(tmp_path / "again.mp4")]) == 0
    assert _decoded_frames(tmp_path / "again.mp4") == stopped["frames"]


def test_disconnect_while_recording_finalises_the_file(tmp_path: Path, make_client: MakeClient) -> None:
    client = make_client()
    with client.websocket_connect("/ws") as ws:
        rid = _record(ws, 8)
    meta_path = tmp_path / "rec" / f"{rid}.meta.json"
    assert sessions_drop_to(client, 0)
    deadline = time.monotonic() + 10
    while not (meta := json.loads(meta_path.read_text()))["complete"] and time.monotonic() < deadline:
        time.sleep(0.02)  # the server finalises the file just after the client left
    assert meta["complete"] and meta["frames"] >= 8
    assert _decoded_frames(tmp_path / "rec" / f"{rid}.mp4") == meta["frames"]


CRASH = """
import sys, numpy as np, os
from app.play.recorder import Recorder
from app.play.recorder import event_step
from engine.action import Action
r = Recorder(sys.argv[1], {"engine": {}}, fps=10.0, frame_size=(24, 32), scale=2)
rng = np.random.default_rng(0)
for i in range(35):
    r.add(event_step(Action()), i, rng.integers(0, 255, (24, 32, 3), dtype=np.uint8))
os._exit(1)  # die without closing the recording
"""


def test_recording_survives_a_crash(tmp_path: Path) -> None:
    stem = tmp_path / "crashed"
    proc = subprocess.run([sys.executable, "-c", CRASH, str(stem)], capture_output=True, cwd=Path(__file__).parents[1])
    assert proc.returncode == 1, proc.stderr
    # Keyframe (and fragment) every second: the first 3 whole seconds survive.
    assert _decoded_frames(tmp_path / "crashed.mp4") >= 30
    assert len(read_events(tmp_path / "crashed.actions.jsonl")) == 35


def test_recorder_rejects_use_after_close(tmp_path: Path) -> None:
    r = Recorder(tmp_path / "r", {}, fps=10.0, frame_size=(12, 16), scale=1)
    r.add({"event": "step", "buttons": []}, 1, np.zeros((12, 16, 3), np.uint8))
    assert r.close()["frames"] == 1 and r.close()["frames"] == 1
    with pytest.raises(RuntimeError):
        r.add({"event": "step", "buttons": []}, 2, np.zeros((12, 16, 3), np.uint8))


def test_fuzz_a_thousand_messages(make_client: MakeClient) -> None:
    """1,000 hostile messages (app/attacks.py's corpus, the one `worldstream soak` sends), with
    valid inputs and stats requests mixed in: every hostile one is answered with an error."""
    client = make_client(fps=2.0, rate_limit=1e6)
    hostile = hostile_messages(1000, seed=0)
    valid = ['{"type": "input", "seq": 1, "ts": 1.0, "keys": ["KeyW"]}', '{"type": "stats"}']
    with client.websocket_connect("/ws") as ws:
        next_frame(ws)
        for i, m in enumerate(hostile):
            (ws.send_bytes if isinstance(m, bytes) else ws.send_text)(m)
            if i % 4 == 3:
                ws.send_text(valid[i % 8 // 4])
        sent_invalid = len(hostile)
        errors = 0
        ws.send_text('{"type": "stats"}')
        while True:
            t = ws.receive()
            if not t.get("text"):
                continue
            kind = json.loads(t["text"])["type"]
            errors += kind == "error"
            if kind == "stats" and errors >= sent_invalid:
                break
        assert errors == sent_invalid > 500
        next_frame(ws)  # still playing
    assert client.get("/healthz").json()["ok"]


def test_headless_record_and_replay_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "roll.mp4"
    assert main(["record", "--preset", "tiny", "--dtype", "fp32", "--seconds", "2", "--seed", "4",
                 "--out", str(out)]) == 0
    assert "36 frames" in capsys.readouterr().out  # x_0 + 35 steps at 17.5 FPS
    assert _decoded_frames(out) == 36
    actions = tmp_path / "roll.actions.jsonl"
    assert main(["record", "--replay", str(actions), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["identical"] == 36
    # follow the same actions to a new file; then tamper with one action: the replay must notice
    assert main(["record", "--preset", "tiny", "--dtype", "fp32", "--actions", str(actions),
                 "--out", str(tmp_path / "follow.mp4")]) == 0
    assert _decoded_frames(tmp_path / "follow.mp4") == 36
    lines = actions.read_text().splitlines()
    ev = json.loads(lines[10])
    ev["buttons"] = ["backward"] if ev["buttons"] != ["backward"] else ["forward"]
    lines[10] = json.dumps(ev)
    actions.write_text("\n".join(lines) + "\n")
    capsys.readouterr()
    assert main(["record", "--replay", str(actions)]) == 1
    assert "DIFFERENT from frame 10" in capsys.readouterr().out


def test_worldstream_play_serves_page_and_health() -> None:
    """The real command: uvicorn on a free port, the Gradio page at /, /healthz, /ws routes."""
    import socket
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "app.cli", "play", "--preset", "tiny", "--port", str(port)],
                            cwd=Path(__file__).parents[1], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline, health = time.monotonic() + 120, None
        while time.monotonic() < deadline and health is None:
            try:
                health = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2).read())
            except OSError:
                assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
                time.sleep(0.2)
        assert health is not None and health["ok"] and health["max_sessions"] == 2
        page = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10).read().decode()
        assert "worldstream — play" in page and "ws-root" in page  # title + our component
    finally:
        proc.terminate()
        proc.wait(timeout=30)
