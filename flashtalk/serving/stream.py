"""One WebSocket session of `flashtalk serve` (protocol: flashtalk.serving.wire), over Starlette's
WebSocket. Three tasks per session:

- the receiver (this handler): reads messages, pushes PCM and commands into the runtime Session;
  resampling sessions do their resampler work on a thread of their own, never on the event loop;
- the pacer: takes frames from the Session as soon as they are ready, paces them (realtime) or not
  (fast), JPEG-encodes them on the frame pool and puts them into the session's outbox;
- the writer: sends the outbox. The outbox is bounded in bytes (ServeConfig.max_send_queue_bytes):
  when a client reads slower than frames are made and the outbox reaches its bound, the pacer pauses
  the runtime session (backpressure: nothing more is rendered or encoded for it) until the writer has
  sent half of it; a realtime session skips to the present meanwhile. Everything is freed on disconnect.

Realtime catch-up: see wire.LATE_S. Drops are counted per reason ("late"; "paused": frames a realtime
session skipped unrendered while its client did not read; "backlog": the runtime's own output backlog)
in /metrics and reported to the client in end / interrupted, with the session's deadline misses.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from flashtalk.constants import FPS, FRAME_SIZE
from flashtalk.errors import FlashTalkError
from flashtalk.kernels.registry import in_use
from flashtalk.runtime.scheduler import AdmissionError
from flashtalk.runtime.session import Event, Frame, Session
from flashtalk.serving import wire
from flashtalk.serving.state import DROP_REASONS, ServerState, decode_image
from flashtalk.serving.wire import CLOSE_BAD_MESSAGE, CLOSE_FULL, CLOSE_INTERNAL, CLOSE_TOO_BIG, LATE_S

log = logging.getLogger(__name__)

START_TIMEOUT_S = 10.0
CLOSE_TIMEOUT_S = 2.0  # sending the error and the close frame to a client that does not read gives up after this
BIG_TEXT = 1 << 16  # text messages larger than this are parsed on the setup pool, not on the event loop
SEND_ERRORS = (WebSocketDisconnect, OSError, RuntimeError)


class TooBig(wire.ProtocolError):
    """A message over its size limit (closed with 1009)."""


def _encode_image(frame: Frame, video: str, quality: int) -> bytes:
    if video == "raw":
        return frame.image.tobytes()
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(frame.image).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _pcm16(audio: np.ndarray) -> bytes:
    return (np.clip(audio, -1.0, 1.0) * 32767.0).round().astype("<i2").tobytes()


async def close_with_error(ws: WebSocket, code: int, reason: str) -> None:
    """{"type": "error"} then the close frame; bounded in time (a client that never reads cannot hold it)."""
    if ws.application_state != WebSocketState.CONNECTED or ws.client_state != WebSocketState.CONNECTED:
        return
    try:
        await asyncio.wait_for(ws.send_text(json.dumps({"type": "error", "reason": reason})), CLOSE_TIMEOUT_S)
        await asyncio.wait_for(
            ws.close(code=code, reason=reason.encode()[:120].decode(errors="ignore")), CLOSE_TIMEOUT_S
        )
    except (asyncio.TimeoutError, *SEND_ERRORS):
        pass


@dataclass
class Outbox:
    """Messages waiting to be sent, bounded in bytes: the pacer puts a frame only while it is not `full`
    (so it holds at most the limit plus one frame); events are always put."""

    limit: int
    size: int = 0

    def __post_init__(self) -> None:
        self.items: collections.deque[bytes | str] = collections.deque()
        self.ready = asyncio.Event()
        self.drained = asyncio.Event()  # set when it holds half its limit or less

    @property
    def full(self) -> bool:
        return self.size >= self.limit

    def put(self, data: bytes | str) -> None:
        self.items.append(data)
        self.size += len(data)
        if self.size > self.limit // 2:
            self.drained.clear()
        self.ready.set()

    async def get(self) -> bytes | str:
        while not self.items:
            self.ready.clear()
            await self.ready.wait()
        data = self.items.popleft()
        self.size -= len(data)
        if self.size <= self.limit // 2:
            self.drained.set()
        return data


class Stream:
    """The state of one live WebSocket session (see the module docstring)."""

    def __init__(
        self,
        ws: WebSocket,
        st: ServerState,
        session: Session,
        start: wire.Start,
        sid: str,
        wake: asyncio.Event,
        audio_pool: concurrent.futures.Executor | None,
    ) -> None:
        self.ws, self.st, self.session, self.start, self.sid, self.wake = ws, st, session, start, sid, wake
        self.audio_pool = audio_pool  # this session's own thread when it resamples, else None (inline)
        self.outbox = Outbox(st.config.max_send_queue_bytes)
        self.sample_bytes = 2 if start.format == "s16le" else 4
        self.dropped = dict.fromkeys(DROP_REASONS, 0)
        # a frame within its latency budget is never dropped as late
        self.late_s = max(LATE_S, (start.budget_ms or st.config.latency_budget_ms) / 1000)
        self.media_in = 0.0  # seconds of speech pushed since the last interrupt
        self.media_out = 0.0  # seconds of speech in frames taken (sent or dropped) since then
        self.t0: float | None = None  # realtime pacing: wall time of pts 0

    def count_drop(self, reason: str, n: int = 1) -> None:
        self.dropped[reason] += n
        self.st.dropped[reason] += n

    # ---- receiver ------------------------------------------------------------------------------
    async def _call(self, fn, *args) -> Any:
        if self.audio_pool is None:
            return fn(*args)
        return await asyncio.get_running_loop().run_in_executor(self.audio_pool, fn, *args)

    async def receive(self) -> None:
        ws, session, st = self.ws, self.session, self.st
        while True:
            msg = await ws.receive()
            if msg["type"] == "websocket.disconnect":
                return
            data, text = msg.get("bytes"), msg.get("text")
            try:
                if data is not None:
                    if len(data) > wire.MAX_CHUNK_BYTES:
                        raise TooBig(f"PCM chunk of {len(data)} bytes exceeds {wire.MAX_CHUNK_BYTES} bytes")
                    await self._call(session.push_audio, data)
                    self.media_in += len(data) / self.sample_bytes / self.start.sample_rate
                elif text is not None:
                    if len(text) > wire.MAX_COMMAND_BYTES:
                        raise TooBig(f"command of {len(text)} characters exceeds {wire.MAX_COMMAND_BYTES}")
                    cmd = wire.parse_command(text)
                    if cmd.type == "end":
                        await self._call(session.end_speech)
                    elif cmd.type == "interrupt":
                        await self._call(session.interrupt)
                        self.media_in = self.media_out = 0.0
                    elif cmd.type == "controls":
                        session.set_controls(cmd.controls)
                    else:  # stop
                        await ws.close()
                        return
                else:
                    return
            except FlashTalkError as exc:
                st.protocol_errors += 1
                await self.stop_tasks()
                await close_with_error(ws, CLOSE_TOO_BIG if isinstance(exc, TooBig) else CLOSE_BAD_MESSAGE, str(exc))
                return
            st.scheduler.wake()

    # ---- pacer ---------------------------------------------------------------------------------
    async def pace(self) -> None:
        loop = asyncio.get_running_loop()
        realtime = self.start.pace == "realtime"
        reanchor = True
        while True:
            await self.wake.wait()
            self.wake.clear()
            items = self.session.poll()
            self._count_runtime_drops()
            for i, item in enumerate(items):
                if isinstance(item, Event):
                    if item.kind == "interrupted":
                        self.t0 = None
                    reanchor = True
                    self._count_runtime_drops()
                    event = {"type": item.kind, "frames": item.frames, "dropped": sum(self.dropped.values())}
                    self.outbox.put(json.dumps({**event, "missed": self.session.stats.deadline_misses}))
                    continue
                if not item.idle:
                    self.media_out += 1.0 / FPS
                if realtime:
                    newer = any(isinstance(x, Frame) for x in items[i + 1 :])
                    if not await self._due(item, newer, reanchor):
                        self.count_drop("late")
                        continue
                    reanchor = False
                    if item.epoch < self.session.epoch:
                        continue  # interrupted while waiting
                if self.outbox.full:
                    await self._backpressure()
                    if realtime and not await self._due(item, True, False):
                        self.count_drop("late")  # it waited for the client: stale now
                        continue
                image = await loop.run_in_executor(
                    self.st.frames, _encode_image, item, self.start.video, self.start.quality
                )
                self.outbox.put(wire.pack_frame(item.index, item.pts, _pcm16(item.audio), image, item.idle))
                if item.latency_s is not None:
                    self.st.latency.observe(item.latency_s)

    def _count_runtime_drops(self) -> None:
        stats = self.session.stats
        for reason, n in (("backlog", stats.dropped_frames), ("paused", stats.skipped_frames)):
            if n:
                self.count_drop(reason, n)
        stats.dropped_frames = stats.skipped_frames = 0

    async def _backpressure(self) -> None:
        """The client is not reading: pause the session (nothing more is rendered for it) until the
        writer has sent half the outbox."""
        self.session.set_paused(True)
        self.st.paused_sessions += 1
        try:
            await self.outbox.drained.wait()
        finally:
            self.session.set_paused(False)
            self.st.scheduler.wake()

    async def _due(self, frame: Frame, newer: bool, reanchor: bool) -> bool:
        """Wait for a realtime frame's moment; False: drop it (late, and a newer frame is there)."""
        now = time.monotonic()
        if self.t0 is None:
            self.t0 = now - frame.pts
        late = now - (self.t0 + frame.pts)
        if late > self.late_s:
            if newer:
                return False
            starved = self.media_in - self.media_out < LATE_S  # no more speech is waiting: the input paused
            if reanchor or starved or frame.idle:
                self.t0 = now - frame.pts
        elif late < 0:
            await asyncio.sleep(-late)
        return True

    # ---- writer --------------------------------------------------------------------------------
    async def write(self) -> None:
        while True:
            data = await self.outbox.get()
            if isinstance(data, str):
                await self.ws.send_text(data)
            else:
                await self.ws.send_bytes(data)
                self.st.frames_sent += 1
                self.st.recent.append(time.monotonic())

    # ---- life ----------------------------------------------------------------------------------
    async def run(self) -> None:
        self.tasks = [asyncio.create_task(self.pace()), asyncio.create_task(self.write())]
        for t in self.tasks:
            t.add_done_callback(self._task_done)
        await self.receive()

    def _task_done(self, task: asyncio.Task) -> None:
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            if not isinstance(exc, SEND_ERRORS):
                log.warning("session %s: %s stopped: %r", self.sid, task.get_coro().__name__, exc)

    async def stop_tasks(self) -> None:
        for t in getattr(self, "tasks", []):
            t.cancel()
        for t in getattr(self, "tasks", []):
            try:
                await t
            except BaseException:
                pass
        self.tasks = []


# ------------------------------------------------------------------------------------ the handler


async def _first_message(ws: WebSocket, st: ServerState) -> wire.Start:
    try:
        msg = await asyncio.wait_for(ws.receive(), START_TIMEOUT_S)
    except asyncio.TimeoutError:
        raise wire.ProtocolError(f"no start message within {START_TIMEOUT_S:g} s") from None
    if msg["type"] == "websocket.disconnect":
        raise WebSocketDisconnect(msg.get("code", 1000))
    text = msg.get("text")
    if text is None:
        raise wire.ProtocolError("the first message must be a JSON start message")
    if len(text) > st.config.max_message_bytes:
        raise TooBig(f"start message of {len(text)} characters exceeds {st.config.max_message_bytes}")
    if len(text) <= BIG_TEXT:
        return wire.parse_start(text, st.config.max_upload_bytes)
    return await asyncio.get_running_loop().run_in_executor(
        st.setup, wire.parse_start, text, st.config.max_upload_bytes
    )


async def _open_session(
    st: ServerState, start: wire.Start, loop, wake: asyncio.Event, audio_pool: concurrent.futures.Executor | None
) -> Session:
    if start.portrait is not None:
        image = await loop.run_in_executor(st.setup, decode_image, start.portrait, st.config.max_image_side)
        portrait = await loop.run_in_executor(st.setup, st.encode, image)
    else:
        portrait = await st.portrait(start.portrait_id)

    def build() -> Session:  # the resampler's filter bank is built here, off the event loop
        return Session(
            st.backend,
            portrait,
            seed=start.seed,
            sample_rate=start.sample_rate,
            sample_format=start.format,
            controls=start.controls,
            idle=start.idle,
            on_output=lambda: loop.call_soon_threadsafe(wake.set),
            latency=start.latency or st.config.latency,
            commit_frames=start.commit_frames,
            lookahead_frames=start.lookahead_frames,
            pace=start.pace,
            budget_s=(start.budget_ms or st.config.latency_budget_ms) / 1000,
        )

    return await loop.run_in_executor(audio_pool or st.setup, build)


async def websocket_session(ws: WebSocket, st: ServerState) -> None:
    await ws.accept()
    loop = asyncio.get_running_loop()
    wake = asyncio.Event()
    audio_pool: concurrent.futures.ThreadPoolExecutor | None = None
    session: Session | None = None
    stream: Stream | None = None
    sid = f"s{next(st.ids)}"
    try:
        try:
            start = await _first_message(ws, st)
            if st.draining:
                raise AdmissionError(f"replica {st.config.replica} is draining; try again later", "draining")
            st.scheduler.check_admission(start.pace == "realtime")  # at once, before any work for it
            if start.sample_rate != 16000:
                audio_pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"flashtalk-{sid}")
            async with st.setup_slots:
                session = await _open_session(st, start, loop, wake, audio_pool)
            st.scheduler.admit(session)
        except AdmissionError as exc:
            st.sessions_refused += 1
            st.refused[exc.reason] += 1
            await close_with_error(ws, CLOSE_FULL, str(exc))
            return
        except FlashTalkError as exc:
            st.protocol_errors += 1
            await close_with_error(ws, CLOSE_TOO_BIG if isinstance(exc, TooBig) else CLOSE_BAD_MESSAGE, str(exc))
            return
        st.sessions[sid], st.sockets[sid] = session, ws
        st.sessions_total += 1
        await ws.send_text(
            json.dumps(
                {
                    "type": "ready",
                    "session": sid,
                    "fps": FPS,
                    "width": FRAME_SIZE,
                    "height": FRAME_SIZE,
                    "backend": st.backend.name,
                    "replica": st.config.replica,
                    "lookahead_ms": round(session.lookahead_s * 1000, 3),
                    "latency": session.latency,
                    "watermark": session.watermarked,
                    "controls": list(st.backend.controls),
                    "video": start.video,
                    "pace": start.pace,
                    "kernels": in_use(),
                    "budget_ms": round(session.budget_s * 1000),
                }
            )
        )
        stream = Stream(ws, st, session, start, sid, wake, audio_pool)
        await stream.run()
    except (WebSocketDisconnect, asyncio.CancelledError, *SEND_ERRORS):
        pass
    except Exception as exc:  # never a traceback per client: one line, the session closed, the server on
        st.internal_errors += 1
        log.warning("session %s: internal error: %r", sid, exc)
        await close_with_error(ws, CLOSE_INTERNAL, f"internal error: {type(exc).__name__}")
    finally:
        if stream is not None:
            await stream.stop_tasks()
        if session is not None:
            st.scheduler.release(session)
        st.sessions.pop(sid, None)
        st.sockets.pop(sid, None)
        if audio_pool is not None:
            audio_pool.shutdown(wait=False, cancel_futures=True)
        st.release_memory()
        if ws.application_state == WebSocketState.CONNECTED and ws.client_state == WebSocketState.CONNECTED:
            try:
                await asyncio.wait_for(ws.close(), CLOSE_TIMEOUT_S)
            except (asyncio.TimeoutError, *SEND_ERRORS):
                pass


__all__ = ["Outbox", "Stream", "close_with_error", "websocket_session"]
