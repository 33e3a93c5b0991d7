"""Deadline-aware scheduling, backpressure and admission by capacity (flashtalk.runtime.scheduler,
flashtalk.runtime.capacity), deterministic: a spy backend that renders grey at once, a fake clock for
the sessions' due times, and render times set in the scheduler's RenderClock with its EWMA weights at 0
(so the real, tiny times of the spy do not move the estimate)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flashtalk.constants import HOP
from flashtalk.runtime.backends import encode_portrait
from flashtalk.runtime.backends.preview import PreviewBackend
from flashtalk.runtime.capacity import RenderClock
from flashtalk.runtime.scheduler import AdmissionError, Scheduler
from flashtalk.runtime.session import MAX_OUTPUT_BACKLOG, Frame, Session
from flashtalk.serving.state import ASSETS_DIR

PER_FRAME_S = 0.01  # the spy's pretend render time: 100 frames/s at every bucket


class Spy(PreviewBackend):
    """The preview's motion, a grey render; records each render call as [(session stream, frames)]."""

    def __init__(self) -> None:
        super().__init__("cpu")
        self.calls: list[list[tuple[int, int]]] = []  # [(id of the stream, frames)] per call

    def render(self, items, bucket):
        self.calls.append([(id(stream), sum(len(c) for c in chunks)) for stream, chunks in items])
        return torch.full((sum(n for _, n in self.calls[-1]), 3, 512, 512), 0.5)


@pytest.fixture(scope="module")
def spy():
    return Spy()


@pytest.fixture(scope="module")
def portrait(spy):
    return encode_portrait(spy, ASSETS_DIR / "portrait.jpg")


def _scheduler(backend, now, **kw) -> Scheduler:
    sched = Scheduler(backend, clock=lambda: now[0], **kw)
    for b in sched.buckets:
        sched.render_clock.observe(b, b * PER_FRAME_S)
    sched.render_clock.weight = sched.render_clock.up_weight = 0.0  # keep the pretend times
    return sched


def _speech(seconds: float) -> np.ndarray:
    return (0.3 * np.sin(np.arange(int(seconds * 16000)) * 0.07)).astype(np.float32)


def test_render_clock_extrapolates_fits_and_measures_capacity():
    clock = RenderClock((1, 2, 4, 8, 16, 32))
    assert clock.seconds(4) is None and clock.capacity_fps(0.1) is None and clock.fit(0.01) == 32
    clock.observe(4, 0.04)
    assert clock.seconds(8) == pytest.approx(0.08) and clock.seconds(2) == pytest.approx(0.04)  # 2: no quicker
    assert clock.fit(0.1) == 8 and clock.fit(0.01) == 4  # none fits: the largest of the quickest
    clock.observe(1, 0.005)
    assert clock.fit(0.004) == 1 and clock.capacity_fps(0.1) == pytest.approx(200)  # 1 frame / 5 ms
    clock.observe(4, 0.08)  # slower: followed at weight 0.5 (0.04 + 0.5 * 0.04) ...
    assert clock.seconds(4) == pytest.approx(0.06) and clock.seconds(8) >= 0.06  # ... by the larger buckets too
    clock.observe(4, 0.02)  # quicker: followed at weight 0.2
    assert clock.seconds(4) == pytest.approx(0.052)


def test_a_live_frame_goes_first_in_a_batch_sized_to_its_deadline(spy, portrait):
    """A fast session with 4 s waiting and a live session with one frame: the live frame is in the next
    batch, and the batch is the largest that ends before half its budget (0.1 s at 10 ms a frame: 8);
    the fast session fills the rest and, when no live frame waits, still gets only batches that keep the
    live session's budget; without a live session, batches that keep the server's default budget (1 s)."""
    now = [10.0]
    sched = _scheduler(spy, now, budget_s=1.0)
    bulk = Session(spy, portrait, idle=False, watermark=False, pace="fast", clock=lambda: now[0])
    live = Session(spy, portrait, idle=False, watermark=False, budget_s=0.2, clock=lambda: now[0])
    sched.admit(bulk)
    sched.admit(live)
    bulk.push_audio(_speech(4.0))
    live.push_audio(_speech(0.04))
    spy.calls.clear()
    tick = sched.step()
    assert tick.render_frames == 8 and dict(spy.calls[0])[id(live.stream)] == 1, spy.calls
    for _ in range(5):  # 48 of the 101 frames
        now[0] += 0.05
        sched.step()
    assert all(sum(n for _, n in call) <= 8 for call in spy.calls)
    assert sched.stats.deadline_misses == {"realtime": 0, "fast": sched.stats.deadline_misses["fast"]}
    sched.release(live)  # no live session: bulk gets the largest bucket within 0.5 s
    spy.calls.clear()
    sched.step()
    assert sum(n for _, n in spy.calls[0]) == 32


def test_no_session_takes_more_than_its_share_while_a_live_one_waits(spy, portrait):
    """Two live sessions, one with 2 s of old audio (its frames are due earlier): the other's frame is still
    in the next batch; the backlog gets the rest of it, no more."""
    now = [0.0]
    sched = _scheduler(spy, now)
    a = Session(spy, portrait, idle=False, watermark=False, clock=lambda: now[0])
    b = Session(spy, portrait, idle=False, watermark=False, clock=lambda: now[0])
    sched.admit(a)
    sched.admit(b)
    a.push_audio(_speech(2.0))
    now[0] += 1.0
    b.push_audio(_speech(0.04))
    spy.calls.clear()
    sched.step()
    shares = dict(spy.calls[0])
    assert shares[id(b.stream)] == 1 and shares[id(a.stream)] == 7, shares


def test_a_paused_session_is_not_rendered_and_a_live_one_skips_to_the_present(spy, portrait):
    now = [0.0]
    sched = _scheduler(spy, now)
    live = Session(spy, portrait, idle=False, watermark=False, clock=lambda: now[0])
    bulk = Session(spy, portrait, idle=False, watermark=False, pace="fast", clock=lambda: now[0])
    for s in (live, bulk):
        sched.admit(s)
        s.set_paused(True)  # their clients are not reading
        s.push_audio(_speech(0.4))
    spy.calls.clear()
    for _ in range(5):
        now[0] += 0.1
        sched.step()
    assert spy.calls == []  # nothing rendered for a client that does not read
    assert sched.stats.paused_frames == 20 and live.stats.paused_frames == 10
    assert sched.stats.skipped_frames == live.stats.skipped_frames == 10  # overdue: skipped, unrendered
    for s in (live, bulk):
        s.set_paused(False)
        s.push_audio(_speech(0.08))
    for _ in range(5):
        now[0] += 0.1  # (the fast session's share refills with time: capacity less the live load)
        sched.step()
    got = {s: [f.index for f in s.poll() if isinstance(f, Frame)] for s in (live, bulk)}
    assert got[live] == [10, 11]  # the present: the skipped frames are gone from the timeline
    assert got[bulk] == list(range(12))  # a fast session resumes where it was
    assert sched.stats.paused_frames == 20  # each held frame counted once


def test_a_session_nobody_polls_stops_at_its_output_backlog(spy, portrait):
    """Frames not polled stop rendering at MAX_OUTPUT_BACKLOG: none rendered only to be dropped."""
    now = [0.0]
    sched = _scheduler(spy, now, budget_s=1.0)  # batches of 32
    s = Session(spy, portrait, idle=False, watermark=False, pace="fast", clock=lambda: now[0])
    sched.admit(s)
    s.push_audio(_speech(12.0))  # 300 frames
    for _ in range(40):
        sched.step()
    assert s.stats.frames_out == MAX_OUTPUT_BACKLOG and s.stats.dropped_frames == 0
    assert s.pending_frames() == 300 - MAX_OUTPUT_BACKLOG
    assert len([f for f in s.poll() if isinstance(f, Frame)]) == MAX_OUTPUT_BACKLOG
    for _ in range(10):
        sched.step()
    assert [f.index for f in s.poll()] == list(range(MAX_OUTPUT_BACKLOG, 300))  # resumed where it was


def test_admission_by_measured_capacity(spy, portrait):
    """100 frames/s measured, 20 % headroom: 3 live sessions (75 frames/s) fit, a 4th (100) does not; a
    fast one still does (it only fills what is left); max_sessions stays the hard cap."""
    now = [0.0]
    sched = _scheduler(spy, now, max_sessions=5)
    assert sched.capacity_fps == pytest.approx(1 / PER_FRAME_S)

    def session(pace="realtime"):
        return Session(spy, portrait, idle=False, watermark=False, pace=pace, clock=lambda: now[0])

    for _ in range(3):
        sched.admit(session())
    assert sched.committed_fps == 75
    with pytest.raises(AdmissionError, match="capacity") as exc:
        sched.admit(session())
    assert exc.value.reason == "capacity"
    sched.admit(session("fast"))
    sched.admit(session("fast"))
    with pytest.raises(AdmissionError, match="full") as exc:
        sched.admit(session("fast"))
    assert exc.value.reason == "full"
    assert sched.stats.refused_by == {"full": 1, "capacity": 1, "draining": 0}


def test_deadline_misses_are_counted_per_pace(spy, portrait):
    now = [0.0]
    sched = _scheduler(spy, now)
    live = Session(spy, portrait, idle=False, watermark=False, budget_s=0.1, clock=lambda: now[0])
    sched.admit(live)
    live.push_audio(_speech(0.08))
    now[0] += 0.2  # the frames' audio came 0.2 s ago: a budget of 0.1 s is already missed
    sched.step()
    assert sched.stats.deadline_misses["realtime"] == 2 == live.stats.deadline_misses
    live.push_audio(_speech(0.04)[:HOP])
    sched.step()
    assert sched.stats.deadline_misses["realtime"] == 2  # rendered at once: on time


def test_fast_sessions_get_only_the_capacity_left_over_by_live_ones(spy, portrait):
    """100 frames/s measured, one live session (25 committed): a fast session with a long backlog gets
    about 75 frames a second of pretend time, not every free slot."""
    now = [0.0]
    sched = _scheduler(spy, now, budget_s=1.0)
    live = Session(spy, portrait, idle=False, watermark=False, clock=lambda: now[0])
    bulk = Session(spy, portrait, idle=False, watermark=False, pace="fast", clock=lambda: now[0])
    sched.admit(live)
    sched.admit(bulk)
    bulk.push_audio(_speech(8.0))
    sched.step()  # the first batch: a full one
    first = bulk.stats.frames_out
    for _ in range(20):  # 1 s of pretend time, ticks 50 ms apart
        now[0] += 0.05
        sched.step()
    assert 70 <= bulk.stats.frames_out - first <= 76, bulk.stats.frames_out - first
    sched.release(live)
    before = bulk.stats.frames_out
    sched.step()  # no live session: a whole batch at once
    assert bulk.stats.frames_out - before == 32
