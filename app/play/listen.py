"""Listening and running the play server: the socket bound before the model loads, uvicorn
configured as play needs it, and the same server in a thread for tests and probes.
(Routes and connections: app/play/server.py.)"""

from __future__ import annotations

import contextlib
import errno
import socket
import time
from collections.abc import Iterator
from typing import Any

from fastapi import FastAPI

from app.engine_spec import EngineSpec
from app.play.guard import Limits, guarded
from app.play.server import SEND_BUFFER, ServeArgs, create_app


def bind(host: str, port: int, send_buffer: int = SEND_BUFFER) -> socket.socket:
    """The listening socket, bound before the model loads: a port in use fails in one line, at once."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise ValueError(f"--host {host}: cannot resolve ({e.strerror})") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Accepted sockets inherit this: a client that stops reading backs up into at most ~SEND_BUFFER
    # of kernel buffer (not the several MB TCP autotuning allows), then the newest-frame mailbox drops.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer)
    try:
        sock.bind(address)
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise ValueError(f"port {port} on {host} is in use (another worldstream play?); "
                             f"choose another with --port") from None
        raise ValueError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    sock.listen(128)
    return sock


def serve(args: ServeArgs, spec: EngineSpec) -> None:
    import uvicorn

    sock = bind(args.host, args.port)
    host, port = sock.getsockname()[:2]
    print(f"worldstream: loading {spec.name} ...", flush=True)
    app = create_app(args, spec)
    print(f"worldstream: serving {spec.name} at http://{host}:{port}/ "
          f"(up to {args.max_sessions} sessions, {args.fps:g} FPS"
          + ("; compiling the step in the background, ~2 min the first time, then swapped in" if spec.compile else "")
          + ")", flush=True)
    uvicorn.Server(uvicorn_config(app)).run(sockets=[sock])


def uvicorn_config(app: FastAPI) -> Any:
    """How play runs uvicorn: the sans-I/O websocket protocol (its send waits on a full buffer, which
    the newest-frame mailbox relies on) with play's guard below the message layer (app/play/guard.py);
    messages of 64 KiB at most; no per-message deflate (frames are JPEGs, which do not compress, and
    inflating is work a peer could ask for); a keepalive ping every ``keepalive / 2`` seconds, answered
    within ``keepalive / 2`` or the connection is dropped (docs/reliability.md)."""
    import uvicorn

    args: ServeArgs = app.state.hub.args
    return uvicorn.Config(app, ws=guarded(Limits()), ws_max_size=64 * 1024, ws_per_message_deflate=False,
                          ws_ping_interval=args.keepalive / 2, ws_ping_timeout=args.keepalive / 2,
                          log_level="warning")


@contextlib.contextmanager
def serve_in_thread(app: FastAPI, timeout: float = 60.0, send_buffer: int = SEND_BUFFER) -> Iterator[int]:
    """Serve ``app`` as ``serve`` does, on a free loopback port, in a daemon thread (tests, probes);
    yields the port once uvicorn is up, stops it on exit. ``send_buffer``: each connection's kernel
    send buffer (a test can make a silent client's buffers fill at once)."""
    import threading

    import uvicorn

    sock = bind("127.0.0.1", 0, send_buffer)
    server = uvicorn.Server(uvicorn_config(app))
    app.state.server = server  # its connections, for tests and probes
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + timeout
        while not server.started and thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        if not server.started:
            raise RuntimeError("uvicorn did not start")
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
