"""`flashtalk serve` over loopback with the preview backend: protocol, batching, interrupt, bad clients,
limits, tokens, and no leaks after many sessions. Clips are a few frames long (CPU preview ~0.1-0.3 s a frame)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gc
import io
import json
import time
import weakref

import numpy as np
import pytest

pytest.importorskip("starlette", reason="flashtalk serve needs starlette + uvicorn: pip install 'flashtalk[serve]'")
httpx = pytest.importorskip("httpx", reason="the tests talk HTTP with httpx")
websockets = pytest.importorskip("websockets", reason="the tests talk WebSocket with websockets")
from PIL import Image  # noqa: E402
from websockets.asyncio.client import connect  # noqa: E402

from flashtalk import cli  # noqa: E402
from flashtalk.constants import HOP  # noqa: E402
from flashtalk.errors import FlashTalkError  # noqa: E402
from flashtalk.runtime.backends.preview import PreviewBackend  # noqa: E402
from flashtalk.runtime.session import Session, SessionStats  # noqa: E402
from flashtalk.serving import wire  # noqa: E402
from flashtalk.serving.server import ASSETS_DIR, ServeConfig, check_config, serving  # noqa: E402


class SpyBackend(PreviewBackend):
    """The preview, recording which sessions each batched render call held."""

    def __init__(self) -> None:
        super().__init__("cpu")
        self.render_calls: list[int] = []

    def render(self, items, bucket):
        self.render_calls.append(len(items))
        return super().render(items, bucket)


def speech(seconds: float, rate: int = 16000, seed: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    rng = np.random.default_rng(seed)
    env = 0.5 + 0.5 * np.sin(2 * np.pi * 3 * t)
    return ((0.3 * np.sin(2 * np.pi * 180 * t) + 0.05 * rng.standard_normal(len(t))) * env).astype(np.float32)


def pcm16(x: np.ndarray) -> bytes:
    return (x * 32767).astype("<i2").tobytes()


class Client:
    """HTTP (httpx) and WebSocket (websockets) to one server on loopback."""

    def __init__(self, url: str, http) -> None:
        self.url, self.http = url, http

    async def get(self, path, **kw):
        return await self.http.get(path, **kw)

    async def post(self, path, **kw):
        return await self.http.post(path, **kw)

    async def ws_connect(self, path="/ws", headers=None):
        return await connect(
            self.url.replace("http", "ws", 1) + path, max_size=None, additional_headers=headers, open_timeout=30
        )


@contextlib.asynccontextmanager
async def served(backend=None, **config):
    async with serving(ServeConfig(port=0, **config), backend) as (url, state):
        async with httpx.AsyncClient(base_url=url, timeout=60) as http:
            yield Client(url, http), state


async def receive_json(ws, timeout=60):
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def closed(ws, timeout=10):
    """Wait for the server's close; its code."""
    with contextlib.suppress(websockets.ConnectionClosed):
        while True:
            await asyncio.wait_for(ws.recv(), timeout)
    return ws.close_code


async def start(client, **fields):
    ws = await client.ws_connect()
    await ws.send(json.dumps({"type": "start", "portrait_id": "demo", "pace": "fast", "idle": False, **fields}))
    ready = await receive_json(ws)
    return ws, ready


async def collect(ws, until="end", timeout=120):
    frames, events = [], []
    while True:
        try:
            msg = await asyncio.wait_for(ws.recv(), timeout)
        except websockets.ConnectionClosed:
            return frames, events
        if isinstance(msg, bytes):
            frames.append(wire.unpack_frame(msg))
        else:
            events.append(json.loads(msg))
            if events[-1]["type"] == until:
                return frames, events


def test_stream_clip_frames_in_order_with_audio():
    async def main():
        async with served() as (client, state):
            ws, ready = await start(client, sample_rate=22050)
            assert ready["type"] == "ready" and ready["fps"] == 25 and ready["backend"] == "preview"
            assert ready["lookahead_ms"] > 0  # the 22.05 -> 16 kHz resampler's filter delay
            audio = speech(0.2, 22050)
            for i in range(0, len(audio), 1000):  # odd chunk sizes
                await ws.send(pcm16(audio[i : i + 1000]))
            await ws.send('{"type": "end"}')
            frames, events = await collect(ws)
            expected = -(-int(np.ceil(len(audio) * 16000 / 22050)) // HOP)
            assert len(frames) == expected == events[-1]["frames"]
            assert [f.index for f in frames] == list(range(expected))
            assert np.all(np.diff([f.pts for f in frames]) > 0)
            for f in frames:
                assert len(f.audio) == 2 * HOP and not f.idle
                assert Image.open(io.BytesIO(f.image)).size == (512, 512)
            driven = np.frombuffer(b"".join(f.audio for f in frames), "<i2")
            assert np.abs(driven).max() > 3000  # the frames carry the (resampled) speech, not silence
            await ws.close()
            metrics = (await client.get("/metrics")).text
            assert f"flashtalk_frames_sent_total {expected}" in metrics
            assert "flashtalk_frame_latency_seconds_count" in metrics and "flashtalk_sessions " in metrics

    asyncio.run(main())


def test_two_sessions_batched_and_interrupt():
    backend = SpyBackend()

    async def main():
        async with served(backend) as (client, state):
            (a, _), (b, _) = await start(client), await start(client, seed=3)
            state.scheduler.stop()  # queue both clips before a tick so one tick sees both sessions
            for ws in (a, b):
                await ws.send(pcm16(speech(0.12)))
                await ws.send('{"type": "end"}')
            await asyncio.sleep(0.2)
            state.scheduler.start()
            (fa, ea), (fb, eb) = await asyncio.gather(collect(a), collect(b))
            assert len(fa) == len(fb) == 3 and ea[-1]["frames"] == eb[-1]["frames"] == 3
            assert max(backend.render_calls) == 2 and state.scheduler.stats.max_render_sessions == 2
            # interrupt: queued audio is dropped, the session goes on afterwards
            state.scheduler.stop()
            await a.send(pcm16(speech(2.0)))
            await a.send('{"type": "interrupt"}')
            await a.send(pcm16(speech(0.08)))
            await a.send('{"type": "end"}')
            await asyncio.sleep(0.2)
            state.scheduler.start()
            frames, events = await collect(a)
            assert [e["type"] for e in events] == ["interrupted", "end"]
            assert [f.index for f in frames] == [3, 4]  # only the 2 frames after the interrupt
            for ws in (a, b):
                await ws.close()

    asyncio.run(main())


@pytest.mark.parametrize(
    "first, then, reason",
    [
        ("not json", None, "not valid JSON"),
        (b"\x00\x01", None, "first message must be a JSON start"),
        ('{"type": "start"}', None, "exactly one of 'portrait'"),
        ('{"type": "start", "portrait": "@@@"}', None, "not valid base64"),
        ('{"type": "start", "portrait": "aGVsbG8="}', None, "not a readable image"),
        ('{"type": "start", "portrait_id": "nope"}', None, "unknown portrait_id"),
        ('{"type": "start", "portrait_id": "demo", "sample_rate": 7}', None, "sample_rate"),
        ('{"type": "start", "portrait_id": "demo", "controls": {"zoom": 1}}', None, "unknown controls ['zoom']"),
        ('{"type": "start", "portrait_id": "demo"}', b"\x01\x02\x03", "not a whole number of s16le samples"),
        ('{"type": "start", "portrait_id": "demo"}', '{"type": "dance"}', "unknown message type 'dance'"),
        ('{"type": "start", "portrait_id": "demo"}', '{"type": "controls", "controls": {"yaw": 99}}', "yaw"),
        ('{"type": "start", "portrait_id": "demo"}', '{"type": "start", "portrait_id": "demo"}', "only once"),
    ],
)
def test_bad_messages_close_the_session_not_the_server(first, then, reason, code=1008):
    async def main():
        async with served() as (client, state):
            ws = await client.ws_connect()
            await ws.send(first)
            if then is not None:
                assert (await receive_json(ws))["type"] == "ready"
                await ws.send(then)
            error = await receive_json(ws)
            assert error["type"] == "error" and reason in error["reason"]
            assert await closed(ws) == code
            assert (await client.get("/health")).status_code == 200
            for _ in range(100):  # the handler's cleanup runs right after the close
                if state.scheduler.sessions == 0:
                    break
                await asyncio.sleep(0.02)
            assert state.scheduler.sessions == 0

    asyncio.run(main())


def test_uploads_are_capped_and_checked():
    async def main():
        async with served(max_upload_bytes=50_000, max_image_side=1000) as (client, state):
            r = await client.post("/portraits", content=b"x" * 60_000)
            assert r.status_code == 413 and "limit" in r.json()["error"]
            buf = io.BytesIO()
            Image.new("RGB", (1200, 64), (200, 150, 120)).save(buf, "PNG")
            r = await client.post("/portraits", content=buf.getvalue())
            assert r.status_code == 400 and "1200x64" in r.json()["error"]
            r = await client.post("/portraits", content=b"GIF89a not really")
            assert r.status_code == 400 and "not a readable image" in r.json()["error"]
            photo = (ASSETS_DIR / "portrait.jpg").read_bytes()
            r = await client.post("/portraits", content=photo)
            body = r.json()
            assert r.status_code == 200 and body["width"] == 300 and body["height"] == 360
            ws, ready = await start(client, portrait_id=body["id"])
            assert ready["type"] == "ready"
            await ws.close()
            # the same photo inline (base64) in the start message
            ws = await client.ws_connect()
            await ws.send(json.dumps({"type": "start", "portrait": base64.b64encode(photo).decode()}))
            assert (await receive_json(ws))["type"] == "ready"
            await ws.close()

    asyncio.run(main())


@pytest.mark.slow
def test_max_sessions_abrupt_disconnect_and_no_leaks():
    async def main():
        async with served(max_sessions=1) as (client, state):
            ws, ready = await start(client)
            assert ready["type"] == "ready"
            second = await client.ws_connect()
            await second.send('{"type": "start", "portrait_id": "demo"}')
            refusal = await receive_json(second)
            assert refusal["type"] == "error" and "1 of 1 sessions" in refusal["reason"]
            assert await closed(second) == 1013
            # abrupt disconnect mid-stream: drop the TCP connection without a close handshake
            await ws.send(pcm16(speech(0.3)))
            ws.transport.abort()
            for _ in range(200):
                if state.scheduler.sessions == 0:
                    break
                await asyncio.sleep(0.02)
            assert state.scheduler.sessions == 0
            assert (await client.get("/health")).status_code == 200

            # 200 sessions opened and closed: no session, task or scheduler entry left behind
            gc.collect()
            tasks_before = len(asyncio.all_tasks())
            refs = []
            original = Session.__init__

            def tracking_init(self, *args, **kwargs):
                original(self, *args, **kwargs)
                refs.append(weakref.ref(self))

            Session.__init__ = tracking_init
            try:
                for i in range(200):
                    ws, ready = await start(client, seed=i)
                    assert ready["type"] == "ready"
                    if i % 2:
                        await ws.send(pcm16(speech(0.01)))
                    await ws.close()
            finally:
                Session.__init__ = original
            for _ in range(200):
                if state.scheduler.sessions == 0 and not state.sessions:
                    break
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.1)
            gc.collect()
            assert len(refs) == 200 and sum(r() is not None for r in refs) == 0
            assert len(asyncio.all_tasks()) <= tasks_before
            assert state.scheduler.sessions == 0 and not state.sessions
            assert state.sessions_total == 201 and state.sessions_refused == 1

    asyncio.run(main())


def test_token_required_off_loopback_and_checked():
    with pytest.raises(FlashTalkError, match="not a loopback address"):
        check_config(ServeConfig(host="0.0.0.0"))
    check_config(ServeConfig(host="0.0.0.0", token="s3cret-token"))
    check_config(ServeConfig(host="::1"))
    assert cli.main(["serve", "--host", "0.0.0.0", "--port", "0"]) == 2
    assert cli.main(["serve", "--replicas", "2"]) == 2  # --replicas without --ray
    assert cli.main(["serve", "--ray", "--replicas", "0"]) == 2

    async def main():
        async with served(token="s3cret-token") as (client, state):
            assert (await client.get("/health")).status_code == 200
            assert (await client.get("/")).status_code == 200
            assert (await client.get("/metrics")).status_code == 401
            r = await client.get("/metrics", headers={"Authorization": "Bearer wrong-token"})
            assert r.status_code == 401
            r = await client.get("/metrics", headers={"Authorization": "Bearer s3cret-token"})
            assert r.status_code == 200
            with pytest.raises(websockets.InvalidStatus) as refused:
                await client.ws_connect()
            assert refused.value.response.status_code == 401  # the handshake answered like HTTP
            ws = await client.ws_connect("/ws?token=s3cret-token")
            await ws.send('{"type": "start", "portrait_id": "demo", "idle": false}')
            assert (await receive_json(ws))["type"] == "ready"
            await ws.close()
            ws = await client.ws_connect(headers={"Authorization": "Bearer s3cret-token"})
            await ws.send('{"type": "start", "portrait_id": "demo", "idle": false}')
            assert (await receive_json(ws))["type"] == "ready"
            await ws.close()

    asyncio.run(main())


# ------------------------------------------------------------------------------------ hardening


class FastBackend(PreviewBackend):
    """The preview's motion with a flat grey render: fast enough for real time on a loaded CPU."""

    def __init__(self) -> None:
        super().__init__("cpu")

    def render(self, items, bucket):
        import torch

        return torch.full((sum(len(c) for _, chunks in items for c in chunks), 3, 512, 512), 0.5)


@pytest.mark.parametrize(
    "message, code, reason",
    [
        ('{"type": "start", "portrait_id": "demo", "seed": ' + "9" * 5000 + "}", 1008, "not valid JSON"),
        (None, 1008, "integer of 400 digits"),  # controls with a 400-digit integer
        ('{"type": "controls", "controls": {"yaw": 1e999}}', 1008, "finite number"),
        ('{"type": "start", "portrait_id": "demo", "seed": 1, "x": "' + "a" * 200_000 + '"}', 1009, "exceeds"),
        (b"\x00" * (wire.MAX_CHUNK_BYTES + 2), 1009, "PCM chunk"),
        ('{"type": "end", "pad": "' + "b" * wire.MAX_COMMAND_BYTES + '"}', 1009, "command of"),
    ],
)
def test_hostile_messages_get_an_error_and_a_close_code_never_a_traceback(message, code, reason, caplog):
    if message is None:
        message = '{"type": "controls", "controls": {"yaw": ' + "7" * 400 + "}}"

    async def main():
        async with served(max_upload_bytes=50_000) as (client, state):
            ws = await client.ws_connect()
            if isinstance(message, bytes) or '"start"' not in message:
                await ws.send('{"type": "start", "portrait_id": "demo"}')
                assert (await receive_json(ws))["type"] == "ready"
            await ws.send(message)
            error = await receive_json(ws)
            assert error["type"] == "error" and reason in error["reason"] and len(error["reason"]) < 400, error
            assert await closed(ws) == code
            assert (await client.get("/health")).status_code == 200

    with caplog.at_level("DEBUG"):
        asyncio.run(main())
    assert not [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]


def test_uploads_read_the_whole_body_chunked_or_not():
    buf = io.BytesIO()
    rng = np.random.default_rng(0)
    face = np.asarray(Image.open(ASSETS_DIR / "portrait.jpg").convert("RGB").resize((900, 1080))).astype(np.int16)
    grain = rng.integers(-12, 13, face.shape)  # camera-like noise: a JPEG of several hundred KB
    Image.fromarray(np.clip(face + grain, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=95)
    photo = buf.getvalue()
    assert len(photo) > 300_000  # a few hundred KB: more than one read of the socket

    async def chunked(data: bytes, piece: int = 65_536):
        for i in range(0, len(data), piece):
            yield data[i : i + piece]
            await asyncio.sleep(0.005)

    async def main():
        async with served(max_upload_bytes=2_000_000) as (client, state):
            r = await client.post("/portraits", content=photo)
            assert r.status_code == 200 and r.json()["width"] == 900, r.text
            r = await client.post("/portraits", content=chunked(photo))  # Transfer-Encoding: chunked
            assert r.status_code == 200 and r.json()["width"] == 900, r.text
            r = await client.post("/portraits", content=chunked(b"x" * 2_100_000))
            assert r.status_code == 413 and "limit" in r.json()["error"]
            r = await client.post("/portraits", content=b"")
            assert r.status_code == 400 and "empty" in r.json()["error"]

    asyncio.run(main())


def _ws_frame(payload: bytes, opcode: int) -> bytes:
    """One masked client frame (RFC 6455), written by hand: the raw client below never reads."""
    n = len(payload)
    head = bytes([0x80 | opcode]) + (
        bytes([0x80 | n])
        if n < 126
        else bytes([0x80 | 126]) + n.to_bytes(2, "big")
        if n < 1 << 16
        else bytes([0x80 | 127]) + n.to_bytes(8, "big")
    )
    mask = b"\x01\x02\x03\x04"
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


async def _raw_ws(url: str):
    """A WebSocket client on a socket with a tiny receive buffer, that reads the handshake and then nothing."""
    import socket
    from urllib.parse import urlparse

    u = urlparse(url)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (u.hostname, u.port))
    reader, writer = await asyncio.open_connection(sock=sock, limit=4096)
    writer.write(
        f"GET /ws HTTP/1.1\r\nHost: {u.hostname}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    assert b" 101 " in await reader.readuntil(b"\r\n\r\n")
    return reader, writer


@pytest.mark.slow
def test_a_reader_that_never_reads_is_paused_not_buffered_and_freed_on_disconnect():
    async def main():
        async with served(FastBackend(), max_send_queue_bytes=1 << 20) as (client, state):
            reader, writer = await _raw_ws(client.url)
            writer.write(
                _ws_frame(
                    json.dumps(
                        {"type": "start", "portrait_id": "demo", "pace": "fast", "idle": False, "video": "raw"}
                    ).encode(),
                    1,
                )
            )
            refs = []
            for _ in range(100):
                refs = [weakref.ref(s) for s in state.sessions.values()]
                if refs:
                    break
                await asyncio.sleep(0.02)
            writer.write(_ws_frame(pcm16(speech(2.4)), 2))  # 60 raw frames, 47 MB, into a socket nobody reads
            writer.write(_ws_frame(b'{"type": "end"}', 1))
            for _ in range(600):
                if state.paused_sessions and state.scheduler.stats.paused_frames:
                    break
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.3)
            rendered = state.scheduler.stats.frames
            await asyncio.sleep(0.5)
            assert state.scheduler.stats.frames == rendered < 60  # paused: nothing more rendered for it
            assert sum(state.dropped.values()) == 0, state.dropped  # nothing rendered only to be dropped
            writer.transport.abort()
            for _ in range(200):
                if not state.sessions and state.scheduler.sessions == 0:
                    break
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.1)
            gc.collect()
            assert refs and all(r() is None for r in refs)  # the session (and its queues) are gone
            metrics = (await client.get("/metrics")).text
            assert "flashtalk_frames_paused_total " in metrics and "flashtalk_backpressure_pauses_total 1" in metrics

    asyncio.run(main())


class _FakeSession:
    """Frames handed to the pacer on a schedule (what the scheduler would have produced)."""

    epoch = 0

    def __init__(self) -> None:
        self.out, self.stats = [], SessionStats()

    def poll(self):
        out, self.out = self.out, []
        return out


class _FakeSocket:
    def __init__(self) -> None:
        self.sent: list[tuple[float, int]] = []  # (wall time, frame index)

    async def send_bytes(self, data: bytes) -> None:
        self.sent.append((time.monotonic(), wire.unpack_frame(data).index))

    async def send_text(self, data: str) -> None:
        pass


@pytest.mark.slow
@pytest.mark.parametrize("case", ["backlog at once", "renderer behind", "client paused"])
def test_realtime_pacing_catches_up_after_a_stall(case):
    """The pacer alone (real Stream.pace / Outbox / writer), fed on a schedule: 2 s on time, then a 1.5-s
    stall. "backlog at once": the event loop or the scheduler was held up and the frames of the stall
    come together; "renderer behind": they come late one by one, at 2x real time; "client paused": no
    audio came (idle off), then it goes on. The first two must be back at normal latency within 2 s
    (dropping what is late, or sending it at once), the last must be re-anchored (nothing dropped, paced at 25 FPS)."""
    from flashtalk.runtime.session import Frame
    from flashtalk.serving.state import ServerState
    from flashtalk.serving.stream import Stream

    lag = 0.05  # the producer's normal latency

    async def main():
        st = ServerState(ServeConfig(), PreviewBackend("cpu"))
        session, ws, wake = _FakeSession(), _FakeSocket(), asyncio.Event()
        start_msg = wire.Start(portrait=None, portrait_id="demo", quality=10)
        stream = Stream(ws, st, session, start_msg, "s1", wake, None)
        tasks = [asyncio.create_task(stream.pace()), asyncio.create_task(stream.write())]
        t0 = time.monotonic()
        image, audio = np.full((16, 16, 3), 128, np.uint8), np.zeros(HOP, np.float32)

        def produce(k: int) -> None:
            session.out.append(Frame(k, k / 25, image, audio, 0, False, lag))
            wake.set()

        async def at(t: float) -> None:
            await asyncio.sleep(max(0.0, t0 + t - time.monotonic()))

        async def client() -> None:  # the speech the client has sent so far (real time, or with a pause)
            while True:
                t = time.monotonic() - t0
                stream.media_in = t if case != "client paused" else min(t, 2.0) if t < 3.5 else t - 1.5
                await asyncio.sleep(0.01)

        tasks.append(asyncio.create_task(client()))

        for k in range(50):  # 2 s on time
            await at(k * 0.04 + lag)
            produce(k)
        if case == "backlog at once":
            await at(3.5 + lag)
            for k in range(50, 88):
                produce(k)
            resume, first = 88, 88
        elif case == "renderer behind":
            k = 50
            while k * 0.04 + lag < time.monotonic() - t0 - 0.02:  # late, at 2x real time until caught up
                await at(3.5 + lag + (k - 50) * 0.02)
                produce(k)
                k += 1
            resume, first = k, k
        else:  # client paused 1.5 s: the timeline goes on at frame 50
            resume, first = 50, 50
        shift = 1.5 if case == "client paused" else 0.0
        for k in range(resume, resume + 60):
            await at(k * 0.04 + lag + shift)
            produce(k)
        await asyncio.sleep(0.3)
        for t in tasks:
            t.cancel()
        st.close()
        delay = {k: ts - t0 - k * 0.04 - shift * (k >= first) for ts, k in ws.sent}  # behind its media time
        tail = [d for k, d in delay.items() if k >= first + 50]  # from 2 s after the stall on
        assert len(tail) >= 9 and max(tail) < lag + 0.15, sorted(delay.items())[-12:]
        if case == "client paused":
            assert stream.dropped["late"] == 0 and len(ws.sent) == 110
            times = [ts for ts, k in ws.sent if k >= 55]
            assert abs((times[-1] - times[0]) / (len(times) - 1) - 0.04) < 0.01  # paced, not rushed
        elif case == "renderer behind":  # each late frame alone: sent at once (faster than 25 FPS), none dropped
            assert stream.dropped["late"] == 0 and len(ws.sent) == resume + 60
        else:  # a backlog: what is late is dropped, and counted
            assert stream.dropped["late"] > 10 and len(ws.sent) + stream.dropped["late"] == resume + 60

    asyncio.run(main())


def test_an_odd_sample_rate_never_blocks_the_event_loop():
    """A start at a rate whose resampler is expensive to build (a prime near 192 kHz) is prepared off the
    event loop: the loop keeps ticking meanwhile, and the session then works."""
    import time

    async def main():
        async with served() as (client, state):
            gaps, stop = [], asyncio.Event()

            async def ticker():
                last = time.monotonic()
                while not stop.is_set():
                    await asyncio.sleep(0.01)
                    now = time.monotonic()
                    gaps.append(now - last)
                    last = now

            tick = asyncio.create_task(ticker())
            t0 = time.monotonic()
            ws, ready = await start(client, sample_rate=191_999)
            setup_s = time.monotonic() - t0
            assert ready["type"] == "ready", ready
            await ws.send(pcm16(speech(0.05, 191_999)))
            await ws.send('{"type": "end"}')
            frames, events = await collect(ws)
            assert len(frames) == 2 and events[-1]["type"] == "end"
            stop.set()
            await tick
            await ws.close()
            assert max(gaps) < 0.5, (max(gaps), setup_s)  # (the old server froze for the whole build)

    asyncio.run(main())
