"""A scheduler tick of the network backend does no host sync but its one copy out (tiny preset, seeded
weights): on the CPU by counting calls of the sync entry points (patched), on CUDA under
`torch.cuda.set_sync_debug_mode("error")` (skips with a reason on the CPU)."""

from __future__ import annotations

import collections

import numpy as np
import pytest
import torch

from flashtalk.constants import HOP
from flashtalk.runtime.backends import encode_portrait
from flashtalk.runtime.backends.network import NetworkBackend
from flashtalk.runtime.scheduler import Scheduler
from flashtalk.runtime.session import Frame, Session
from flashtalk.weights.bundle import seeded_networks

# device -> host (or host-blocking) entry points, and host-data tensor creation (a host -> device copy on CUDA)
SYNC_POINTS = (
    "item",
    "tolist",
    "cpu",
    "numpy",
    "nonzero",
    "__bool__",
    "__int__",
    "__float__",
    "__index__",
    "new_tensor",
)
CREATE_POINTS = ("tensor", "as_tensor")


def _portrait_image() -> np.ndarray:
    rng = np.random.default_rng(2)
    y, x = np.mgrid[0:512, 0:512] / 511.0
    return np.clip(np.stack([x, y, (x + y) / 2], -1) * 220 + rng.normal(0, 12, (512, 512, 3)), 0, 255).astype(np.uint8)


def _speech(frames: int) -> np.ndarray:
    t = np.arange(frames * HOP) / 16000
    return (0.3 * np.sin(2 * np.pi * 180 * t) * np.sin(2 * np.pi * 3 * t)).astype(np.float32)


def _setup(device: str, controls: dict):
    backend = NetworkBackend(seeded_networks("tiny"), device, seeded=True)
    portrait = encode_portrait(backend, _portrait_image(), crop="center")
    now = [10.0]
    scheduler = Scheduler(backend, buckets=(1, 2, 4, 8), clock=lambda: now[0])
    sessions = [
        Session(
            backend,
            portrait,
            seed=s,
            sample_rate=16000,
            sample_format="f32le",
            idle=False,
            clock=lambda: now[0],
            controls=controls,
        )
        for s in (1, 2)
    ]
    for s in sessions:
        scheduler.admit(s)
    return scheduler, sessions


def _feed(sessions, frames: int) -> None:
    for s in sessions:
        s.push_audio(_speech(frames))
        s.end_speech()


class _Counter:
    def __init__(self, monkeypatch) -> None:
        self.counts: collections.Counter = collections.Counter()
        for name in SYNC_POINTS:
            self._wrap(monkeypatch, torch.Tensor, name)
        for name in CREATE_POINTS:
            self._wrap(monkeypatch, torch, name)
        self._wrap(monkeypatch, torch.cuda, "synchronize")

    def _wrap(self, monkeypatch, owner, name: str) -> None:
        original = getattr(owner, name)

        def counted(*args, **kwargs):
            self.counts[name] += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(owner, name, counted)


@pytest.mark.slow
@pytest.mark.parametrize(
    "controls", [{}, {"auto_blink": True, "yaw": 5.0, "emotion_weight": 0.5}], ids=["plain", "blinks-pose-emotion"]
)
def test_a_tick_syncs_once_for_its_copy_out(monkeypatch, controls):
    scheduler, sessions = _setup("cpu", controls)
    _feed(sessions, 3)
    scheduler.step()  # warm-up tick: encoder / first-window set-up outside the count
    assert all([isinstance(x, Frame) for x in s.poll()].count(True) == 3 for s in sessions)
    _feed(sessions, 9)  # a whole window and a flushed partial one per session
    counter = _Counter(monkeypatch)
    tick = scheduler.step()
    monkeypatch.undo()
    assert tick.motion_sessions == 2 and tick.render_frames == 8 and tick.render_sessions == 2
    assert dict(counter.counts) == {"numpy": 1}, dict(counter.counts)  # the batched uint8 copy out, once
    frames = [x for s in sessions for x in s.poll() if isinstance(x, Frame)]
    assert len(frames) == 8 and all(f.image.dtype == np.uint8 and f.image.std() > 1 for f in frames)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.set_sync_debug_mode)")
def test_a_cuda_tick_runs_under_sync_debug_error():
    scheduler, sessions = _setup("cuda", {"auto_blink": True})
    _feed(sessions, 12)
    scheduler.step()  # warm-up: graph capture, cuDNN plans, the blink table
    _feed(sessions, 9)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        tick = scheduler.step()  # the only wait is the event after the pinned asynchronous copy out
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert tick.render_frames > 0
