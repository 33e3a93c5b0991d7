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

aiohttp = pytest.importorskip("aiohttp", reason="aiohttp is needed for flashtalk serve")
from aiohttp.test_utils import TestClient, TestServer  # noqa: E402
from PIL import Image  # noqa: E402

from flashtalk import cli  # noqa: E402
from flashtalk.errors import FlashTalkError  # noqa: E402
from flashtalk.runtime.session import HOP, PreviewStreamingBackend, Session  # noqa: E402
from flashtalk.serving import protocol  # noqa: E402
from flashtalk.serving.server import ASSETS_DIR, STATE_KEY, ServeConfig, check_config, create_app  # noqa: E402


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


@contextlib.asynccontextmanager
async def serving(backend=None, **config):
    app = create_app(ServeConfig(**config), backend=backend)
    async with TestClient(TestServer(app)) as client:
        yield client, app[STATE_KEY]


async def start(client, **fields):
    ws = await client.ws_connect("/ws")
    await ws.send_str(json.dumps({"type": "start", "portrait_id": "demo", "pace": "fast", "idle": False, **fields}))
    ready = await ws.receive_json(timeout=60)
    return ws, ready


async def collect(ws, until="end", timeout=120):
    frames, events = [], []
    while True:
        msg = await ws.receive(timeout=timeout)
        if msg.type == aiohttp.WSMsgType.BINARY:
            frames.append(protocol.unpack_frame(msg.data))
        elif msg.type == aiohttp.WSMsgType.TEXT:
            events.append(json.loads(msg.data))
            if events[-1]["type"] == until:
                return frames, events
        else:
            return frames, events


def test_stream_clip_frames_in_order_with_audio():
    async def main():
        async with serving() as (client, state):
            ws, ready = await start(client, sample_rate=22050)
            assert ready["type"] == "ready" and ready["fps"] == 25 and ready["backend"] == "preview"
            assert ready["lookahead_ms"] > 0  # the 22.05 -> 16 kHz resampler's filter delay
            audio = speech(0.2, 22050)
            for i in range(0, len(audio), 1000):  # odd chunk sizes
                await ws.send_bytes(pcm16(audio[i:i + 1000]))
            await ws.send_str('{"type": "end"}')
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
            metrics = await (await client.get("/metrics")).text()
            assert f"flashtalk_frames_sent_total {expected}" in metrics
            assert "flashtalk_frame_latency_seconds_count" in metrics and "flashtalk_sessions " in metrics
    asyncio.run(main())


def test_two_sessions_batched_and_interrupt():
    backend = SpyBackend()

    async def main():
        async with serving(backend) as (client, state):
            (a, _), (b, _) = await start(client), await start(client, seed=3)
            state.scheduler.stop()  # queue both clips before a tick so one tick sees both sessions
            for ws in (a, b):
                await ws.send_bytes(pcm16(speech(0.12)))
                await ws.send_str('{"type": "end"}')
            await asyncio.sleep(0.2)
            state.scheduler.start()
            (fa, ea), (fb, eb) = await asyncio.gather(collect(a), collect(b))
            assert len(fa) == len(fb) == 3 and ea[-1]["frames"] == eb[-1]["frames"] == 3
            assert max(backend.render_calls) == 2 and state.scheduler.stats.max_render_sessions == 2
            # interrupt: queued audio is dropped, the session goes on afterwards
            state.scheduler.stop()
            await a.send_bytes(pcm16(speech(2.0)))
            await a.send_str('{"type": "interrupt"}')
            await a.send_bytes(pcm16(speech(0.08)))
            await a.send_str('{"type": "end"}')
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
def test_bad_messages_close_the_session_not_the_server(first, then, reason):
    async def main():
        async with serving() as (client, state):
            ws = await client.ws_connect("/ws")
            await (ws.send_bytes(first) if isinstance(first, bytes) else ws.send_str(first))
            if then is not None:
                assert (await ws.receive_json(timeout=60))["type"] == "ready"
                await (ws.send_bytes(then) if isinstance(then, bytes) else ws.send_str(then))
            error = await ws.receive_json(timeout=60)
            assert error["type"] == "error" and reason in error["reason"]
            await ws.receive(timeout=10)
            assert ws.closed and ws.close_code == 1008
            assert (await client.get("/health")).status == 200
            for _ in range(100):  # the handler's cleanup runs right after the close
                if state.scheduler.sessions == 0:
                    break
                await asyncio.sleep(0.02)
            assert state.scheduler.sessions == 0
    asyncio.run(main())


def test_uploads_are_capped_and_checked():
    async def main():
        async with serving(max_upload_bytes=50_000, max_image_side=1000) as (client, state):
            r = await client.post("/portraits", data=b"x" * 60_000)
            assert r.status == 413 and "limit" in (await r.json())["error"]
            buf = io.BytesIO()
            Image.new("RGB", (1200, 64), (200, 150, 120)).save(buf, "PNG")
            r = await client.post("/portraits", data=buf.getvalue())
            assert r.status == 400 and "1200x64" in (await r.json())["error"]
            r = await client.post("/portraits", data=b"GIF89a not really")
            assert r.status == 400 and "not a readable image" in (await r.json())["error"]
            photo = (ASSETS_DIR / "portrait.jpg").read_bytes()
            r = await client.post("/portraits", data=photo)
            body = await r.json()
            assert r.status == 200 and body["width"] == 300 and body["height"] == 360
            ws, ready = await start(client, portrait_id=body["id"])
            assert ready["type"] == "ready"
            await ws.close()
            # the same photo inline (base64) in the start message
            ws = await client.ws_connect("/ws")
            await ws.send_str(json.dumps({"type": "start", "portrait": base64.b64encode(photo).decode()}))
            assert (await ws.receive_json(timeout=60))["type"] == "ready"
            await ws.close()
    asyncio.run(main())


def test_max_sessions_abrupt_disconnect_and_no_leaks():
    async def main():
        async with serving(max_sessions=1) as (client, state):
            ws, ready = await start(client)
            assert ready["type"] == "ready"
            second = await client.ws_connect("/ws")
            await second.send_str('{"type": "start", "portrait_id": "demo"}')
            refusal = await second.receive_json(timeout=60)
            assert refusal["type"] == "error" and "1 of 1 sessions" in refusal["reason"]
            await second.receive(timeout=10)
            assert second.close_code == 1013
            # abrupt disconnect mid-stream: drop the TCP connection without a close handshake
            await ws.send_bytes(pcm16(speech(0.3)))
            ws._response.connection.transport.abort()
            for _ in range(200):
                if state.scheduler.sessions == 0:
                    break
                await asyncio.sleep(0.02)
            assert state.scheduler.sessions == 0
            assert (await client.get("/health")).status == 200

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
                        await ws.send_bytes(pcm16(speech(0.01)))
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
        async with serving(token="s3cret-token") as (client, state):
            assert (await client.get("/health")).status == 200
            assert (await client.get("/")).status == 200
            assert (await client.get("/metrics")).status == 401
            r = await client.get("/metrics", headers={"Authorization": "Bearer wrong-token"})
            assert r.status == 401
            r = await client.get("/metrics", headers={"Authorization": "Bearer s3cret-token"})
            assert r.status == 200
            with pytest.raises(aiohttp.WSServerHandshakeError):
                await client.ws_connect("/ws")
            ws = await client.ws_connect("/ws?token=s3cret-token")
            await ws.send_str('{"type": "start", "portrait_id": "demo", "idle": false}')
            assert (await ws.receive_json(timeout=60))["type"] == "ready"
            await ws.close()
    asyncio.run(main())
