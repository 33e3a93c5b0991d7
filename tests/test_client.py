"""`flashtalk.client` against a real `flashtalk serve` subprocess (preview backend) on 127.0.0.1: a clip in
and its frames out, interrupt, refusal (1013), a bad token (401), a rejected start (1008), and the server
going away mid-stream. Clips are a few frames long (the CPU preview takes ~0.1-0.3 s a frame)."""

from __future__ import annotations

import asyncio
import io
import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("websockets", reason="flashtalk.client needs websockets (the 'client' extra)")

from PIL import Image

from flashtalk import client
from tests.serve_process import ASSETS, REPO, flashtalk_serve

TOKEN = "test-token-0123"
WAIT_S = 60.0  # bound on any single wait for the server


def tone(seconds: float, rate: int) -> np.ndarray:
    t = np.arange(int(round(seconds * rate))) / rate
    return (0.3 * np.sin(2 * np.pi * 190 * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))).astype(np.float32)


@pytest.fixture(scope="module")
def server():
    with flashtalk_serve("--token", TOKEN, "--max-sessions", "1") as srv:
        yield srv


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 4 * WAIT_S))


async def until_end(stream) -> tuple[list[client.Frame], list[client.Event]]:
    frames, events = [], []
    for _ in range(1000):
        item = await asyncio.wait_for(stream.recv(), WAIT_S)
        if isinstance(item, client.Frame):
            frames.append(item)
        else:
            events.append(item)
            if item.type == "end":
                return frames, events
    raise AssertionError("no end event within 1000 messages")


def test_clip_at_24khz_gives_its_frames_in_order(server):
    server.wait_sessions(0)
    x = tone(0.2, 24000)  # 4800 samples -> 3200 at 16 kHz -> exactly 5 frames

    async def main():
        portrait = (ASSETS / "portrait.jpg").read_bytes()
        async with client.connect(
            server.url, token=TOKEN, portrait=portrait, sample_rate=24000, pace="fast", idle=False
        ) as stream:
            r = stream.ready
            assert (r.fps, r.width, r.height, r.backend, r.video) == (25, 512, 512, "preview", "jpeg")
            assert r.lookahead_ms >= 0 and r.session
            await stream.send_audio(x[:2000])  # float32 array, sent as s16le
            await stream.send_audio((x[2000:] * 32767).astype("<i2").tobytes())  # raw bytes
            await stream.end()
            return await until_end(stream)

    frames, events = run(main())
    assert [f.index for f in frames] == [0, 1, 2, 3, 4]
    assert [f.pts for f in frames] == pytest.approx([i / 25 for i in range(5)])
    assert [e.type for e in events] == ["end"] and events[0].frames == 5
    assert not any(f.idle for f in frames)
    for f in frames:
        assert f.samples().shape == (640,)
        assert f.rgb().shape == (512, 512, 3)
    audio = np.concatenate([f.samples() for f in frames]).astype(np.float32) / 32768
    assert np.sqrt(np.mean(audio[200:-200] ** 2)) > 0.1  # the tone drove the frames, not silence
    first, last = frames[0].rgb().astype(int), frames[-1].rgb().astype(int)
    assert np.abs(first - last).mean() > 0.5  # the head moved


def test_interrupt_drops_the_old_speech_and_goes_on(server):
    server.wait_sessions(0)

    async def main():
        async with client.connect(
            server.url, token=TOKEN, portrait_id="demo", pace="fast", idle=False, video="raw"
        ) as stream:
            await stream.send_audio(tone(1.0, 16000))  # 25 frames queued
            await stream.end()
            first = await asyncio.wait_for(stream.recv(), WAIT_S)
            assert isinstance(first, client.Frame) and first.rgb().shape == (512, 512, 3)
            await stream.interrupt()
            after = await asyncio.wait_for(stream.recv(), WAIT_S)
            await stream.send_audio(tone(0.08, 16000))  # 2 new frames
            await stream.end()
            frames, events = await until_end(stream)
            return first, after, frames, events

    first, after, frames, events = run(main())
    assert isinstance(after, client.Event) and after.type == "interrupted"  # no frame of the old speech
    assert len(frames) == 2 and frames[0].index > first.index and frames[1].index == frames[0].index + 1
    assert all(f.epoch == 1 for f in frames)
    assert events[-1].frames == frames[-1].index + 1


def test_refused_when_full_and_bad_token(server):
    server.wait_sessions(0)

    async def main():
        async with client.connect(server.url, token=TOKEN, portrait_id="demo", idle=False):
            server.wait_sessions(1)
            with pytest.raises(client.Refused) as refused:
                await client.connect(server.url, token=TOKEN, portrait_id="demo")
        with pytest.raises(client.AuthError) as wrong:
            await client.connect(server.url, token="wrong-token-xyz", portrait_id="demo")
        with pytest.raises(client.AuthError):
            await client.connect(server.url, portrait_id="demo")
        return refused.value, wrong.value

    refused, wrong = run(main())
    assert refused.code == 1013 and "session" in str(refused)
    assert wrong.code == 401


def test_rejected_start_names_the_bad_value(server):
    server.wait_sessions(0)

    async def main():
        with pytest.raises(client.Rejected) as bad_control:
            await client.connect(server.url, token=TOKEN, portrait_id="demo", controls={"yaw": 1000})
        with pytest.raises(client.Rejected) as bad_image:
            await client.connect(server.url, token=TOKEN, portrait=b"not an image")
        with pytest.raises(client.Rejected) as bad_latency:  # passed through to the server, which judges it
            await client.connect(server.url, token=TOKEN, portrait_id="demo", latency="bogus")
        return bad_control.value, bad_image.value, bad_latency.value

    bad_control, bad_image, bad_latency = run(main())
    assert bad_latency.code == 1008 and "latency" in str(bad_latency)
    assert bad_control.code == 1008 and "yaw" in str(bad_control)
    assert bad_image.code == 1008 and "image" in str(bad_image)


def test_client_side_errors_are_one_line():
    with pytest.raises(client.FlashTalkError, match="exactly one of portrait"):
        client.connect("ws://127.0.0.1:1/ws")
    with pytest.raises(client.FlashTalkError, match="format must be one of"):
        client.connect("ws://127.0.0.1:1/ws", portrait_id="demo", format="mp3")
    with pytest.raises(client.FlashTalkError, match="is not a file"):
        client.connect("ws://127.0.0.1:1/ws", portrait="/nonexistent/face.jpg")
    with pytest.raises(client.FlashTalkError, match="must look like ws://"):
        run(client.connect("ftp://127.0.0.1/ws", portrait_id="demo"))


def test_server_gone_mid_stream_raises_disconnected():
    with flashtalk_serve() as srv:

        async def main():
            stream = await client.connect(srv.url, portrait_id="demo", pace="fast", idle=False)
            await stream.send_audio(tone(1.0, 16000))
            first = await asyncio.wait_for(stream.recv(), WAIT_S)
            assert isinstance(first, client.Frame)
            srv.kill()
            with pytest.raises(client.Disconnected) as lost:
                for _ in range(100):  # frames already on the way may still arrive, then the loss
                    await asyncio.wait_for(stream.recv(), WAIT_S)
            with pytest.raises(client.Disconnected):
                await stream.send_audio(tone(0.04, 16000))
            await stream.stop()
            with pytest.raises(client.Disconnected, match="could not connect"):
                await client.connect(srv.url, portrait_id="demo", open_timeout=5)
            return lost.value

        lost = run(main())
    assert lost.code != 1000


def test_jpeg_frames_decode_like_pillow():
    img = Image.new("RGB", (8, 4), (200, 10, 30))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=95)
    f = client.Frame(0, 0.0, b"", buf.getvalue(), False, "jpeg", 8, 4, 0)
    assert f.rgb().shape == (4, 8, 3)
    raw = client.Frame(0, 0.0, b"", bytes(range(96)), False, "raw", 8, 4, 0)
    assert raw.rgb()[0, 1].tolist() == [3, 4, 5]


def test_pcm_adapter_example_runs_against_the_server(server):
    server.wait_sessions(0)
    out = subprocess.run(
        [
            sys.executable,
            str(REPO / "examples" / "pcm_adapter.py"),
            "--url",
            server.url,
            "--token",
            TOKEN,
            "--seconds",
            "0.2",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=4 * WAIT_S,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "backend preview" in out.stdout and "\nend: " in out.stdout
