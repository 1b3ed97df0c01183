"""Issue #38: what one hostile client could do below and beside the message layer. Each test failed
before its fix: raw websocket frames against a real uvicorn server where a client library will not
send them (app/wire.py), the Starlette test client for the rest."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect
from websockets.asyncio.client import connect

from app import wire
from app.attacks import command_burst
from app.play.gate import Origins
from app.play.guard import Limits
from app.play.listen import serve_in_thread
from app.play.server import CLOSE_POLICY, ServeArgs, create_app
from app.play.session import MAX_COMMANDS
from tests.conftest import TINY, MakeClient
from tests.test_play import next_frame, wait_for

KEEPALIVE = 2.0  # seconds: the real server below closes a silent client after about this long


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Any]]:
    """A real uvicorn server (tiny preset, 2 slots, 10 FPS) with a short keepalive; (port, app)."""
    rec = tmp_path_factory.mktemp("rec")
    app = create_app(ServeArgs(recordings=str(rec), fps=10.0, keepalive=KEEPALIVE), TINY, page=False)
    with serve_in_thread(app, timeout=30) as port:
        yield port, app


def _write_buffers(app: Any) -> int:
    """The largest outgoing buffer among the server's connections now (bytes)."""
    sizes = [c.transport.get_write_buffer_size() for c in list(app.state.server.server_state.connections)
             if getattr(c, "transport", None) is not None and not c.transport.is_closing()]
    return max(sizes, default=0)


def test_an_endless_fragmented_message_is_closed_at_once(server: tuple[int, Any]) -> None:
    port, _ = server
    r = wire.fragments(port, seconds=5.0)
    assert r["closed_after_s"] is not None and r["closed_after_s"] <= Limits().close_grace + 0.5, r
    assert r["close_code"] == CLOSE_POLICY
    assert wire.health(port)["sessions"] == 0 or _sessions_drop(port, 0)


def test_a_wrong_token_connection_is_dropped_within_seconds_whatever_it_sends(tmp_path: Path) -> None:
    app = create_app(ServeArgs(recordings=str(tmp_path), token="right-token"), TINY, page=False)
    with serve_in_thread(app, timeout=30) as port:
        r = wire.fragments_unauthorised(port, seconds=1.0)
        assert r["connections"] >= 1 and r["longest_connection_s"] <= Limits().close_grace + 0.5, r
        # and one that sends nothing after the refusal is gone after the grace period too
        quiet = wire.RawClient(port, "/ws?token=wrong-token")
        t0 = time.monotonic()
        frames = quiet.read_frames(Limits().close_grace + 3.0)
        quiet.close()
        assert wire.close_code(frames) == CLOSE_POLICY and frames[-1][0] == -1
        assert time.monotonic() - t0 <= Limits().close_grace + 1.0


def test_a_ping_flood_that_never_reads_costs_a_bounded_buffer(server: tuple[int, Any]) -> None:
    port, app = server
    peak, done = [0], threading.Event()

    def watch() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _write_buffers(app))
            time.sleep(0.01)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        r = wire.pings(port, seconds=2.0)
    finally:
        done.set()
        watcher.join()
    assert r["messages"] > 0 and peak[0] < 512 * 1024, (r, peak[0])
    assert _sessions_drop(port, 0)


def test_clients_that_stop_reading_are_closed_and_free_their_slots(tmp_path: Path) -> None:
    """Two clients that never read fill their socket buffers (4 KiB send buffers here, as a minute
    of the bundled model's frames would fill 64 KiB ones): the keepalive closes them on time and
    the slots are free again (before: asyncio's close waited for a drain that never came)."""
    keepalive = 4.0  # long enough for the replies to fill the buffers past asyncio's high-water mark
    app = create_app(ServeArgs(recordings=str(tmp_path), fps=10.0, keepalive=keepalive), TINY, page=False)
    with serve_in_thread(app, timeout=30, send_buffer=4096) as port:
        r = wire.silent(port, n=2, limit=keepalive + Limits().close_grace + 6.0)
        assert r["freed_after_s"] is not None and r["freed_after_s"] <= keepalive + Limits().close_grace + 1.5, r
        time.sleep(Limits().close_grace + 0.5)
        # the TCP connections are gone too, not only the sessions (a close that waits for a drain leaks them)
        left = [c for c in list(app.state.server.server_state.connections) if not c.transport.is_closing()
                or c.transport.get_write_buffer_size()]
        assert not left, [(type(c).__name__, c.transport.get_write_buffer_size()) for c in left]
        hello = wire.RawClient(port)  # the server is not full any more
        frames = hello.read_frames(2.0)
        hello.close()
        assert any(op == wire.OP_TEXT and b'"hello"' in data for op, data in frames)


def test_key_changes_do_not_speed_up_anyones_world(server: tuple[int, Any]) -> None:
    """One client toggles a key ~90 times a second (under the rate limit); another session's world
    still makes at most one frame more than seconds x FPS (before: one frame per key change)."""
    port, app = server
    fps, seconds = app.state.hub.args.fps, 3.0

    async def scenario() -> int:
        url = f"ws://127.0.0.1:{port}/ws"
        async with connect(url, proxy=None) as toggler, connect(url, proxy=None) as watcher:
            for ws in (toggler, watcher):
                assert json.loads(await ws.recv())["type"] == "hello"
            counted, stop = [0], asyncio.Event()

            async def count() -> None:
                async for msg in watcher:
                    if isinstance(msg, str) and msg.startswith('{"type": "frame"') and not stop.is_set():
                        counted[0] += 1

            async def drain() -> None:
                async for _ in toggler:
                    pass

            tasks = [asyncio.create_task(count()), asyncio.create_task(drain())]
            await asyncio.sleep(0.5)  # both sessions playing
            counted[0] = 0
            t_end = time.monotonic() + seconds
            seq = 0
            while time.monotonic() < t_end:
                seq += 1
                await toggler.send(json.dumps({"type": "input", "seq": seq, "ts": 0.0,
                                               "keys": ["KeyW"] if seq % 2 else []}))
                await asyncio.sleep(0.011)
            stop.set()
            for t in tasks:
                t.cancel()
            return counted[0]

    frames = asyncio.run(scenario())
    assert 0.5 * fps * seconds <= frames <= fps * seconds + 2, frames


def test_every_command_is_carried_out_or_refused(server: tuple[int, Any]) -> None:
    """150 record on/off at once while paused (within the burst limit) get 150 replies, the ones
    over the queue a ``busy`` refusal each; a record sent before 64 resets is carried out (before:
    the queue kept the newest 64 and dropped the rest without a word)."""
    port, _ = server
    r = asyncio.run(command_burst(f"ws://127.0.0.1:{port}/ws", limit=10.0))
    assert r["unanswered"] == 0 and r["refused_busy"] > 0 and r["record_after_resets"], r
    assert 150 - r["refused_busy"] >= MAX_COMMANDS
    assert _sessions_drop(port, 0)


def test_foreign_origins_are_refused_unless_allowed(make_client: MakeClient, server: tuple[int, Any]) -> None:
    port, _ = server
    r = wire.foreign(port)
    assert r["foreign_origin"] == 403 and r["rebound_name"] == 403, r
    own = wire.RawClient(port, headers={"Origin": f"http://127.0.0.1:{port}"})  # the page itself
    assert own.status == 101
    own.close()
    for origin in ("http://evil.example", "null", "http://127.0.0.1.evil.example"):
        with pytest.raises(WebSocketDisconnect) as e, make_client().websocket_connect(
                "/ws", headers={"origin": origin}) as ws:
            ws.receive()
        assert e.value.code == CLOSE_POLICY
    allowed = make_client(allow_origins=("https://friend.example",))
    with allowed.websocket_connect("/ws", headers={"origin": "https://friend.example"}) as ws:
        next_frame(ws)
    assert Origins("0.0.0.0").accepts("http://myhost:7860", "myhost:7860")  # same origin on a LAN bind
    assert not Origins("127.0.0.1").accepts("http://myhost:7860", "myhost:7860")  # a rebound name
    with pytest.raises(ValueError, match="--allow-origin"):
        ServeArgs(allow_origins=("friend.example",))


def test_no_route_accepts_an_upload_or_reveals_a_server_path(tmp_path: Path) -> None:
    """Every route Gradio mounts, asked with its own method: only the page's GETs answer, and no
    answer names a server path. An upload (no token, with --token set) writes nothing."""
    app = create_app(ServeArgs(recordings=str(tmp_path / "rec"), token="secret-token"), TINY)
    client = TestClient(app)
    served = 0
    for method, path in _routes(app):
        url = path.replace("{path:path}", "index.html").replace("{path_or_url:path}", "/etc/passwd")
        url = url.replace("{url_path:path}", "http://example.com/").split("{")[0] + ("x" if "{" in path else "")
        r = client.request(method, url)
        allowed = method in ("GET", "HEAD") and (url in ("/", "/config", "/theme.css", "/healthz", "/favicon.ico",
                                                         "/manifest.json", "/robots.txt")
                                                 or url.startswith(("/assets/", "/static/", "/recordings/")))
        if not allowed:
            assert r.status_code == 404, (method, url, r.status_code, r.text[:200])
        else:
            served += r.status_code == 200
            for secret in (str(tmp_path), os.getcwd(), tempfile.gettempdir() + "/", "site-packages"):
                assert secret not in r.text, (url, secret)
    assert served >= 4
    gradio_tmp = Path(os.environ.get("GRADIO_TEMP_DIR", Path(tempfile.gettempdir()) / "gradio"))
    before = set(gradio_tmp.rglob("*")) if gradio_tmp.exists() else set()
    r = client.post("/gradio_api/upload", files={"files": ("x.txt", b"hello")})
    assert r.status_code == 404 and "/" not in r.text.strip("\n")
    assert (set(gradio_tmp.rglob("*")) if gradio_tmp.exists() else set()) == before


def _routes(app: Any) -> list[tuple[str, str]]:
    """(method, path) of every HTTP route, those of mounted apps and included routers too."""
    out: list[tuple[str, str]] = []

    def walk(routes: list[Any], prefix: str) -> None:
        for r in routes:
            if hasattr(r, "original_router"):  # FastAPI's lazily included router
                walk(r.original_router.routes, prefix)
            elif getattr(r, "endpoint", None) is None and hasattr(r, "routes"):  # a mount
                walk(r.routes, prefix + r.path)
            else:
                out.extend((m, prefix + r.path) for m in sorted(getattr(r, "methods", None) or []))

    walk(app.routes, "")
    return out


def test_invalid_utf8_is_one_line_not_a_traceback(server: tuple[int, Any], caplog: pytest.LogCaptureFixture) -> None:
    port, _ = server
    with caplog.at_level(logging.INFO):
        r = wire.invalid_utf8(port)
        time.sleep(0.2)
    assert r["close_code"] == 1007
    assert not [rec for rec in caplog.records if rec.exc_info], [rec.getMessage() for rec in caplog.records]
    assert any("not UTF-8" in rec.getMessage() for rec in caplog.records)
    assert _sessions_drop(port, 0)


def test_head_on_a_recording_answers_as_get(make_client: MakeClient) -> None:
    client = make_client()
    with client.websocket_connect("/ws") as ws:
        next_frame(ws)
        ws.send_text('{"type": "record", "on": true}')
        rid = wait_for(ws, "recording")["id"]
        for _ in range(3):
            next_frame(ws)
        ws.send_text('{"type": "record", "on": false}')
        wait_for(ws, "recording")
    for ext in ("mp4", "actions.jsonl", "meta.json"):
        get, head = client.get(f"/recordings/{rid}.{ext}"), client.head(f"/recordings/{rid}.{ext}")
        assert get.status_code == head.status_code == 200 and head.content == b""
        assert head.headers["content-length"] == str(len(get.content))
    assert client.head("/recordings/" + "0" * 32 + ".mp4").status_code == 404


def _sessions_drop(port: int, n: int, limit: float = 10.0) -> bool:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if wire.health(port)["sessions"] <= n:
            return True
        time.sleep(0.1)
    return False
