"""Streaming Session + Scheduler on the weights-free preview (CPU): chunking equivalence with the offline
preview, batching of several sessions, fairness, interrupt, idle motion, controls, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flashtalk.constants import HOP
from flashtalk.errors import FlashTalkError
from flashtalk.models.preview import PreviewRenderer, preview_motion
from flashtalk.runtime.backends import encode_portrait
from flashtalk.runtime.backends.preview import PreviewBackend
from flashtalk.runtime.scheduler import AdmissionError, Scheduler
from flashtalk.runtime.session import Event, Frame, Session
from flashtalk.serving.state import ASSETS_DIR  # not .server: starlette is not needed to collect


@pytest.fixture(scope="module")
def backend():
    return PreviewBackend("cpu")


@pytest.fixture(scope="module")
def portrait(backend):
    return encode_portrait(backend, ASSETS_DIR / "portrait.jpg")


def speech(seconds: float, rate: int = 16000, seed: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    rng = np.random.default_rng(seed)
    return (
        (0.3 * np.sin(2 * np.pi * 180 * t) + 0.05 * rng.standard_normal(len(t)))
        * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))
    ).astype(np.float32)


def drain(scheduler, sessions, ticks=50):
    out = {id(s): [] for s in sessions}
    for _ in range(ticks):
        scheduler.step()
        for s in sessions:
            out[id(s)] += s.poll()
        if all(out[id(s)] and isinstance(out[id(s)][-1], Event) and out[id(s)][-1].kind == "end" for s in sessions):
            break
    return [out[id(s)] for s in sessions]


def test_chunked_stream_equals_offline_preview(backend, portrait):
    audio = speech(0.23)  # 5.75 frames -> 6, the last zero-padded
    session = Session(backend, portrait, seed=5, sample_format="f32le", idle=False, watermark=False)
    scheduler = Scheduler(backend, buckets=(1, 2, 4))
    scheduler.admit(session)
    for i in range(0, len(audio), 777):
        session.push_audio(audio[i : i + 777].tobytes())
    session.end_speech()
    (items,) = drain(scheduler, [session])
    frames = [x for x in items if isinstance(x, Frame)]
    assert items[-1] == Event("end", 6, 0) and len(frames) == 6
    assert [f.index for f in frames] == list(range(6)) and [f.pts for f in frames] == [i / 25 for i in range(6)]
    assert all(f.latency_s is not None and f.latency_s >= 0 and not f.idle for f in frames)
    np.testing.assert_array_equal(np.concatenate([f.audio for f in frames])[: len(audio)], audio)
    crop = torch.from_numpy(portrait.crop).permute(2, 0, 1).float().div(255)
    offline = PreviewRenderer(crop, layout=portrait.state.layout).render(preview_motion(audio, seed=5))
    expected = (offline.clamp(0, 1) * 255 + 0.5).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    np.testing.assert_array_equal(np.stack([f.image for f in frames]), expected)
    assert scheduler.stats.bucket_counts == {4: 1, 2: 1}  # 6 frames: a full bucket of 4, then 2


def test_sessions_share_render_calls_fairly(backend, portrait):
    calls = []

    class Spy(PreviewBackend):
        def render(self, items, bucket):
            calls.append([sum(len(c) for c in chunks) for _, chunks in items])
            return torch.full((sum(calls[-1]), 3, 512, 512), 0.5)  # scheduling only: skip the warp

    spy = Spy("cpu")
    scheduler = Scheduler(spy, buckets=(1, 2, 4, 8))
    sessions = [Session(spy, portrait, seed=i, idle=False, watermark=False) for i in range(3)]
    for s in sessions:
        scheduler.admit(s)
    sessions[0].push_audio(speech(1.0))  # a long backlog must not starve the short ones
    for s in sessions[1:]:
        s.push_audio(speech(0.12, seed=2))
    results = [[] for _ in sessions]
    for _ in range(10):
        scheduler.step()
        for r, s in zip(results, sessions):
            r += [x for x in s.poll() if isinstance(x, Frame)]
    assert sorted(calls[0]) == [2, 3, 3]  # 8 frames shared round-robin
    assert [len(r) for r in results] == [25, 3, 3]
    assert all([f.index for f in r] == list(range(len(r))) for r in results)
    assert scheduler.stats.max_render_sessions == 3


def test_interrupt_drops_queued_audio_and_frames(backend, portrait):
    session = Session(backend, portrait, idle=False, watermark=False)
    scheduler = Scheduler(backend, buckets=(1, 2))
    scheduler.admit(session)
    session.push_audio(speech(0.4))  # 10 frames of motion, 2 rendered per tick
    scheduler.step()
    first = session.poll()
    assert [f.index for f in first] == [0, 1]
    scheduler.step()  # frames 2, 3 rendered but not yet polled when the interrupt comes
    session.push_audio(speech(0.3))
    session.interrupt()
    session.push_audio(speech(0.04, seed=9))
    session.end_speech()
    items = [x for _ in range(4) for x in (scheduler.step(), session.poll())[1]]
    kinds = [x.kind if isinstance(x, Event) else x.index for x in items]
    assert kinds == ["interrupted", 10, "end"]  # nothing of the old audio; the timeline goes on at 10


def test_idle_motion_while_no_audio(backend, portrait):
    now = [100.0]
    # a long latency budget: batches not bounded by (fake-clock) deadlines, whatever this machine's render time
    session = Session(backend, portrait, idle=True, watermark=False, clock=lambda: now[0], budget_s=60.0)
    scheduler = Scheduler(backend, clock=lambda: now[0], budget_s=60.0)
    scheduler.admit(session)
    scheduler.step()
    assert session.poll() == []  # within the slack: nothing yet
    now[0] += 0.2 + 4 / 25 + 0.001
    scheduler.step()
    frames = session.poll()
    assert [f.index for f in frames] == [0, 1, 2, 3] and all(f.idle and f.latency_s is None for f in frames)
    assert all(not f.audio.any() for f in frames)
    now[0] += 1.0
    scheduler.step()
    later = session.poll()
    assert len(later) == 5  # capped per tick; the rest follows on later ticks
    moved = np.abs(later[-1].image.astype(int) - frames[0].image.astype(int)).mean()
    assert moved > 0.2  # the head keeps moving (seeded idle sway), it does not freeze


def test_controls_change_mid_stream(backend, portrait):
    audio = speech(0.16)
    sessions = [Session(backend, portrait, idle=False, watermark=False) for _ in range(2)]
    scheduler = Scheduler(backend)
    for s in sessions:
        scheduler.admit(s)
        s.push_audio(audio[:1280])
    scheduler.step()
    sessions[1].set_controls({"yaw": 15.0})
    for s in sessions:
        s.push_audio(audio[1280:])
    scheduler.step()
    a, b = ([f.image for f in s.poll()] for s in sessions)
    assert len(a) == len(b) == 4
    for i in range(2):
        np.testing.assert_array_equal(a[i], b[i])  # before the change: the same frames
    for i in range(2, 4):
        assert np.abs(a[i].astype(int) - b[i].astype(int)).mean() > 1.0  # after: head turned


def test_admission_and_bad_input(backend, portrait):
    scheduler = Scheduler(backend, max_sessions=1)
    scheduler.admit(Session(backend, portrait))
    with pytest.raises(AdmissionError, match="1 of 1 sessions"):
        scheduler.admit(Session(backend, portrait))
    s = Session(backend, portrait, sample_rate=48000)
    with pytest.raises(FlashTalkError, match="3 bytes is not a whole number of s16le"):
        s.push_audio(b"\x00\x01\x02")
    with pytest.raises(FlashTalkError, match="NaN"):
        s.push_audio(np.array([0.0, np.nan], np.float32))
    with pytest.raises(FlashTalkError, match="dtype must be int16"):
        s.push_audio(np.zeros(4, np.int32))
    with pytest.raises(FlashTalkError, match="1-D mono"):
        s.push_audio(np.zeros((2, 4), np.float32))
    with pytest.raises(FlashTalkError, match=r"unknown controls \['gaze'\]"):
        s.set_controls({"gaze": 1.0})
    with pytest.raises(FlashTalkError, match="expression_scale must be in"):
        s.set_controls({"expression_scale": 5})
    with pytest.raises(FlashTalkError, match="sample_format"):
        Session(backend, portrait, sample_format="mp3")
    with pytest.raises(FlashTalkError, match="sample_rate"):
        Session(backend, portrait, sample_rate=100)
    with pytest.raises(FlashTalkError, match="audio queue full"):
        s.push_audio(np.zeros(48000 * 31, np.float32))
    s.close()
    with pytest.raises(FlashTalkError, match="closed"):
        s.push_audio(b"")
    assert HOP == 640


def test_controls_changed_mid_stream_take_effect_on_the_next_frame():
    from flashtalk.cli.animate import demo_assets
    from flashtalk.constants import HOP
    from flashtalk.runtime.backends import encode_portrait
    from flashtalk.runtime.backends.preview import PreviewBackend
    from flashtalk.runtime.scheduler import Scheduler
    from flashtalk.runtime.session import Session

    backend = PreviewBackend("cpu")
    portrait = encode_portrait(backend, demo_assets()[0])
    audio = (np.random.default_rng(1).standard_normal(4 * HOP) * 0.05).astype(np.float32)
    sessions = [Session(backend, portrait, idle=False, watermark=False) for _ in range(2)]
    scheduler = Scheduler(backend)
    for s in sessions:
        scheduler.admit(s)
        s.push_audio(audio[: 2 * HOP])
    scheduler.step()
    sessions[1].set_controls({"head_distance": 1.3, "mouth_open": 100})
    for s in sessions:
        s.push_audio(audio[2 * HOP :])
    scheduler.step()
    a, b = ([f.image for f in s.poll()] for s in sessions)
    assert len(a) == len(b) == 4
    for i in range(2):
        np.testing.assert_array_equal(a[i], b[i])
    assert np.abs(a[2].astype(int) - b[2].astype(int)).mean() > 1.0  # the very next frame changed
    with pytest.raises(FlashTalkError, match="head_distance must be in"):
        sessions[0].set_controls({"head_distance": 3.0})
