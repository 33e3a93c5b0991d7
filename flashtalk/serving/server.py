"""`flashtalk serve`: an aiohttp server over the streaming runtime (sessions + batching scheduler).

Routes: `GET /` (the web page, flashtalk/serving/static/), `GET /health`, `GET /metrics` (Prometheus text),
`POST /portraits` (raw image body -> {"id": ...}), `GET /ws` (the WebSocket protocol of
`flashtalk.serving.protocol`), `GET /assets/portrait.jpg|speech.ogg` (the bundled demo inputs).
With a token, every route but `/`, `/static/*`, `/assets/*` and `/health` needs `Authorization: Bearer T`
(or `?token=T`, for browsers' WebSockets). A bad message closes that session with a reason; the server
and the other sessions carry on.
"""

from __future__ import annotations

import asyncio
import collections
import hmac
import io
import ipaddress
import itertools
import logging
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from aiohttp import WSMsgType, web

from flashtalk.errors import FlashTalkError
from flashtalk.runtime.scheduler import AdmissionError, Scheduler
from flashtalk.runtime.session import (FPS, FRAME_SIZE, EncodedPortrait, Event, Frame, PreviewStreamingBackend,
                                       Session, StreamingBackend, encode_portrait)
from flashtalk.serving import protocol

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
ASSETS_DIR = Path(__file__).resolve().parents[1] / "assets"
ASSETS = {"portrait.jpg": "image/jpeg", "speech.ogg": "audio/ogg"}
DEMO_PORTRAIT_ID = "demo"
LATENCY_BUCKETS = (0.005, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
START_TIMEOUT_S = 10.0
CLOSE_BAD_MESSAGE, CLOSE_FULL, CLOSE_INTERNAL = 1008, 1013, 1011
PUBLIC_PREFIXES = ("/static/", "/assets/")
PUBLIC_PATHS = ("/", "/health")


@dataclass(frozen=True)
class ServeConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    token: str | None = None
    max_sessions: int = 16
    max_upload_bytes: int = 8 << 20
    max_image_side: int = 4096
    max_portraits: int = 64  # uploaded portraits kept (least recently used dropped)
    device: str | None = None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_config(config: ServeConfig) -> None:
    """Refuse unsafe or impossible settings with a clear message (before anything starts)."""
    if not is_loopback(config.host) and not config.token:
        raise FlashTalkError(f"refusing to bind to {config.host}, which is not a loopback address, without a "
                             "token: pass --token T (clients then send 'Authorization: Bearer T')")
    if config.token is not None and len(config.token) < 8:
        raise FlashTalkError("--token must be at least 8 characters")
    if not 0 <= config.port <= 65535:
        raise FlashTalkError(f"--port must be in [0, 65535]; got {config.port}")
    if config.max_sessions < 1:
        raise FlashTalkError(f"--max-sessions must be at least 1; got {config.max_sessions}")


class Histogram:
    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds, self.counts, self.sum, self.count = bounds, [0] * len(bounds), 0.0, 0

    def observe(self, value: float) -> None:
        for i, b in enumerate(self.bounds):
            if value <= b:
                self.counts[i] += 1
        self.sum += value
        self.count += 1

    def lines(self, name: str) -> list[str]:
        out = [f"# TYPE {name} histogram"]
        out += [f'{name}_bucket{{le="{b:g}"}} {c}' for b, c in zip(self.bounds, self.counts)]
        out += [f'{name}_bucket{{le="+Inf"}} {self.count}', f"{name}_sum {self.sum:.6f}", f"{name}_count {self.count}"]
        return out


class ServerState:
    def __init__(self, config: ServeConfig, backend: StreamingBackend) -> None:
        self.config = config
        self.backend = backend
        self.scheduler = Scheduler(backend, max_sessions=config.max_sessions)
        self.portraits: collections.OrderedDict[str, EncodedPortrait] = collections.OrderedDict()
        self.sessions: dict[str, Session] = {}
        self.ids = itertools.count(1)
        self.started = time.monotonic()
        self.frames_sent = 0
        self.frames_dropped = 0
        self.sessions_total = 0
        self.sessions_refused = 0
        self.protocol_errors = 0
        self.latency = Histogram(LATENCY_BUCKETS)
        self.recent: collections.deque[float] = collections.deque(maxlen=2000)  # send times, for FPS
        self.nvml: Any = None

    def portrait(self, pid: str) -> EncodedPortrait:
        if pid == DEMO_PORTRAIT_ID and pid not in self.portraits:
            self.portraits[pid] = encode_portrait(self.backend, ASSETS_DIR / "portrait.jpg")
        try:
            self.portraits.move_to_end(pid)
            return self.portraits[pid]
        except KeyError:
            raise FlashTalkError(f"unknown portrait_id {pid!r}: upload it with POST /portraits first") from None

    def fps(self) -> float:
        now = time.monotonic()
        while self.recent and self.recent[0] < now - 5.0:
            self.recent.popleft()
        return len(self.recent) / min(5.0, max(now - self.started, 1e-3))


STATE_KEY = web.AppKey("flashtalk", ServerState)


def decode_image(data: bytes, max_side: int) -> Any:
    """A PIL image from upload bytes, with its dimensions checked before the pixels are decoded."""
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(io.BytesIO(data))
        w, h = image.size
        if max(w, h) > max_side:
            raise FlashTalkError(f"portrait is {w}x{h} pixels; the limit is {max_side} on each side")
        image.load()
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as exc:
        if isinstance(exc, FlashTalkError):
            raise
        raise FlashTalkError(f"portrait is not a readable image (JPEG, PNG or WebP expected): {exc}") from None
    return image


def _encode_image(frame: Frame, video: str, quality: int) -> bytes:
    if video == "raw":
        return frame.image.tobytes()
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(frame.image).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _pcm16(audio: np.ndarray) -> bytes:
    return (np.clip(audio, -1.0, 1.0) * 32767.0).round().astype("<i2").tobytes()


# ------------------------------------------------------------------------------------ handlers

def _state(request) -> ServerState:
    return request.app[STATE_KEY]


async def _health(request):
    st = _state(request)
    return web.json_response({"status": "ok", "backend": st.backend.name, "sessions": st.scheduler.sessions,
                              "max_sessions": st.config.max_sessions})


async def _metrics(request):
    st = _state(request)
    sched = st.scheduler.stats
    lines = [
        "# TYPE flashtalk_sessions gauge", f"flashtalk_sessions {st.scheduler.sessions}",
        "# TYPE flashtalk_sessions_max gauge", f"flashtalk_sessions_max {st.config.max_sessions}",
        "# TYPE flashtalk_sessions_total counter", f"flashtalk_sessions_total {st.sessions_total}",
        "# TYPE flashtalk_sessions_refused_total counter", f"flashtalk_sessions_refused_total {st.sessions_refused}",
        "# TYPE flashtalk_protocol_errors_total counter", f"flashtalk_protocol_errors_total {st.protocol_errors}",
        "# TYPE flashtalk_frames_sent_total counter", f"flashtalk_frames_sent_total {st.frames_sent}",
        "# TYPE flashtalk_frames_dropped_total counter", f"flashtalk_frames_dropped_total {st.frames_dropped}",
        "# TYPE flashtalk_fps gauge", f"flashtalk_fps {st.fps():.3f}",
        "# TYPE flashtalk_render_calls_total counter", f"flashtalk_render_calls_total {sched.render_calls}",
        "# TYPE flashtalk_render_frames_total counter", f"flashtalk_render_frames_total {sched.frames}",
        "# TYPE flashtalk_motion_calls_total counter", f"flashtalk_motion_calls_total {sched.motion_calls}",
        "# TYPE flashtalk_scheduler_errors_total counter", f"flashtalk_scheduler_errors_total {sched.errors}",
        "# TYPE flashtalk_render_bucket_total counter",
    ]
    lines += [f'flashtalk_render_bucket_total{{bucket="{b}"}} {n}' for b, n in sorted(sched.bucket_counts.items())]
    lines += ["# HELP flashtalk_frame_latency_seconds audio chunk complete -> its frame ready (compute + queueing)"]
    lines += st.latency.lines("flashtalk_frame_latency_seconds")
    lines += _gpu_lines(st)
    return web.Response(text="\n".join(lines) + "\n", content_type="text/plain", charset="utf-8",
                        headers={"X-Content-Type-Options": "nosniff"})


def _gpu_lines(st: ServerState) -> list[str]:
    if st.nvml is None:
        return []
    s = st.nvml.summary()
    reason = (s.reason or "").replace("\\", "\\\\").replace('"', "'").replace("\n", " ")
    lines = ["# TYPE flashtalk_gpu_telemetry_available gauge",
             f'flashtalk_gpu_telemetry_available{{reason="{reason}"}} {int(s.available and s.samples > 0)}']
    for name, value in (("power_watts_mean", s.power_w_mean), ("sm_clock_mhz_mean", s.sm_clock_mhz_mean),
                        ("utilization_percent_mean", s.gpu_util_pct_mean), ("memory_used_gib_max", s.mem_used_gib_max),
                        ("temperature_celsius_max", s.temperature_c_max)):
        if value is not None:
            lines += [f"# TYPE flashtalk_gpu_{name} gauge", f"flashtalk_gpu_{name} {value:.3f}"]
    return lines


async def _upload(request):
    st = _state(request)
    limit = st.config.max_upload_bytes
    if request.content_length is not None and request.content_length > limit:
        return web.json_response({"error": f"upload of {request.content_length} bytes exceeds the "
                                           f"{limit}-byte limit"}, status=413)
    data = await request.content.read(limit + 1)
    if len(data) > limit:
        return web.json_response({"error": f"upload exceeds the {limit}-byte limit"}, status=413)
    if not data:
        return web.json_response({"error": "empty body: POST the image bytes (JPEG, PNG or WebP)"}, status=400)
    loop = asyncio.get_running_loop()
    try:
        image = decode_image(data, st.config.max_image_side)
        portrait = await loop.run_in_executor(None, encode_portrait, st.backend, image)
    except FlashTalkError as exc:
        return web.json_response({"error": str(exc)}, status=400)
    pid = secrets.token_hex(8)
    st.portraits[pid] = portrait
    while len(st.portraits) > st.config.max_portraits:
        st.portraits.popitem(last=False)
    return web.json_response({"id": pid, "width": image.size[0], "height": image.size[1]})


async def _asset(request):
    name = request.match_info["name"]
    if name not in ASSETS:
        raise web.HTTPNotFound()
    return web.FileResponse(ASSETS_DIR / name, headers={"Content-Type": ASSETS[name]})


async def _index(request):
    return web.FileResponse(STATIC_DIR / "index.html")


async def _close(ws, code: int, reason: str) -> None:
    if not ws.closed:
        try:
            await ws.send_json({"type": "error", "reason": reason})
        except (ConnectionError, RuntimeError):
            pass
        await ws.close(code=code, message=reason.encode()[:120])


async def _websocket(request):
    st = _state(request)
    ws = web.WebSocketResponse(max_msg_size=st.config.max_upload_bytes * 4 // 3 + 4096)
    await ws.prepare(request)
    loop = asyncio.get_running_loop()
    try:
        first = await asyncio.wait_for(ws.receive(), START_TIMEOUT_S)
    except asyncio.TimeoutError:
        await _close(ws, CLOSE_BAD_MESSAGE, f"no start message within {START_TIMEOUT_S:g} s")
        return ws
    if first.type != WSMsgType.TEXT:
        if first.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
            return ws
        st.protocol_errors += 1
        await _close(ws, CLOSE_BAD_MESSAGE, "the first message must be a JSON start message")
        return ws
    try:
        start = protocol.parse_start(first.data, st.config.max_upload_bytes)
        if start.portrait is not None:
            image = decode_image(start.portrait, st.config.max_image_side)
            portrait = await loop.run_in_executor(None, encode_portrait, st.backend, image)
        else:
            portrait = await loop.run_in_executor(None, st.portrait, start.portrait_id)
    except FlashTalkError as exc:
        st.protocol_errors += 1
        await _close(ws, CLOSE_BAD_MESSAGE, str(exc))
        return ws

    wake = asyncio.Event()
    try:
        session = Session(st.backend, portrait, seed=start.seed, sample_rate=start.sample_rate,
                          sample_format=start.format, controls=start.controls, idle=start.idle,
                          on_output=lambda: loop.call_soon_threadsafe(wake.set))
    except FlashTalkError as exc:
        st.protocol_errors += 1
        await _close(ws, CLOSE_BAD_MESSAGE, str(exc))
        return ws
    try:
        st.scheduler.admit(session)
    except AdmissionError as exc:
        st.sessions_refused += 1
        await _close(ws, CLOSE_FULL, str(exc))
        return ws
    sid = f"s{next(st.ids)}"
    st.sessions[sid] = session
    st.sessions_total += 1
    sender = asyncio.create_task(_send_frames(ws, session, start, wake, st))
    try:
        await ws.send_json({"type": "ready", "session": sid, "fps": FPS, "width": FRAME_SIZE, "height": FRAME_SIZE,
                            "backend": st.backend.name, "lookahead_ms": round(session.lookahead_s * 1000, 3),
                            "watermark": session.watermarked, "controls": list(st.backend.controls),
                            "video": start.video, "pace": start.pace})
        await _receive(ws, session, st)
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        st.scheduler.release(session)
        st.sessions.pop(sid, None)
        sender.cancel()
        try:
            await sender
        except asyncio.CancelledError:
            pass
        except Exception as exc:  # the client went away while a frame was being sent
            log.debug("session %s: sender stopped: %r", sid, exc)
        if not ws.closed:
            await ws.close()
    return ws


async def _receive(ws, session: Session, st: ServerState) -> None:
    async for msg in ws:
        try:
            if msg.type == WSMsgType.BINARY:
                if len(msg.data) > protocol.MAX_CHUNK_BYTES:
                    raise protocol.ProtocolError(f"PCM chunk of {len(msg.data)} bytes exceeds "
                                                 f"{protocol.MAX_CHUNK_BYTES} bytes")
                session.push_audio(msg.data)
            elif msg.type == WSMsgType.TEXT:
                cmd = protocol.parse_command(msg.data)
                if cmd.type == "end":
                    session.end_speech()
                elif cmd.type == "interrupt":
                    session.interrupt()
                elif cmd.type == "controls":
                    session.set_controls(cmd.controls)
                else:  # stop
                    await ws.close()
                    return
            else:
                return
        except FlashTalkError as exc:
            st.protocol_errors += 1
            await _close(ws, CLOSE_BAD_MESSAGE, str(exc))
            return
        st.scheduler.wake()


async def _send_frames(ws, session: Session, start: protocol.Start, wake: asyncio.Event, st: ServerState) -> None:
    loop = asyncio.get_running_loop()
    t0: float | None = None  # wall time of pts 0 when pacing at real time
    while not ws.closed:
        await wake.wait()
        wake.clear()
        for item in session.poll():
            if isinstance(item, Event):
                await ws.send_json({"type": item.kind, "frames": item.frames})
                continue
            if start.pace == "realtime":
                now = time.monotonic()
                t0 = now - item.pts if t0 is None or t0 + item.pts < now - 1.0 else t0  # re-anchor when far late
                if t0 + item.pts > now:
                    await asyncio.sleep(t0 + item.pts - now)
                if item.epoch < session.epoch:
                    continue  # interrupted while waiting
            image = await loop.run_in_executor(None, _encode_image, item, start.video, start.quality)
            await ws.send_bytes(protocol.pack_frame(item.index, item.pts, _pcm16(item.audio), image, item.idle))
            st.frames_sent += 1
            st.recent.append(time.monotonic())
            if item.latency_s is not None:
                st.latency.observe(item.latency_s)
        dropped = session.stats.dropped_frames
        if dropped:
            st.frames_dropped += dropped
            session.stats.dropped_frames = 0


# ------------------------------------------------------------------------------------ app


def _auth_middleware(token: str | None):

    @web.middleware
    async def auth(request, handler):
        path = request.path
        if token and path not in PUBLIC_PATHS and not path.startswith(PUBLIC_PREFIXES):
            header = request.headers.get("Authorization", "")
            given = header[7:] if header.startswith("Bearer ") else request.query.get("token", "")
            if not hmac.compare_digest(given.encode(), token.encode()):
                return web.json_response({"error": "missing or wrong bearer token"}, status=401,
                                         headers={"WWW-Authenticate": "Bearer"})
        return await handler(request)

    return auth


def create_app(config: ServeConfig, backend: StreamingBackend | None = None):
    """The aiohttp application; the scheduler thread starts and stops with it."""
    check_config(config)
    if backend is None:
        backend = PreviewStreamingBackend(config.device)
    state = ServerState(config, backend)
    app = web.Application(middlewares=[_auth_middleware(config.token)], client_max_size=config.max_upload_bytes + 1)
    app[STATE_KEY] = state
    app.router.add_get("/", _index)
    app.router.add_get("/health", _health)
    app.router.add_get("/metrics", _metrics)
    app.router.add_post("/portraits", _upload)
    app.router.add_get("/ws", _websocket)
    app.router.add_get("/assets/{name}", _asset)
    app.router.add_static("/static/", STATIC_DIR)

    async def on_startup(app) -> None:
        from flashtalk.profiling.nvml import NvmlSampler

        state.nvml = NvmlSampler(interval_s=1.0).__enter__()
        state.scheduler.start()

    async def on_shutdown(app) -> None:
        for session in list(state.sessions.values()):
            state.scheduler.release(session)

    async def on_cleanup(app) -> None:
        state.scheduler.stop()
        if state.nvml is not None:
            state.nvml.__exit__(None, None, None)

    app.on_startup.append(on_startup)
    app.on_shutdown.append(on_shutdown)
    app.on_cleanup.append(on_cleanup)
    return app


def serve(config: ServeConfig) -> None:
    """Run until interrupted (the CLI's `flashtalk serve`)."""
    app = create_app(config)
    log.info("serving on http://%s:%d/ (backend %s)", config.host, config.port, app[STATE_KEY].backend.name)
    print(f"flashtalk serve: http://{config.host}:{config.port}/  (max {config.max_sessions} sessions"
          f"{', token required' if config.token else ''})", flush=True)
    web.run_app(app, host=config.host, port=config.port, print=None, handle_signals=True)


__all__ = ["STATE_KEY", "ServeConfig", "check_config", "create_app", "decode_image", "is_loopback", "serve"]
