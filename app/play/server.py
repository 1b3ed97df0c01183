"""``worldstream play``: one uvicorn process serving the world to browsers.

Routes (FastAPI, defined before Gradio is mounted at "/", which would shadow them)::

    /ws                         the play socket (protocol: app/play/protocol.py)
    /healthz                    JSON: model, sessions, server CPU
    /recordings/{id}.mp4        a recording (also {id}.actions.jsonl, {id}.meta.json); ids, never paths
    /                           the Gradio page (app/play/page.py)

Per connection: a receive loop that only updates the session's input and queues commands, and
one sender task. One tick loop (``Hub._ticks``) makes every session's frame at the server's FPS:
a single engine call per tick steps all playing sessions in one batched forward through the
scheduler (engine/scheduler.py), and between ticks, when time is left, drafts the actions players
hold (``--speculate``). Every engine call runs in one worker thread (one set of weights; sessions
own cache slots): the event loop never computes, and a slow client only loses its own frames.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import re
import resource
import secrets
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi import FastAPI, HTTPException, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import FileResponse, JSONResponse

from app.engine_spec import EngineSpec
from app.play.connection import CLOSE_POLICY, Connection
from app.play.gate import Gate, Origins, Routes
from app.play.protocol import Input
from app.play.recorder import check_writable_dir
from app.play.refusals import Refusals
from app.play.session import Plan, PlaySession, SessionInfo, Tick
from app.scenes import SceneStarter, available_starts, resolve_start
from engine.action import NOOP, Action
from engine.decoder import StandInDecoder
from engine.engine import Engine
from engine.precision import hardware
from engine.scheduler import Scheduler
from engine.types import Frame

log = logging.getLogger("worldstream.server")
T = TypeVar("T")
CLOSE_FULL = 1013  # "try again later": the server is full
CLOSE_ERROR = 1011  # the server failed (details in its log, never sent)
SEND_BUFFER = 64 * 1024  # kernel send buffer per connection (Linux doubles it): ~1 s of 160x120 JPEGs
RECORDING_NAME = re.compile(r"^([0-9a-f]{32})\.(mp4|actions\.jsonl|meta\.json)$")
MEDIA = {"mp4": "video/mp4", "actions.jsonl": "application/x-ndjson", "meta.json": "application/json"}
ROUTES = Routes(exact=frozenset({"/healthz"}), prefixes=("/recordings/",))  # the page's: app/play/page.py


@dataclass(frozen=True)
class ServeArgs:
    """How to serve; which engine is the EngineSpec passed beside it."""

    host: str = "127.0.0.1"
    port: int = 7860
    token: str | None = None
    max_sessions: int = 2
    fps: float = 17.5
    recordings: str = "recordings"
    seed: int | None = None  # first rollout's seed (default: random per session)
    start: str | None = None  # start scene (app/scenes.py); None: the default scene when it fits the model
    rate_limit: float = 100.0  # client messages per second (bursts of twice that)
    speculate: int = 0  # frames drafted ahead while a player holds an action (0 = off)
    hold: int = 1  # ticks an action is held before drafting
    preempt: bool = True  # a key change mid-step abandons the stale step (engine/preempt.py)
    keepalive: float = 20.0  # a connection that answers no ping for this long is closed (app/play/guard.py)
    allow_origins: tuple[str, ...] = ()  # browser origins besides the page's own that may open /ws (app/play/gate.py)

    def __post_init__(self) -> None:
        if not 1 <= self.max_sessions <= 64:
            raise ValueError("--max-sessions must be in 1..64")
        if not 1.0 <= self.fps <= 60.0:
            raise ValueError("--fps must be in 1..60")
        if self.token is not None and len(self.token) < 8:
            raise ValueError("--token must be at least 8 characters")
        if self.rate_limit <= 0:
            raise ValueError("rate_limit must be positive")
        if not 0 <= self.port <= 65535:
            raise ValueError("--port must be in 0..65535")
        if not 0 <= self.speculate <= 8 or self.hold < 1:
            raise ValueError("--speculate must be in 0..8 and --hold >= 1")
        if not 1.0 <= self.keepalive <= 3600.0:
            raise ValueError("--keepalive must be in 1..3600 seconds")
        Origins(self.host, self.allow_origins)  # a malformed --allow-origin fails here, in one line


class CpuMeter:
    """Process CPU time / wall time since the last reading (1.0 = one core busy)."""

    def __init__(self) -> None:
        self._last = (time.monotonic(), self._cpu())
        self.value = 0.0

    @staticmethod
    def _cpu() -> float:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    def read(self) -> float:
        now, cpu = time.monotonic(), self._cpu()
        if now - self._last[0] >= 0.5:
            self.value = (cpu - self._last[1]) / (now - self._last[0])
            self._last = (now, cpu)
        return self.value


class Hub:
    """The shared engine: weights + a cache with one slot per session, one scheduler that makes
    every session's frame of a tick in one batched forward, one worker thread, one tick loop."""

    def __init__(self, args: ServeArgs, spec: EngineSpec) -> None:
        self.args = args
        recordings = check_writable_dir(args.recordings, "--recordings")  # now, not at the first recording
        # --compile: serve the eager step at once and compile in the background (then swap); a
        # compile that fails (no C++ toolchain) leaves play eager (runner.compile_state says why).
        base, self.scheduler = self._warm(dataclasses.replace(spec, compile=False))
        self.runner = base.runner
        if spec.compile:
            self.runner.compile_in_background(frames=(2, 1))
        self.spec = spec  # recordings store it for replay
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="engine")
        self.queue_depth = 0  # engine calls waiting or running
        self.frames_dropped = 0  # frames not sent because their client was behind (all sessions, ever)
        self.cpu = CpuMeter()
        self.active: list[Connection] = []  # connections in the tick loop
        self._ticker: asyncio.Task[None] | None = None
        self.input_changed = asyncio.Event()  # a player's action changed (wakes an idle tick loop)
        self.late_ticks = 0  # ticks that began after their time (the engine could not keep up)
        starter = SceneStarter()
        self.decoder = base.decoder.name
        self.hardware = hardware(spec.device)  # fixed for the server's life: read once
        if spec.model is not None and isinstance(base.decoder, StandInDecoder):
            log.warning("%s has no tokenizer: frames are decoded by the untrained stand-in", spec.model)
        self.info = SessionInfo(model=spec.name, fps=args.fps, engine=spec.describe(),
                                recordings=recordings, starter=starter,
                                start=resolve_start(args.start, base, starter),
                                starts=available_starts(base, starter))
        frame = base.config.frame
        self.frame_size = (frame.width, frame.height)

    def _warm(self, spec: EngineSpec) -> tuple[Engine, Scheduler]:
        """The engine (its config and decoder describe every session's) and the scheduler, its
        batched step run a few times at one and at every session before players come; then
        every slot is free."""
        n = self.args.max_sessions
        base = spec.build(slots=n, speculate=self.args.speculate)
        sched = Scheduler.of(base, speculate=self.args.speculate, hold=self.args.hold)
        rollouts = [base] + [sched.join() for _ in range(1, n)]
        for r in rollouts:
            r.reset(0)
        for size in sorted({1, n}):
            for _ in range(3):
                sched.step([(r, NOOP) for r in rollouts[:size]])
        for r in rollouts:
            sched.leave(r)
        return base, sched

    @property
    def sessions(self) -> int:
        return self.scheduler.size  # read by /healthz on the event loop while the engine thread joins

    def open(self) -> PlaySession | None:
        """A session on a free slot (engine thread: the scheduler is the engine thread's), or None."""
        if self.sessions >= self.args.max_sessions:
            return None
        return PlaySession(self.scheduler.join(), self.info)

    def release(self, session: PlaySession) -> None:
        """Close its recording and free its slot (engine thread)."""
        try:
            session.close()
        finally:
            self.scheduler.leave(session.engine)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        self.queue_depth += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)
        finally:
            self.queue_depth -= 1

    # ------------------------------------------------------------------ the tick loop
    def attach(self, conn: Connection) -> None:
        """``conn`` gets a frame every tick from now on (the loop starts with the first one)."""
        self.active.append(conn)
        if self._ticker is None or self._ticker.done():
            self._ticker = asyncio.create_task(self._ticks())

    def detach(self, conn: Connection) -> None:
        if conn in self.active:
            self.active.remove(conn)

    async def _ticks(self) -> None:
        """Every 1/fps: one engine call steps every playing session (paused ones only apply
        their commands); then, if the next tick is not due yet, draft held actions.

        The world clock is this clock: tick k is due at slot s_k = s_0 + k/fps (later if the engine
        is behind; it never catches up in a burst). A key change may bring the next tick forward,
        but never before the previous tick's slot, so whatever clients send, a session makes at most
        one frame more than ``seconds x fps`` (a recording's frames / fps is its wall time)::

            slots     s_k          s_k+1          s_k+2
            ticks      |  key ->|    .       key ->|   (second change waits for s_k+1)
        """
        period = 1.0 / self.args.fps
        next_t = time.monotonic()  # the next tick's slot
        while self.active:
            conns = list(self.active)
            for c in conns:
                c.acknowledge_pause()
            results = await self.run(self.tick_all, [(c.session, not c.paused) for c in conns])
            for c, r in zip(conns, results, strict=True):
                c.deliver(r)
            if time.monotonic() > next_t + period:
                self.late_ticks += 1
            earliest, next_t = next_t, max(next_t + period, time.monotonic())
            playing = [c.session.engine for c in self.active if not c.paused]
            # Idle until the next tick: draft what players hold (a draft may run into that tick,
            # which then waits for it; behind schedule, nothing is drafted).
            while self.scheduler.speculate and playing and time.monotonic() < next_t:
                if not await self.run(self.scheduler.draft, playing, self._keys_changed if self.args.preempt else None):
                    break
            await asyncio.sleep(max(0.0, earliest - time.monotonic()))  # no tick before the last one's slot
            await self._idle(next_t)  # a player changed keys: the next tick now, not at its slot

    def _keys_changed(self) -> bool:
        """A playing session's action differs from its last frame's (a draft in flight is stale)."""
        return any(c.session.changed() for c in list(self.active) if not c.paused)

    async def _idle(self, until: float) -> None:
        """Sleep until ``until``; with preemption on, wake early when a playing session's action
        differs from the one its last frame used."""
        if not self.args.preempt:
            await asyncio.sleep(max(0.0, until - time.monotonic()))
            return
        self.input_changed.clear()  # before the check: a change after it sets the event again
        if self._keys_changed():
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.input_changed.wait(), max(0.0, until - time.monotonic()))

    def tick_all(self, jobs: list[tuple[PlaySession, bool]]) -> list[Tick | BaseException]:
        """Engine thread: every session's commands, one batched step for all that play, then
        each one's recording and JPEG. A failure stays with the sessions it concerns."""
        plans: list[Plan | BaseException] = []
        for session, step in jobs:
            try:
                plans.append(session.begin(step))
            except Exception as e:
                plans.append(e)
        stepping = [i for i, p in enumerate(plans) if isinstance(p, Plan) and p.action is not None]
        frames: dict[int, Frame] = {}
        failed: BaseException | None = None
        latest: dict[int, tuple[Input, Action]] = {}

        def refresh() -> list[Action]:  # the stepping sessions' actions now (read while the step runs)
            for i in stepping:
                latest[i] = jobs[i][0].latest()
            return [latest[i][1] for i in stepping]

        try:
            made = self.scheduler.step([(jobs[i][0].engine, plans[i].action) for i in stepping],  # type: ignore[union-attr,misc]
                                       refresh=refresh if self.args.preempt else None)
            frames = dict(zip(stepping, made, strict=True))
            for i, frame in frames.items():
                if "preempted" in frame.timings_ms:  # made again for the input that arrived mid-step
                    plans[i].input, plans[i].action = latest[i]  # type: ignore[union-attr]
        except Exception as e:
            failed = e
        out: list[Tick | BaseException] = []
        for i, ((session, _), plan) in enumerate(zip(jobs, plans, strict=True)):
            if isinstance(plan, BaseException):
                out.append(plan)
            elif failed is not None and i in stepping:
                out.append(failed)
            else:
                try:
                    out.append(session.end(plan, frames.get(i)))
                except Exception as e:
                    out.append(e)
        return out

    def health(self) -> dict[str, Any]:
        return {"ok": True, "model": self.spec.name, "decoder": self.decoder, "dtype": self.spec.dtype,
                "int8": self.spec.int8, "compile": self.runner.compile_state,
                **self.hardware, "sessions": self.sessions, "speculate": self.scheduler.speculate,
                "scheduler": self.scheduler.stats.as_dict(), "late_ticks": self.late_ticks,
                "max_sessions": self.args.max_sessions, "target_fps": self.args.fps,
                "server_cpu_cores": round(self.cpu.read(), 3), "queue_depth": self.queue_depth,
                "frames_dropped": self.frames_dropped}


def create_app(args: ServeArgs, spec: EngineSpec, page: bool = True) -> FastAPI:
    hub = Hub(args, spec)
    app = FastAPI(title="worldstream", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.hub = hub

    def authorised(token: str | None) -> bool:
        # Bytes, not str: compare_digest refuses non-ASCII str (a TypeError a client could trigger).
        return args.token is None or (token is not None and secrets.compare_digest(
            token.encode("utf-8", "surrogatepass"), args.token.encode("utf-8", "surrogatepass")))

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        return JSONResponse(hub.health())

    @app.api_route("/recordings/{name}", methods=["GET", "HEAD"])
    async def recording(name: str, request: Request) -> FileResponse:
        if not authorised(request.query_params.get("token")):
            raise HTTPException(403, "missing or wrong token")
        m = RECORDING_NAME.match(name)
        if m is None:
            raise HTTPException(404, "no such recording")
        path = hub.info.recordings / name  # name is [0-9a-f]{32}.ext: cannot leave the folder
        if not path.is_file():
            raise HTTPException(404, "no such recording")
        return FileResponse(path, media_type=MEDIA[m.group(2)], filename=f"worldstream-{name}")

    refusals = Refusals(log)

    async def refuse(ws: WebSocket, code: str, message: str, close: int, reason: str) -> None:
        """An error message, then the close; a client already gone is not an error."""
        with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
            await ws.send_text(json.dumps({"type": "error", "code": code, "message": message}))
            await ws.close(close, reason)

    @app.websocket("/ws")
    async def play(ws: WebSocket) -> None:
        try:
            await ws.accept()
        except (WebSocketDisconnect, RuntimeError, OSError):  # gone during the handshake
            return
        if not authorised(ws.query_params.get("token")):
            refusals.log("token", "refused a websocket from %s: missing or wrong token", _client(ws))
            await refuse(ws, "unauthorised", "missing or wrong token", CLOSE_POLICY, "missing or wrong token")
            return
        session = await hub.run(hub.open)
        if session is None:
            message = f"server full: {args.max_sessions} sessions are playing; try again later"
            refusals.log("full", "refused a websocket from %s: %s", _client(ws), message, level=logging.INFO)
            await refuse(ws, "server_full", message, CLOSE_FULL, "server full")
            return
        conn = Connection(ws, hub, session)
        w, h = hub.frame_size
        hw = hub.hardware
        conn.post(Tick([json.dumps({"type": "hello", "session": session.id, "model": spec.name, "fps": args.fps,
                                    "width": w, "height": h, "steps": hub.info.engine["steps"],
                                    "dtype": hub.spec.dtype, "int8": hub.spec.int8,
                                    "cpu_capability": hw["cpu_capability"],
                                    "threads": hw["threads"], "start": session.start_scene,
                                    "starts": list(hub.info.starts)})]))
        tasks = [asyncio.create_task(t) for t in (conn.sender(), conn.frames(), conn.receive())]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            failed = tasks[1].exception() if tasks[1].done() and not tasks[1].cancelled() else None
            if failed is not None:  # the engine failed: say so without details (they are in the log)
                log.error("session %s: frame loop failed", session.id, exc_info=failed)
                tasks[0].cancel()  # the sender first: the error must not land between a frame's meta and JPEG
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await tasks[0]
                with contextlib.suppress(Exception):
                    await ws.send_text(json.dumps({"type": "error", "code": "server_error",
                                                   "message": f"server error ({type(failed).__name__}); "
                                                              "see the server log"}))
                    await ws.close(CLOSE_ERROR, "server error")
        finally:
            for t in tasks:
                t.cancel()
            for t in tasks:  # a send to a gone client fails: that is a disconnect, not an error
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t
            hub.detach(conn)  # no tick after this one includes it
            # Finalise a recording in progress and free the slot: queued on the engine thread right
            # here, synchronously, so a handler cancelled now (or a loop about to stop) still does it.
            closing = hub.executor.submit(hub.release, session)
            closing.add_done_callback(lambda f: f.exception() is not None and log.error(
                "session %s: closing its recording failed", session.id, exc_info=f.exception()))
            with contextlib.suppress(Exception):
                await asyncio.shield(asyncio.wrap_future(closing))

    routes = ROUTES
    if page:
        import gradio as gr

        from app.play.page import PAGE_ROUTES, build_page

        demo, css, head = build_page(hub.info.model, args.fps, *hub.frame_size)
        app = gr.mount_gradio_app(app, demo, path="/", css=css, head=head, footer_links=[])
        app.state.hub = hub
        routes = ROUTES | PAGE_ROUTES
    # Outermost: only these routes (Gradio mounts ~70; the page needs a few GETs), browsers only from here.
    app.add_middleware(Gate, routes=routes,  # type: ignore[arg-type]
                       origins=Origins(args.host, args.allow_origins))
    return app


def _client(ws: WebSocket) -> str:
    return f"{ws.client.host}:{ws.client.port}" if ws.client else "a client"
