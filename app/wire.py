"""Hostile peers below the message layer, for ``worldstream soak`` (app/soak.py) and the tests: a raw
websocket client that sends the frames a library will not (endless fragments, ping floods, invalid
UTF-8), never reads, or shakes hands from a foreign origin; and the attacks built on it. Blocking
sockets on loopback (the soak runs each in a thread).

    fragments       a text frame without FIN, then empty continuation frames until the server closes
    fragments_unauthorised   the same on connections with a wrong token, reconnecting for ``seconds``
    pings           125-byte pings, as fast as the socket takes them, never reading a pong
    silent          clients that shake hands and never read: when does the server free their slots?
    foreign         handshakes from a foreign Origin, and from a DNS-rebound name: must be refused
    invalid_utf8    one text frame that is not UTF-8: must be closed with 1007
    routes          an upload and Gradio's file, proxy and queue routes: must all be 404
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import socket
import struct
import time
from typing import Any

OP_CONT, OP_TEXT, OP_CLOSE, OP_PING = 0x0, 0x1, 0x8, 0x9


def frame(opcode: int, payload: bytes = b"", fin: bool = True) -> bytes:
    """One masked client frame (payloads under 64 KiB)."""
    head = bytes([(0x80 if fin else 0) | opcode])
    n = len(payload)
    head += bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + struct.pack("!H", n)
    mask = os.urandom(4)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


class RawClient:
    """A websocket client made of a plain socket: it shakes hands, then sends whatever it is told."""

    def __init__(self, port: int, path: str = "/ws", headers: dict[str, str] | None = None,
                 rcvbuf: int | None = None, timeout: float = 10.0, host: str | None = None) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:  # before connecting: the window the server sees
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        self.sock.connect(("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [f"GET {path} HTTP/1.1", f"Host: {host or f'127.0.0.1:{port}'}", "Upgrade: websocket",
                 "Connection: Upgrade",
                 f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(1)
            if not chunk:
                break
            head += chunk
        self.status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/1.1 ") else 0
        self.buffer = b""

    def send(self, data: bytes, deadline: float | None = None) -> bool:
        """Send it all, waiting while the server does not read (until ``deadline``, a monotonic time);
        False once the server has dropped the connection (or the deadline passed)."""
        view = memoryview(data)
        while view:
            if deadline is not None and time.monotonic() > deadline:
                return False
            self.sock.settimeout(0.2 if deadline is not None else None)
            try:
                view = view[self.sock.send(view):]
            except TimeoutError:
                continue
            except OSError:
                return False
        return True

    def read_frames(self, seconds: float) -> list[tuple[int, bytes]]:
        """Frames the server sends within ``seconds`` (or until it closes the TCP connection)."""
        out: list[tuple[int, bytes]] = []
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                break
            except OSError:
                chunk = b""
            if not chunk:
                self._parse(out)
                out.append((-1, b""))  # the TCP connection ended
                return out
            self.buffer += chunk
            self._parse(out)
        return out

    def _parse(self, out: list[tuple[int, bytes]]) -> None:
        while len(self.buffer) >= 2:
            n, at = self.buffer[1] & 0x7F, 2
            if n == 126:
                if len(self.buffer) < 4:
                    return
                n, at = struct.unpack("!H", self.buffer[2:4])[0], 4
            elif n == 127:
                if len(self.buffer) < 10:
                    return
                n, at = struct.unpack("!Q", self.buffer[2:10])[0], 10
            if len(self.buffer) < at + n:
                return
            out.append((self.buffer[0] & 0x0F, self.buffer[at:at + n]))
            self.buffer = self.buffer[at + n:]

    def close(self) -> None:
        self.sock.close()


def close_code(frames: list[tuple[int, bytes]]) -> int | None:
    """The code of the server's close frame among ``frames``; None if there is none."""
    for op, payload in frames:
        if op == OP_CLOSE:
            return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
    return None


def _flood(client: RawClient, seconds: float) -> tuple[int, float | None]:
    """Continuation frames after an unfinished text frame until the server drops the connection or
    ``seconds`` pass: (frames sent, seconds until dropped or None)."""
    t0 = time.monotonic()
    batch = frame(OP_CONT, fin=False) * 500
    sent = 0
    if not client.send(frame(OP_TEXT, b'{"type": "st', fin=False)):
        return 0, 0.0
    while time.monotonic() < t0 + seconds:
        if not client.send(batch, deadline=t0 + seconds):
            if time.monotonic() > t0 + seconds:
                break  # still connected: the server only stopped reading
            return sent, time.monotonic() - t0
        sent += 500
    return sent, None


def fragments(port: int, seconds: float, path: str = "/ws") -> dict[str, Any]:
    client = RawClient(port, path)
    sent, closed = _flood(client, seconds)
    code = close_code(client.read_frames(1.0))
    client.close()
    return {"messages": sent, "closed_after_s": None if closed is None else round(closed, 2), "close_code": code}


def fragments_unauthorised(port: int, seconds: float, path: str = "/ws?token=wrong-token") -> dict[str, Any]:
    """Reconnect with a wrong token for ``seconds``, each connection flooding fragments until dropped."""
    t_end = time.monotonic() + seconds
    connections, sent, longest = 0, 0, 0.0
    while time.monotonic() < t_end:
        client = RawClient(port, path)
        n, closed = _flood(client, min(10.0, t_end - time.monotonic() + 5.0))
        client.close()
        connections, sent = connections + 1, sent + n
        longest = max(longest, closed if closed is not None else float("inf"))
    return {"messages": sent, "connections": connections, "longest_connection_s": round(longest, 2)}


def pings(port: int, seconds: float, path: str = "/ws") -> dict[str, Any]:
    """Pings for ``seconds`` from a client that never reads (its receive window: 4 KiB)."""
    client = RawClient(port, path, rcvbuf=4096)
    ping = frame(OP_PING, b"p" * 125) * 64
    sent, t0 = 0, time.monotonic()
    client.sock.settimeout(0.2)
    while time.monotonic() < t0 + seconds:
        try:
            client.sock.send(ping)  # a full socket blocks (the server stopped reading): keep trying
            sent += 64
        except TimeoutError:
            continue
        except OSError:
            break
    client.close()
    return {"messages": sent}


def silent(port: int, n: int, limit: float, path: str = "/ws", chatter: float = 50.0) -> dict[str, Any]:
    """``n`` clients that shake hands and never read; each asks for stats ``chatter`` times a second
    (under the message limit) so that the replies fill the socket buffers even when frames are small.
    The seconds until the server has freed their slots (None if it has not within ``limit``)."""
    before = health(port)["sessions"]
    clients = [RawClient(port, path, rcvbuf=4096) for _ in range(n)]
    stats = frame(OP_TEXT, b'{"type": "stats"}')
    t0, freed, last = time.monotonic(), None, 0.0
    while time.monotonic() < t0 + limit:
        time.sleep(1.0 / chatter)
        for c in clients:
            c.send(stats, deadline=time.monotonic() + 0.01)
        if time.monotonic() - last >= 0.25:
            last = time.monotonic()
            if health(port)["sessions"] <= before:
                freed = last - t0
                break
    for c in clients:
        c.close()
    return {"messages": n, "freed_after_s": None if freed is None else round(freed, 1)}


def foreign(port: int, path: str = "/ws") -> dict[str, Any]:
    """HTTP statuses of handshakes from a foreign page and from a DNS-rebound name (both must be 403)."""
    evil = RawClient(port, path, headers={"Origin": "http://evil.example"})
    evil.close()
    # DNS rebinding: evil.example resolves to 127.0.0.1, so the page's origin and Host agree
    rebound = RawClient(port, path, host=f"evil.example:{port}", headers={"Origin": f"http://evil.example:{port}"})
    rebound.close()
    return {"messages": 2, "foreign_origin": evil.status, "rebound_name": rebound.status}


def invalid_utf8(port: int, path: str = "/ws") -> dict[str, Any]:
    client = RawClient(port, path)
    client.send(frame(OP_TEXT, b'{"type": "stats", "x": "\xff\xfe"}'))
    code = None
    deadline = time.monotonic() + 10
    while code is None and time.monotonic() < deadline:
        frames = client.read_frames(1.0)
        code = close_code(frames) or (-1 if frames and frames[-1][0] == -1 else None)
    client.close()
    return {"messages": 1, "close_code": code}


def routes(port: int, token: str | None = None) -> dict[str, Any]:
    """Statuses of requests no route of the play server may answer (all must be 404)."""
    q = f"?token={token}" if token else ""
    probes = [("POST", "/gradio_api/upload" + q, b"--b\r\nContent-Disposition: form-data; name=\"files\"; "
               b"filename=\"x.txt\"\r\n\r\nhello\r\n--b--\r\n", {"Content-Type": "multipart/form-data; boundary=b"}),
              ("GET", "/gradio_api/file=/etc/passwd", b"", {}), ("GET", "/gradio_api/proxy=http://x/", b"", {}),
              ("POST", "/gradio_api/queue/join", b"{}", {"Content-Type": "application/json"}),
              ("GET", "/gradio_api/vibe-code", b"", {}), ("GET", "/openapi.json", b"", {}),
              ("POST", "/healthz", b"", {})]
    statuses = {}
    for method, path, body, headers in probes:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request(method, path, body=body, headers=headers)
        r = conn.getresponse()
        statuses[f"{method} {path.split('?')[0]}"] = (r.status, r.read().decode(errors="replace")[:80])
        conn.close()
    return {"messages": len(probes), "not_404": {k: v for k, v in statuses.items() if v[0] != 404}}


def health(port: int) -> dict[str, Any]:
    """The server's /healthz (plain HTTP on loopback: no proxy settings apply)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/healthz")
        return json.loads(conn.getresponse().read())
    finally:
        conn.close()
