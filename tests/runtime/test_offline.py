"""Offline rendering (`flashtalk.runtime.offline`): retiming to another output fps, a crash or a writer failure
mid-clip leaving no partial output, an encoder failure at flush reaching the producer instead of a deadlock, the
progress bar only on a terminal."""

from __future__ import annotations

import io
import threading

import numpy as np
import pytest

from flashtalk.cli.animate import demo_assets
from flashtalk.errors import FlashTalkError
from flashtalk.io.media import VideoWriter
from flashtalk.runtime.engine import Engine
from flashtalk.runtime.offline import FrameWriter, Progress, render
from tests.inputs import _decode, _GreyBackend

PORTRAIT, SPEECH = demo_assets()


def test_output_fps_retimes_the_clip(clips, tmp_path):
    clip = Engine(_GreyBackend()).prepare(PORTRAIT, clips["short"], crop="center", fps=50, watermark=False)
    assert clip.num_frames == 24
    stats = render(clip, tmp_path / "50fps.mp4", batch_size=5, progress=False)
    _, frames, audio_seconds = _decode(tmp_path / "50fps.mp4")
    assert stats.frames == 24 and len(frames) == 24 and abs(audio_seconds - 0.4) < 0.07


@pytest.mark.parametrize("frames_dir", [False, True])
def test_a_crash_mid_clip_leaves_no_partial_output(clips, tmp_path, frames_dir):
    clip = Engine(_GreyBackend(fail=True)).prepare(PORTRAIT, clips["short"], crop="center", watermark=False)
    out = tmp_path / ("frames" if frames_dir else "out.mp4")
    with pytest.raises(RuntimeError, match="renderer exploded"):
        render(clip, out, frames_dir=frames_dir, batch_size=4, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_a_writer_failure_reaches_the_caller(clips, tmp_path, monkeypatch):
    from flashtalk.io.media import VideoWriter

    def broken(self, frames):
        raise OSError("disk full")

    monkeypatch.setattr(VideoWriter, "write", broken)
    clip = Engine(_GreyBackend()).prepare(PORTRAIT, clips["short"], crop="center", watermark=False)
    with pytest.raises(OSError, match="disk full"):
        render(clip, tmp_path / "out.mp4", batch_size=4, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_progress_bar_only_on_a_terminal():
    stream = io.StringIO()
    bar = Progress(10, stream=stream)  # StringIO is not a TTY
    bar.update(10)
    bar.close()
    assert stream.getvalue() == ""
    bar = Progress(10, stream=stream, enabled=True)
    bar.update(4)
    bar.update(6)
    bar.close()
    text = stream.getvalue()
    assert "frames 10/10" in text and "fps" in text and "ETA 0:00" in text and text.endswith("\n")


class _Clip:
    def __init__(self, samples):
        self.samples, self.rate = samples, 16000


def test_an_encoder_failure_at_flush_ends_the_writer(tmp_path):
    """Huge samples after the last video frame make the AAC encoder fail in close(): the producer,
    waiting in finish(), must get the error instead of a deadlock."""
    x = (0.3 * np.sin(np.arange(32000) * 0.05)).astype(np.float32)
    x[-3000:] = 1e30
    writer = FrameWriter(VideoWriter(tmp_path / "w.mp4", width=64, height=64, fps=25, audio=_Clip(x), metadata={}), 2)
    writer.start()
    result = {}

    def produce():
        try:
            for _ in range(5):
                writer.put(np.zeros((5, 64, 64, 3), np.uint8))
            writer.finish()
            result["r"] = "finished"
        except BaseException as exc:
            result["r"] = exc

    t = threading.Thread(target=produce, daemon=True)
    t.start()
    t.join(60)
    assert not t.is_alive(), "writer deadlocked"
    assert isinstance(result["r"], FlashTalkError) and "audio encoder failed" in str(result["r"])
    assert "peaks at 1e+30" in str(result["r"])
