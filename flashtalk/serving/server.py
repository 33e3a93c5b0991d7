"""`flashtalk serve`: one Starlette ASGI app over the streaming runtime (sessions + batching scheduler), run
by uvicorn here (`serve`) or as the ingress of a Ray Serve deployment (flashtalk.serving.ray_app).

Routes: `GET /` (the web page, flashtalk/serving/static/), `GET /health`, `GET /metrics` (Prometheus text),
`POST /portraits` (raw image body -> {"id": ...}), `WS /ws` (the protocol of `flashtalk.serving.wire`),
`GET /assets/portrait.jpg|speech.ogg` (the bundled demo inputs). With a token, every route but `/`,
`/static/*`, `/assets/*` and `/health` needs `Authorization: Bearer T` (or `?token=T`, for browsers'
WebSockets). A bad message closes that session with a reason; the server and the other sessions carry on.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocket

from flashtalk.errors import FlashTalkError
from flashtalk.runtime.backends import Backend
from flashtalk.runtime.backends.preview import PreviewBackend
from flashtalk.serving.state import (
    ASSETS_DIR,
    DEMO_PORTRAIT_ID,
    DROP_REASONS,
    ServeConfig,
    ServerState,
    check_config,
    decode_image,
    freeze_startup,
    heap_in_use_bytes,
    is_loopback,
)
from flashtalk.serving.stream import close_with_error, websocket_session
from flashtalk.serving.wire import CLOSE_FULL

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
ASSETS = {"portrait.jpg": "image/jpeg", "speech.ogg": "audio/ogg"}
PUBLIC_PREFIXES = ("/static/", "/assets/")
PUBLIC_PATHS = ("/", "/health")
TRANSPORT_SLACK = 1 << 20  # the transport reads messages this much over the app's limit, so the app can answer 1009


def _state(request: Request | WebSocket) -> ServerState:
    return request.app.state.flashtalk


async def _health(request: Request) -> Response:
    st = _state(request)
    return JSONResponse(
        {
            "status": "draining" if st.draining else "ok",
            "backend": st.backend.name,
            "replica": st.config.replica,
            "sessions": st.scheduler.sessions,
            "max_sessions": st.config.max_sessions,
            "capacity_fps": st.scheduler.capacity_fps,
            "committed_fps": st.scheduler.committed_fps,
        }
    )


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', "'").replace("\n", " ")


async def _metrics(request: Request) -> Response:
    st = _state(request)
    sched = st.scheduler.stats
    lines = [
        "# TYPE flashtalk_replica_info gauge",
        f'flashtalk_replica_info{{replica="{_label(st.config.replica)}",backend="{st.backend.name}"}} 1',
        "# TYPE flashtalk_sessions gauge",
        f"flashtalk_sessions {st.scheduler.sessions}",
        "# TYPE flashtalk_sessions_max gauge",
        f"flashtalk_sessions_max {st.config.max_sessions}",
        "# TYPE flashtalk_sessions_total counter",
        f"flashtalk_sessions_total {st.sessions_total}",
        "# TYPE flashtalk_sessions_refused_total counter",
        f"flashtalk_sessions_refused_total {st.sessions_refused}",
        "# TYPE flashtalk_protocol_errors_total counter",
        f"flashtalk_protocol_errors_total {st.protocol_errors}",
        "# TYPE flashtalk_internal_errors_total counter",
        f"flashtalk_internal_errors_total {st.internal_errors}",
        "# TYPE flashtalk_portraits_encoded_total counter",
        f"flashtalk_portraits_encoded_total {st.portraits_encoded}",
        "# TYPE flashtalk_frames_sent_total counter",
        f"flashtalk_frames_sent_total {st.frames_sent}",
        "# TYPE flashtalk_frames_dropped_total counter",
        f"flashtalk_frames_dropped_total {st.frames_dropped}",
        "# HELP flashtalk_frames_dropped_reason_total late: behind the realtime clock after a stall; "
        "paused: skipped unrendered while the client did not read; backlog: the runtime's output backlog was full",
        "# TYPE flashtalk_frames_dropped_reason_total counter",
    ]
    lines += [f'flashtalk_frames_dropped_reason_total{{reason="{r}"}} {st.dropped[r]}' for r in DROP_REASONS]
    lines += _scheduling_lines(st)
    lines += [
        "# TYPE flashtalk_fps gauge",
        f"flashtalk_fps {st.fps():.3f}",
        "# TYPE flashtalk_render_calls_total counter",
        f"flashtalk_render_calls_total {sched.render_calls}",
        "# TYPE flashtalk_render_frames_total counter",
        f"flashtalk_render_frames_total {sched.frames}",
        "# TYPE flashtalk_motion_calls_total counter",
        f"flashtalk_motion_calls_total {sched.motion_calls}",
        "# TYPE flashtalk_scheduler_errors_total counter",
        f"flashtalk_scheduler_errors_total {sched.errors}",
        "# TYPE flashtalk_render_bucket_total counter",
    ]
    lines += [f'flashtalk_render_bucket_total{{bucket="{b}"}} {n}' for b, n in sorted(sched.bucket_counts.items())]
    lines += ["# HELP flashtalk_frame_latency_seconds audio chunk complete -> its frame ready (compute + queueing)"]
    lines += [ln.replace("{,", "{").replace("{}", "") for ln in st.latency.lines("flashtalk_frame_latency_seconds", "")]
    heap = heap_in_use_bytes()
    if heap is not None:
        lines += [
            "# HELP flashtalk_heap_in_use_bytes C heap handed out and not freed (glibc mallinfo2)",
            "# TYPE flashtalk_heap_in_use_bytes gauge",
            f"flashtalk_heap_in_use_bytes {heap}",
        ]
    lines += _gpu_lines(st)
    return PlainTextResponse("\n".join(lines) + "\n", headers={"X-Content-Type-Options": "nosniff"})


def _scheduling_lines(st: ServerState) -> list[str]:
    """Deadlines, backpressure, capacity and admission (flashtalk.runtime.scheduler)."""
    sched, stats = st.scheduler, st.scheduler.stats
    capacity = sched.capacity_fps
    lines = [
        "# HELP flashtalk_deadline_misses_total frames rendered after their due time (audio in + look-ahead + "
        "the session's latency budget), by session pace",
        "# TYPE flashtalk_deadline_misses_total counter",
    ]
    lines += [f'flashtalk_deadline_misses_total{{pace="{p}"}} {n}' for p, n in stats.deadline_misses.items()]
    lines += ["# TYPE flashtalk_frames_rendered_pace_total counter"]
    lines += [f'flashtalk_frames_rendered_pace_total{{pace="{p}"}} {n}' for p, n in stats.frames_by_pace.items()]
    lines += [
        "# HELP flashtalk_frames_paused_total frames held back (once each) because their client did not read",
        "# TYPE flashtalk_frames_paused_total counter",
        f"flashtalk_frames_paused_total {stats.paused_frames}",
        "# TYPE flashtalk_backpressure_pauses_total counter",
        f"flashtalk_backpressure_pauses_total {st.paused_sessions}",
        "# HELP flashtalk_capacity_fps measured render throughput at batches that keep the latency budget "
        "(-1: not measured yet)",
        "# TYPE flashtalk_capacity_fps gauge",
        f"flashtalk_capacity_fps {-1 if capacity is None else round(capacity, 3)}",
        "# HELP flashtalk_committed_fps live realtime sessions x 25 FPS",
        "# TYPE flashtalk_committed_fps gauge",
        f"flashtalk_committed_fps {sched.committed_fps:g}",
        "# TYPE flashtalk_capacity_headroom gauge",
        f"flashtalk_capacity_headroom {sched.headroom:g}",
        "# TYPE flashtalk_render_seconds_estimate gauge",
    ]
    lines += [
        f'flashtalk_render_seconds_estimate{{bucket="{b}"}} {t:.6f}'
        for b, t in sorted(sched.render_clock.measured.items())
    ]
    lines += [
        "# HELP flashtalk_sessions_refused_reason_total sessions refused with 1013, by reason",
        "# TYPE flashtalk_sessions_refused_reason_total counter",
    ]
    lines += [f'flashtalk_sessions_refused_reason_total{{reason="{r}"}} {n}' for r, n in st.refused.items()]
    return lines


def _gpu_lines(st: ServerState) -> list[str]:
    if st.nvml is None:
        return []
    s = st.nvml.summary()
    lines = [
        "# TYPE flashtalk_gpu_telemetry_available gauge",
        f'flashtalk_gpu_telemetry_available{{reason="{_label(s.reason or "")}"}} {int(s.available and s.samples > 0)}',
    ]
    for name, value in (
        ("power_watts_mean", s.power_w_mean),
        ("sm_clock_mhz_mean", s.sm_clock_mhz_mean),
        ("utilization_percent_mean", s.gpu_util_pct_mean),
        ("memory_used_gib_max", s.mem_used_gib_max),
        ("temperature_celsius_max", s.temperature_c_max),
    ):
        if value is not None:
            lines += [f"# TYPE flashtalk_gpu_{name} gauge", f"flashtalk_gpu_{name} {value:.3f}"]
    return lines


async def _read_body(request: Request, limit: int) -> bytes | Response:
    """The whole body up to `limit` bytes (Content-Length or chunked); a 413 response past it."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        return JSONResponse({"error": f"upload of {declared} bytes exceeds the {limit}-byte limit"}, status_code=413)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return JSONResponse({"error": f"upload exceeds the {limit}-byte limit"}, status_code=413)
        chunks.append(chunk)
    return b"".join(chunks)


async def _upload(request: Request) -> Response:
    st = _state(request)
    try:
        data = await _read_body(request, st.config.max_upload_bytes)
    except ClientDisconnect:
        return Response(status_code=400)
    if isinstance(data, Response):
        return data
    if not data:
        return JSONResponse({"error": "empty body: POST the image bytes (JPEG, PNG or WebP)"}, status_code=400)
    loop = asyncio.get_running_loop()
    try:
        async with st.setup_slots:
            image = await loop.run_in_executor(st.setup, decode_image, data, st.config.max_image_side)
            portrait = await loop.run_in_executor(st.setup, st.encode, image)
    except FlashTalkError as exc:
        st.release_memory()  # the refused body (up to max_upload_bytes) and its decode
        return JSONResponse({"error": str(exc)}, status_code=400)
    pid = secrets.token_hex(8)
    if st.portrait_sink is not None:
        await st.portrait_sink(pid, data, portrait)
    else:
        st.remember(pid, portrait)
    return JSONResponse({"id": pid, "width": image.size[0], "height": image.size[1]})


async def _asset(request: Request) -> Response:
    name = request.path_params["name"]
    if name not in ASSETS:
        return PlainTextResponse("not found", status_code=404)
    return FileResponse(ASSETS_DIR / name, media_type=ASSETS[name])


async def _index(request: Request) -> Response:
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html")


async def _websocket(ws: WebSocket) -> None:
    await websocket_session(ws, _state(ws))


class _TokenGuard:
    """ASGI middleware: the bearer token on every non-public HTTP and WebSocket request."""

    def __init__(self, app: Any, token: str | None) -> None:
        self.app, self.token = app, token

    async def __call__(self, scope, receive, send) -> None:
        if self.token and scope["type"] in ("http", "websocket"):
            path = scope["path"]
            if path not in PUBLIC_PATHS and not path.startswith(PUBLIC_PREFIXES) and not self._ok(scope):
                body = json.dumps({"error": "missing or wrong bearer token"}).encode()
                headers = [
                    (b"content-type", b"application/json"),
                    (b"www-authenticate", b"Bearer"),
                    (b"content-length", str(len(body)).encode()),
                ]
                if scope["type"] == "http":
                    await send({"type": "http.response.start", "status": 401, "headers": headers})
                    await send({"type": "http.response.body", "body": body})
                elif "websocket.http.response" in scope.get("extensions", {}):  # a 401 to the handshake
                    await send({"type": "websocket.http.response.start", "status": 401, "headers": headers})
                    await send({"type": "websocket.http.response.body", "body": body})
                else:  # a server without the denial-response extension answers 403
                    await send({"type": "websocket.close", "code": 1008, "reason": "missing or wrong bearer token"})
                return
        await self.app(scope, receive, send)

    def _ok(self, scope) -> bool:
        header = dict(scope.get("headers") or ()).get(b"authorization", b"").decode("latin-1")
        given = header[7:] if header.startswith("Bearer ") else ""
        if not given:
            given = (parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token") or [""])[0]
        return hmac.compare_digest(given.encode(), self.token.encode())


def create_app(
    config: ServeConfig, backend: Backend | None = None, state: ServerState | None = None, faces: Any = None
):
    """The ASGI application (Starlette); the scheduler thread starts and stops with its lifespan.
    `app.state.flashtalk` is the ServerState (tests and the Ray deployment reach it there)."""
    check_config(config)
    if state is None:
        state = ServerState(config, backend if backend is not None else PreviewBackend(config.device), faces)

    @contextlib.asynccontextmanager
    async def lifespan(app) -> AsyncIterator[None]:
        from flashtalk.profiling.nvml import NvmlSampler

        state.nvml = NvmlSampler(interval_s=1.0).__enter__()
        # the demo portrait encoded once before any client: also imports the face detector (OpenCV) on
        # one thread, never two at once; then the render time measured on it (admission by capacity)
        demo = await state.portrait(DEMO_PORTRAIT_ID)
        await asyncio.get_running_loop().run_in_executor(state.setup, state.scheduler.calibrate, demo)
        state.scheduler.start()
        try:
            yield
        finally:
            state.draining = True
            sockets = list(state.sockets.values())
            await asyncio.gather(
                *(
                    close_with_error(ws, CLOSE_FULL, f"replica {config.replica} is shutting down; start a new session")
                    for ws in sockets
                )
            )
            for session in list(state.sessions.values()):
                state.scheduler.release(session)
            state.close()
            state.nvml.__exit__(None, None, None)

    app = Starlette(
        routes=[
            Route("/", _index),
            Route("/health", _health),
            Route("/metrics", _metrics),
            Route("/portraits", _upload, methods=["POST"]),
            WebSocketRoute("/ws", _websocket),
            Route("/assets/{name}", _asset),
            Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
        ],
        lifespan=lifespan,
    )
    app.state.flashtalk = state
    app.add_middleware(_TokenGuard, token=config.token)
    return app


def uvicorn_config(app: Any, config: ServeConfig, **kw: Any):
    import uvicorn

    return uvicorn.Config(
        app,
        host=config.host,
        port=config.port,
        ws_max_size=config.max_message_bytes + TRANSPORT_SLACK,
        ws_max_queue=8,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=10,
        **kw,
    )


def serve(config: ServeConfig, backend: Backend | None = None, faces: Any = None) -> None:
    """Run until interrupted (the CLI's `flashtalk serve`). faces: LivePortrait's face models (build_faces)."""
    import uvicorn

    app = create_app(config, backend, faces=faces)
    freeze_startup()  # the process is the server's own: its start-up objects are never garbage
    name = app.state.flashtalk.backend.name
    print(
        f"flashtalk serve: http://{config.host}:{config.port}/  (backend {name}, max {config.max_sessions} "
        f"sessions{', token required' if config.token else ''})",
        flush=True,
    )
    uvicorn.Server(uvicorn_config(app, config)).run()


@contextlib.asynccontextmanager
async def serving(config: ServeConfig, backend: Backend | None = None) -> AsyncIterator[tuple[str, ServerState]]:
    """Serve on this event loop (port 0 picks a free one) -> ("http://127.0.0.1:PORT", state); for tests,
    benchmarks and in-process use. Stopped (and every session closed) when the block ends."""
    import uvicorn

    app = create_app(config, backend)
    server = uvicorn.Server(uvicorn_config(app, config))
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if task.done():
                task.result()
                raise FlashTalkError("flashtalk serve did not start")
            await asyncio.sleep(0.01)
        host, port = server.servers[0].sockets[0].getsockname()[:2]
        yield f"http://{config.host if is_loopback(config.host) else host}:{port}", app.state.flashtalk
    finally:
        server.should_exit = True
        await task


__all__ = [
    "ASSETS_DIR",
    "STATIC_DIR",
    "ServeConfig",
    "check_config",
    "create_app",
    "decode_image",
    "is_loopback",
    "serve",
    "serving",
]
