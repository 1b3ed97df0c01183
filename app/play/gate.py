"""What reaches the play server's routes: an ASGI middleware in front of everything, Gradio included.

- **Routes: an allowlist.** Gradio mounts ~70 routes (uploads, a URL proxy, file serving, a code
  editor, its queue); the page uses a handful of them, all ``GET``. Only the routes listed here are
  served (``GET``/``HEAD``), whatever a Gradio version adds: everything else is 404, so no route
  accepts an upload or answers with a server path.
- **Browsers from elsewhere.** A browser sends ``Origin`` with every websocket handshake; any page a
  user visits could otherwise open ``ws://127.0.0.1:7860/ws``, take the slots and record to disk. A
  handshake is accepted when it has no ``Origin`` (not a browser), when its ``Origin`` is the page's
  own (same scheme-less host and port as ``Host``, on a host name this server answers to: a loopback
  name when bound to loopback, so a DNS-rebound name is refused too), or when ``--allow-origin`` names it.
  Refused handshakes get HTTP 403 before any websocket exists.

Each refusal is one log line (no traceback).
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from app.play.refusals import Refusals

log = Refusals(logging.getLogger("worldstream.gate"))
Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
WILDCARD = {"0.0.0.0", "::", ""}


@dataclass(frozen=True)
class Routes:
    """The paths served (``GET``/``HEAD``): exact ones and prefixes; and the websocket paths."""

    exact: frozenset[str]
    prefixes: tuple[str, ...] = ()
    websockets: frozenset[str] = frozenset({"/ws"})

    def serves(self, path: str) -> bool:
        return path in self.exact or (path.startswith(self.prefixes) and ".." not in path.split("/"))

    def __or__(self, other: Routes) -> Routes:
        return Routes(self.exact | other.exact, self.prefixes + other.prefixes, self.websockets | other.websockets)


def is_loopback(host: str) -> bool:
    name = host.strip("[]").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Origins:
    """Which browser origins may open the websocket."""

    bind: str = "127.0.0.1"  # the address the server listens on
    allowed: tuple[str, ...] = ()  # --allow-origin: exact origins ("https://host:port") or "*"

    def __post_init__(self) -> None:
        for origin in self.allowed:
            if origin != "*" and _origin(origin) is None:
                raise ValueError(f"--allow-origin {origin!r}: give an origin such as http://host:8000 (or '*')")

    def accepts(self, origin: str | None, host: str | None) -> bool:
        if origin is None:  # not a browser: the token (if any) is its check
            return True
        if "*" in self.allowed or origin in self.allowed:
            return True
        parts = _origin(origin)
        if parts is None or host is None or parts[1] != host.lower():
            return False
        try:
            hostname = urlsplit("//" + host).hostname or ""
        except ValueError:
            return False
        # Same origin, on a name this server answers to (a DNS-rebound name has the page's origin too)
        return self.bind in WILDCARD or is_loopback(hostname) or hostname == self.bind.strip("[]").lower()


def _origin(text: str) -> tuple[str, str] | None:
    """(scheme, host[:port]) of an origin such as ``http://127.0.0.1:7860``; None if it is not one."""
    try:
        u = urlsplit(text)
    except ValueError:
        return None
    if u.scheme not in ("http", "https") or not u.netloc or u.path not in ("", "/") or u.query or u.fragment:
        return None
    return u.scheme, u.netloc.lower()


class Gate:
    """ASGI middleware: ``Routes`` for HTTP, ``Origins`` for websocket handshakes."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]], routes: Routes,
                 origins: Origins) -> None:
        self.app, self.routes, self.origins = app, routes, origins

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http" and not (scope["method"] in ("GET", "HEAD") and self.routes.serves(scope["path"])):
            log.log("route", "refused %s %s: not a route of this server", scope["method"], _short(scope["path"]),
                    level=logging.INFO)
            await _plain(send, 404, b"not found\n")
            return
        if kind == "websocket":
            headers = {k.lower(): v for k, v in scope.get("headers", [])}
            origin, host = _header(headers, b"origin"), _header(headers, b"host")
            if scope["path"] not in self.routes.websockets:
                log.log("route", "refused websocket %s: not a route of this server", _short(scope["path"]),
                        level=logging.INFO)
                await send({"type": "websocket.close", "code": 1008})
                return
            if not self.origins.accepts(origin, host):
                log.log("origin", "refused a websocket handshake from origin %s (host %s): not this page's; "
                        "allow it with --allow-origin", _short(origin or ""), _short(host or ""))
                await send({"type": "websocket.close", "code": 1008})
                return
        await self.app(scope, receive, send)


def _header(headers: dict[bytes, bytes], name: bytes) -> str | None:
    value = headers.get(name)
    return value.decode("latin-1") if value is not None else None


def _short(text: str) -> str:
    text = text.encode("unicode_escape").decode("ascii")
    return text if len(text) <= 80 else text[:77] + "..."


async def _plain(send: Send, status: int, body: bytes) -> None:
    headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
