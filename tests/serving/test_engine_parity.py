"""One engine: `flashtalk animate --frames-dir` and a `flashtalk serve` session ("video": "raw") make the same
frames for the same portrait, audio and seed (tiny preset, seeded weights, fp32, CPU; both watermarked with
the default key). The server is really started (a subprocess on 127.0.0.1, stopped by its PID); it also checks
the serve default latency (low, <= 160 ms announced) and that bad latency settings close with 1008."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from flashtalk.cli import main
from flashtalk.cli.animate import demo_assets
from flashtalk.serving import wire
from tests.serve_process import flashtalk_serve

websockets_sync = pytest.importorskip("websockets.sync.client", reason="websockets is needed for the serve client")
websockets_exceptions = pytest.importorskip("websockets.exceptions", reason="websockets is needed")

FRAMES = 13  # 0.52 s of speech: two tiny-preset windows (8 frames each) and a zero-padded third
MAX_ABS, MAX_MEAN = 2 / 255, 0.05 / 255  # on [0, 1] pixels (issue 16's parity bound)


def _speech() -> np.ndarray:
    """int16 speech-like audio, FRAMES * 640 samples + a partial frame."""
    t = np.arange(FRAMES * 640 + 200) / 16000
    rng = np.random.default_rng(4)
    x = 0.3 * np.sin(2 * np.pi * 170 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t)) + 0.03 * rng.standard_normal(len(t))
    return (x * 32767).astype(np.int16)


@pytest.fixture(scope="module")
def server():
    """`flashtalk serve --seeded-weights --preset tiny` on a free loopback port; yields the port."""
    with flashtalk_serve("--seeded-weights", "--preset", "tiny") as srv:
        yield int(srv.base.rsplit(":", 1)[1])


def _start(port: int, **fields):
    ws = websockets_sync.connect(f"ws://127.0.0.1:{port}/ws", max_size=None, open_timeout=30)
    ws.send(
        json.dumps(
            {
                "type": "start",
                "portrait_id": "demo",
                "video": "raw",
                "pace": "fast",
                "idle": False,
                "sample_rate": 16000,
                "format": "s16le",
                **fields,
            }
        )
    )
    return ws, json.loads(ws.recv(timeout=120))


def _serve_frames(port: int, pcm: np.ndarray, seed: int) -> tuple[list[np.ndarray], dict]:
    frames = []
    ws, ready = _start(port, latency="exact", seed=seed)
    with ws:
        assert ready["type"] == "ready", ready
        ws.send(pcm.astype("<i2").tobytes())  # one message, then the end at once: no stall flush between
        ws.send(json.dumps({"type": "end"}))
        for _ in range(200):  # bounded: FRAMES + 1 frames and one end event
            msg = ws.recv(timeout=300)
            if isinstance(msg, bytes):
                f = wire.unpack_frame(msg)
                frames.append((f.index, np.frombuffer(f.image, np.uint8).reshape(512, 512, 3)))
            elif json.loads(msg)["type"] == "end":
                break
    return [f for _, f in sorted(frames, key=lambda x: x[0])], ready


@pytest.mark.slow
def test_animate_frames_equal_a_serve_session(server, tmp_path):
    pcm, seed = _speech(), 3
    wav = tmp_path / "speech.wav"
    sf.write(wav, pcm, 16000, subtype="PCM_16")
    out = tmp_path / "frames"
    rc = main(
        [
            "animate",
            str(demo_assets()[0]),
            str(wav),
            "-o",
            str(out),
            "--frames-dir",
            "--seeded-weights",
            "--preset",
            "tiny",
            "--device",
            "cpu",
            "--seed",
            str(seed),
            "-q",
        ]
    )
    assert rc == 0
    offline = [np.asarray(Image.open(p).convert("RGB")) for p in sorted(out.glob("*.png"))]
    streamed, ready = _serve_frames(server, pcm, seed)
    assert ready["backend"].startswith("network") and ready["latency"] == "exact"
    assert len(offline) == len(pcm) // 640 + 1  # offline adds one frame of trailing silence
    assert len(streamed) == -(-len(pcm) // 640)  # the session pads the partial last frame
    n = min(len(offline), len(streamed))
    a = np.stack(offline[:n]).astype(np.float64) / 255
    b = np.stack(streamed[:n]).astype(np.float64) / 255
    diff = np.abs(a - b)
    assert a.std() > 0.02  # real pictures, not a constant
    print(f"parity over {n} frames: max {diff.max() * 255:.3f}/255, mean {diff.mean() * 255:.5f}/255")
    assert diff.max() <= MAX_ABS and diff.mean() < MAX_MEAN, (diff.max() * 255, diff.mean() * 255)


def test_low_latency_is_the_serve_default_and_bad_settings_close_1008(server):
    ws, ready = _start(server)
    with ws:
        assert ready["latency"] == "low" and 0 < ready["lookahead_ms"] <= 160
    for fields, what in (
        ({"latency": "fast"}, "latency"),
        ({"latency": "low", "commit_frames": 99}, r"commit_frames"),
        ({"latency": "low", "lookahead_frames": -1}, "lookahead_frames"),
    ):
        ws, reply = _start(server, **fields)
        with ws:
            assert reply["type"] == "error" and what in reply["reason"], reply
            with pytest.raises(websockets_exceptions.ConnectionClosed) as closed:
                ws.recv(timeout=30)
        assert closed.value.rcvd.code == 1008
