"""`flashtalk serve` over loopback with the preview backend: protocol, batching, interrupt, bad clients,
limits, tokens, and no leaks after many sessions. Clips are a few frames long (CPU preview ~0.1-0.3 s a frame)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gc
import io
import json
import weakref

import numpy as np
import pytest

pytest.importorskip("starlette", reason="flashtalk serve needs starlette + uvicorn: pip install 'flashtalk[serve]'")
httpx = pytest.importorskip("httpx", reason="the tests talk HTTP with httpx")
websockets = pytest.importorskip("websockets", reason="the tests talk WebSocket with websockets")
from PIL import Image  # noqa: E402
from websockets.asyncio.client import connect  # noqa: E402

from flashtalk import cli  # noqa: E402
from flashtalk.errors import FlashTalkError  # noqa: E402
from flashtalk.runtime.session import HOP, PreviewStreamingBackend, Session  # noqa: E402
from flashtalk.serving import protocol  # noqa: E402
from flashtalk.serving.server import ASSETS_DIR, ServeConfig, check_config, serving  # noqa: E402


class SpyBackend(PreviewStreamingBackend):
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
        return await connect(self.url.replace("http", "ws", 1) + path, max_size=None, additional_headers=headers,
                             open_timeout=30)


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
            frames.append(protocol.unpack_frame(msg))
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
                await ws.send(pcm16(audio[i:i + 1000]))
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


@pytest.mark.parametrize("first, then, reason", [
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
])
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

    async def main():
        async with served(token="s3cret-token") as (client, state):
            assert (await client.get("/health")).status_code == 200
            assert (await client.get("/")).status_code == 200
            assert (await client.get("/metrics")).status_code == 401
            r = await client.get("/metrics", headers={"Authorization": "Bearer wrong-token"})
            assert r.status_code == 401
            r = await client.get("/metrics", headers={"Authorization": "Bearer s3cret-token"})
            assert r.status_code == 200
            with pytest.raises(websockets.InvalidStatus):
                await client.ws_connect()
            ws = await client.ws_connect("/ws?token=s3cret-token")
            await ws.send('{"type": "start", "portrait_id": "demo", "idle": false}')
            assert (await receive_json(ws))["type"] == "ready"
            await ws.close()
            ws = await client.ws_connect(headers={"Authorization": "Bearer s3cret-token"})
            await ws.send('{"type": "start", "portrait_id": "demo", "idle": false}')
            assert (await receive_json(ws))["type"] == "ready"
            await ws.close()
    asyncio.run(main())
