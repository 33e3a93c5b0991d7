"""Motion windows (`flashtalk.runtime.windows`) on the network backend (tiny preset, seeded weights, fp32, CPU).
Low-latency streaming (issue 17): the look-ahead it announces, when each frame comes out (ticks run by hand, a fixed
clock: independent of CPU speed), chunking invariance, interrupt / end / idle in both modes, motion continuity at
commit boundaries, and bad settings. Rendering is not what these tests check, so most of them stub the renderer's
pixels (`render_keypoints`) with a cheap function of the keypoints; the motion and composition are the real ones.

The graphed window sampler: its capture logic through the eager capture backend equals eager sampling, a failed
capture falls back to eager, and on a GPU the CUDA graph matches eager."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from flashtalk.constants import HOP
from flashtalk.controls.control_set import ControlSet
from flashtalk.errors import FlashTalkError
from flashtalk.runtime.backends import encode_portrait
from flashtalk.runtime.backends.network import NetworkBackend
from flashtalk.runtime.graphs import EagerBackend
from flashtalk.runtime.scheduler import Scheduler
from flashtalk.runtime.session import Event, Frame, Session
from flashtalk.runtime.windows import LOW_COMMIT, LOW_LOOKAHEAD, MAX_LOOKAHEAD_MS
from flashtalk.weights.bundle import seeded_networks
from tests.utils import assert_close

CONTINUITY_RATIO = 1.5  # issue 17: boundary / inside frame-to-frame motion change


@pytest.fixture(scope="module")
def nets():
    return seeded_networks("tiny")


def _image() -> np.ndarray:
    rng = np.random.default_rng(5)
    y, x = np.mgrid[0:512, 0:512] / 511.0
    return np.clip(np.stack([1 - y, x * y, 1 - x], -1) * 220 + rng.normal(0, 12, (512, 512, 3)), 0, 255).astype(
        np.uint8
    )


@pytest.fixture(scope="module")
def backend(nets):
    return NetworkBackend(nets, "cpu", seeded=True)


@pytest.fixture(scope="module")
def portrait(backend):
    return encode_portrait(backend, _image(), crop="center")


def speech(frames: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(frames * HOP) / 16000
    return (0.3 * np.sin(2 * np.pi * 180 * t) * np.sin(2 * np.pi * 3 * t) + 0.05 * rng.standard_normal(t.shape)).astype(
        np.float32
    )


class Recorder:
    """Wraps the backend: records each frame's driving keypoints; pixels from a cheap stub."""

    def __init__(self, backend: NetworkBackend, monkeypatch) -> None:
        self.keypoints: dict[int, torch.Tensor] = {}
        compose = backend.driving_keypoints

        def record(stream, motion):
            kp = compose(stream, motion)
            for f, k in zip(motion.frames.tolist(), kp):
                self.keypoints[f] = k.clone()
            return kp

        monkeypatch.setattr(backend, "driving_keypoints", record)
        monkeypatch.setattr(
            backend,
            "render_keypoints",
            lambda f_s, x_s, x_d: x_d.mean((1, 2)).sigmoid()[:, None, None, None].expand(-1, 3, 512, 512),
        )


def _session(backend, portrait, latency: str, *, idle: bool = False, clock=None, **kw) -> tuple[Scheduler, Session]:
    clock = clock or (lambda: 50.0)
    scheduler = Scheduler(backend, clock=clock)
    session = Session(
        backend,
        portrait,
        seed=7,
        sample_rate=16000,
        sample_format="f32le",
        idle=idle,
        watermark=False,
        clock=clock,
        latency=latency,
        **kw,
    )
    scheduler.admit(session)
    return scheduler, session


def _frames(items) -> list[Frame]:
    return [x for x in items if isinstance(x, Frame)]


def test_low_mode_announces_at_most_160_ms_and_emits_frames_as_their_audio_completes(backend, portrait, monkeypatch):
    Recorder(backend, monkeypatch)
    scheduler, session = _session(backend, portrait, "low")
    k, r = LOW_COMMIT, LOW_LOOKAHEAD
    assert session.lookahead_s * 1000 <= MAX_LOOKAHEAD_MS
    assert session.lookahead_s == pytest.approx((k - 1 + r) / 25)
    audio, out = speech(14), []
    for m in range(1, 15):  # one frame of audio per push, a tick after each
        session.push_audio(audio[(m - 1) * HOP : m * HOP])
        scheduler.step()
        out += _frames(session.poll())
        # the first window commits k - 2 new frames (2 leading silent frames), each later one k; a window
        # runs once r frames of audio past its last committed frame have arrived
        committed = max([0] + [c for c in range(k - 2, 15, k) if c + r <= m])
        assert len(out) == committed, (m, len(out))
        assert len(out) >= m - (k - 1 + r)  # frame i is out once audio up to i + the look-ahead is in
    assert [f.index for f in out] == list(range(len(out)))
    session.end_speech()
    scheduler.step()
    out += session.poll()
    assert [f.index for f in _frames(out)] == list(range(14))
    assert [x.kind for x in out if isinstance(x, Event)] == ["end"]


def _run_chunked(
    backend, portrait, latency: str, audio: np.ndarray, chunk: int, monkeypatch
) -> dict[int, torch.Tensor]:
    with monkeypatch.context() as mp:
        rec = Recorder(backend, mp)
        scheduler, session = _session(backend, portrait, latency)
        for start in range(0, len(audio), chunk):
            session.push_audio(audio[start : start + chunk])
            scheduler.step()
        session.end_speech()
        for _ in range(10):
            scheduler.step()
        frames = _frames(session.poll())
        assert [f.index for f in frames] == list(range(len(audio) // HOP))
        return rec.keypoints


@pytest.mark.parametrize("latency", ["low", "exact"])
def test_chunking_does_not_change_the_frames(backend, portrait, latency, monkeypatch):
    audio = speech(21, seed=3)
    small = _run_chunked(backend, portrait, latency, audio, 160, monkeypatch)  # 10-ms chunks
    large = _run_chunked(backend, portrait, latency, audio, 4000, monkeypatch)  # 250-ms chunks
    assert sorted(small) == sorted(large) == list(range(21))
    for f in small:
        assert torch.equal(small[f], large[f]), f


@pytest.mark.parametrize("latency", ["low", "exact"])
def test_interrupt_end_and_idle(backend, portrait, latency, monkeypatch):
    Recorder(backend, monkeypatch)
    now = [100.0]
    scheduler, session = _session(backend, portrait, latency, idle=True, clock=lambda: now[0])
    session.push_audio(speech(3))
    session.end_speech()
    scheduler.step()
    out = session.poll()
    assert [f.index for f in _frames(out)] == [0, 1, 2] and [e.kind for e in out if isinstance(e, Event)] == ["end"]
    session.push_audio(speech(2, seed=4))  # held for the look-ahead, then dropped by the interrupt
    scheduler.step()
    session.interrupt()
    scheduler.step()
    out = session.poll()
    assert not _frames(out) and [e.kind for e in out if isinstance(e, Event)] == ["interrupted"]
    now[0] += 0.5  # no audio: idle frames keep the timeline going, driven by silence
    scheduler.step()
    idle = _frames(session.poll())
    assert idle and all(f.idle for f in idle) and idle[0].index == 3
    assert [f.index for f in idle] == list(range(3, 3 + len(idle)))


def test_low_mode_motion_is_continuous_at_commit_boundaries(nets):
    """Frame-to-frame change of the generated motion at the boundary between two committed spans against
    inside them (seeded weights: this checks the schedule's conditioning, not lip-sync quality, which only
    the released weights can show)."""

    def motion(latency: str) -> torch.Tensor:
        b = NetworkBackend(nets, "cpu", seeded=True)
        stream = b.open(None, seed=11, latency=latency)
        (m,) = b.motion([(stream, speech(60, seed=9), {}, 60)])
        mo = m.motion
        return torch.cat([mo.exp.flatten(1), mo.R.flatten(1), mo.scale, mo.t], dim=1).double()

    low, exact = motion("low"), motion("exact")
    step = (low[1:] - low[:-1]).norm(dim=1)  # step[i]: frame i -> i + 1
    k = LOW_COMMIT
    boundary = torch.tensor([i for i in range(len(step)) if (i + 1 - (k - 2)) % k == 0 and i + 1 >= k - 2])
    inside = torch.tensor([i for i in range(len(step)) if i not in set(boundary.tolist())])
    ratio = (step[boundary].mean() / step[inside].mean()).item()
    assert ratio <= CONTINUITY_RATIO, ratio
    assert (low - exact).abs().max() > 0  # the low schedule really differs from the exact one


def test_bad_latency_settings_name_the_value_and_range(backend, portrait):
    with pytest.raises(FlashTalkError, match=r"latency must be one of low, exact; got 'fast'"):
        Session(backend, portrait, latency="fast")
    W = backend.cfg.n_motions
    with pytest.raises(FlashTalkError, match=rf"commit_frames must be an integer in \[1, {W - 2}\]; got 0"):
        Session(backend, portrait, latency="low", commit_frames=0)
    with pytest.raises(
        FlashTalkError, match=r"lookahead_frames must be an integer in \[0, 2\] with commit_frames 4; got 3"
    ):
        Session(backend, portrait, latency="low", lookahead_frames=3)
    with pytest.raises(FlashTalkError, match="apply to latency 'low' only"):
        Session(backend, portrait, latency="exact", commit_frames=2)


@pytest.fixture(scope="module")
def tiny_nets():
    return seeded_networks("tiny")


def _audio(nets, frames: int) -> np.ndarray:
    g = torch.Generator().manual_seed(3)
    return (0.1 * torch.randn(frames * HOP, generator=g)).numpy()


def _motions(backend: NetworkBackend, windows: int = 2) -> list:
    """Motion of `windows` windows of one stream through the backend's motion call: a whole first window,
    then a partial one (3 frames short) flushed as due."""
    W, stream = backend.cfg.n_motions, backend.open(None, seed=5)
    controls = ControlSet(pose_smoothing=0.9)
    sizes = [W - stream.lead] + [W - 3] * (windows - 1)
    audio = _audio(backend.nets, sum(sizes))
    out, done = [], 0
    for n in sizes:
        (m,) = backend.motion([(stream, audio[done * HOP : (done + n) * HOP], controls, n)])
        out.append(m.motion)
        done += n
    return out


@pytest.mark.parametrize("sampler,steps", [("dpmpp", 4), ("ddpm", None)])
def test_graphed_sampler_capture_logic_equals_eager(tiny_nets, sampler, steps):
    """Static buffers, up-front noise from the stream's generator, context / EMA updates: through the eager
    capture backend the motion is the eager sampler's exactly, window after window."""
    eager = _motions(NetworkBackend(tiny_nets, "cpu", sampler=sampler, steps=steps, graphs=False))
    graphed_backend = NetworkBackend(
        tiny_nets, "cpu", sampler=sampler, steps=steps, graphs=True, graph_backend=EagerBackend()
    )
    graphed = _motions(graphed_backend)
    ws = graphed_backend.window_sampler
    assert ws.runner is not None and ws.failed is None
    for a, b in zip(graphed, eager):
        for name in ("R", "exp", "scale", "t"):
            assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert graphed[1].R.shape[0] == tiny_nets.motion.cfg.n_motions - 3


class _FailingBackend:
    def capture(self, fn):
        raise RuntimeError("operation not permitted when stream is capturing")


def test_graphed_sampler_falls_back_to_eager_when_capture_fails(tiny_nets, caplog):
    eager = _motions(NetworkBackend(tiny_nets, "cpu", steps=3, graphs=False), 1)
    backend = NetworkBackend(tiny_nets, "cpu", steps=3, graphs=True, graph_backend=_FailingBackend())
    with caplog.at_level(logging.WARNING):
        got = _motions(backend, 1)
    assert backend.window_sampler.runner is None and "not permitted" in backend.window_sampler.failed
    assert "sampling eagerly" in caplog.text
    assert torch.equal(got[0].exp, eager[0].exp)


@pytest.mark.gpu
@pytest.mark.parametrize("sampler,steps", [("dpmpp", 10), ("ddim", 10), ("ddpm", None)])
def test_cuda_graphed_sampler_matches_eager(sampler, steps):
    nets = seeded_networks("tiny")
    eager = _motions(NetworkBackend(nets, "cuda", sampler=sampler, steps=steps, graphs=False))
    backend = NetworkBackend(nets, "cuda", sampler=sampler, steps=steps)  # graphs by default on CUDA
    graphed = _motions(backend)
    assert backend.window_sampler.failed is None, backend.window_sampler.failed
    for a, b in zip(graphed, eager):
        assert_close(a.exp, b.exp, atol=1e-4, rtol=1e-4)
        assert_close(a.R, b.R, atol=1e-4, rtol=1e-4)
