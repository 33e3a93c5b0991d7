"""Many live sessions on one device: per tick, one batched motion call and one batched render call.

    scheduler = Scheduler(backend, max_sessions=16)
    scheduler.admit(session)      # AdmissionError (reason "full" or "capacity") past the limits
    scheduler.start()             # worker thread: ticks whenever a session has work, or every 40 ms
    ...
    scheduler.release(session); scheduler.stop()

A tick (`step`): every live session applies its queued commands; all sessions with whole frames of
audio (or idle silence) go to `backend.motion` together; paused sessions (a client not reading) are
held (`Session.hold`: nothing of theirs is rendered; realtime ones skip to the present); then the render
batch is planned and run by one `backend.render` call, one batched finish for all frames of the tick
(`flashtalk.runtime.finish.finish`: uint8, one watermark call per run of sessions with the same mark, one
pinned asynchronous device-to-host copy on CUDA), and the frames are handed back to their sessions.
The scheduler talks to sessions through their public worker methods only.

The plan (deadlines first, bulk in what is left):
- the batch size: the largest bucket that the measured render time (`RenderClock`, an EWMA per bucket)
  says finishes before the earliest due frame of a realtime session, and never longer than half the
  smallest latency budget of the live realtime sessions and of the server's default (a frame of a session
  that arrives or starts while it runs still has the other half);
- realtime sessions' frames first: one frame per session per round, the session whose next frame is due
  first going first, until the batch is full or they have none (so no session takes more than an equal
  share while another live one has a frame waiting); then fast-paced sessions the same way in what is
  left, taking turns (the first turn rotates every tick), and while realtime sessions are live no faster
  than the measured capacity left over their committed load (a token bucket).
Admission: a realtime session is refused (reason "capacity") when the committed load, realtime sessions
x 25 FPS with it, would pass (1 - headroom) x the measured capacity (`RenderClock.capacity_fps` at batches
of at most half the budget); the first live session is always taken (a server that would refuse every
one serves no one); fast sessions only count against `max_sessions` (reason "full").
"""

from __future__ import annotations

import bisect
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from flashtalk.constants import DEFAULT_BUDGET_S, DEFAULT_HEADROOM, FPS, HOP
from flashtalk.errors import FlashTalkError
from flashtalk.runtime.backends import Backend, EncodedPortrait
from flashtalk.runtime.capacity import RenderClock
from flashtalk.runtime.finish import finish
from flashtalk.runtime.graphs import capture_sizes
from flashtalk.runtime.session import PACES, Session

log = logging.getLogger(__name__)

DEFAULT_BUCKETS = capture_sizes(32)  # render batches of a tick: the one bucket list, up to 32 frames
REFUSALS = ("full", "capacity", "draining")
CALIBRATE_MAX_S = 0.25  # calibration stops at the first bucket whose batch takes longer


class AdmissionError(FlashTalkError):
    """A session was refused: `reason` is "full" (max_sessions), "capacity" (the committed realtime load
    would pass the measured capacity) or "draining" (the server is going away)."""

    def __init__(self, message: str, reason: str = "full") -> None:
        super().__init__(message)
        self.reason = reason


@dataclass
class TickStats:
    sessions: int = 0  # live sessions this tick
    motion_sessions: int = 0  # sessions in the batched motion call (0: no call)
    render_frames: int = 0  # frames in the batched render call (0: no call)
    render_sessions: int = 0  # sessions with frames in it
    bucket: int = 0  # batch size it ran at
    seconds: float = 0.0


def _by_pace() -> dict[str, int]:
    return dict.fromkeys(PACES, 0)


@dataclass
class SchedulerStats:
    ticks: int = 0
    motion_calls: int = 0
    render_calls: int = 0
    frames: int = 0
    refused: int = 0
    admitted: int = 0
    max_render_sessions: int = 0  # most sessions batched into one render call so far
    bucket_counts: dict[int, int] = field(default_factory=dict)
    errors: int = 0
    frames_by_pace: dict[str, int] = field(default_factory=_by_pace)  # frames rendered
    deadline_misses: dict[str, int] = field(default_factory=_by_pace)  # ... after their due time
    paused_frames: int = 0  # frames held back (once each) because their client was not reading
    skipped_frames: int = 0  # realtime frames dropped unrendered while paused (skipped to the present)
    refused_by: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REFUSALS, 0))


class Scheduler:
    def __init__(
        self,
        backend: Backend,
        *,
        max_sessions: int = 16,
        buckets: Sequence[int] = DEFAULT_BUCKETS,
        clock: Callable[[], float] = time.monotonic,
        idle_interval_s: float = 1.0 / FPS,
        budget_s: float = DEFAULT_BUDGET_S,
        headroom: float = DEFAULT_HEADROOM,
    ) -> None:
        if isinstance(max_sessions, bool) or not isinstance(max_sessions, int) or max_sessions < 1:
            raise FlashTalkError(f"max_sessions must be a positive integer; got {max_sessions!r}")
        buckets = sorted(set(buckets))
        if not buckets or any(not isinstance(b, int) or b < 1 for b in buckets):
            raise FlashTalkError(f"buckets must be positive integers; got {buckets!r}")
        if not 0 < budget_s <= 60:
            raise FlashTalkError(f"budget_s must be in (0, 60] seconds; got {budget_s!r}")
        if not 0 <= headroom < 1:
            raise FlashTalkError(f"headroom must be in [0, 1); got {headroom!r}")
        self.backend = backend
        self.max_sessions = max_sessions
        self.buckets = tuple(buckets)
        self.clock = clock
        self.idle_interval_s = idle_interval_s
        self.budget_s, self.headroom = float(budget_s), float(headroom)
        self.render_clock = RenderClock(self.buckets)
        self.stats = SchedulerStats()
        self._sessions: list[Session] = []
        self._lock = threading.Lock()  # guards _sessions (admit / release from other threads)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._rr = 0  # round-robin offset, so ties rotate between ticks
        self._bulk_tokens, self._bulk_at = float(self.buckets[-1]), None  # fast sessions' share (see _plan)

    # ---- membership and capacity ---------------------------------------------------------------
    @property
    def sessions(self) -> int:
        return len(self._sessions)

    @property
    def realtime_sessions(self) -> int:
        return sum(s.realtime for s in self._sessions)

    @property
    def committed_fps(self) -> float:
        """The realtime load admitted: live realtime sessions x 25 FPS."""
        return self.realtime_sessions * FPS

    @property
    def capacity_fps(self) -> float | None:
        """Measured frames per second at batches that keep the budget (None: nothing measured yet)."""
        return self.render_clock.capacity_fps(self.budget_s / 2)

    def check_admission(self, realtime: bool = True) -> None:
        """Raise AdmissionError if a new session (realtime or fast) would be refused now."""
        n = len(self._sessions)
        if n >= self.max_sessions:
            raise AdmissionError(
                f"server is full: {n} of {self.max_sessions} sessions are live; try again later", "full"
            )
        capacity = self.capacity_fps
        if realtime and capacity is not None and self.realtime_sessions:  # one live session is always taken
            committed = (self.realtime_sessions + 1) * FPS
            if committed > (1 - self.headroom) * capacity:
                raise AdmissionError(
                    f"server at capacity: {self.realtime_sessions + 1} live sessions would need {committed:g} "
                    f"frames/s; it renders about {capacity:.0f} ({self.headroom:.0%} kept free); try again later",
                    "capacity",
                )

    def admit(self, session: Session) -> None:
        with self._lock:
            try:
                self.check_admission(session.realtime)
            except AdmissionError as exc:
                self.stats.refused += 1
                self.stats.refused_by[exc.reason] += 1
                raise
            self._sessions.append(session)
            self.stats.admitted += 1
        self.wake()

    def release(self, session: Session) -> None:
        session.close()
        with self._lock:
            if session in self._sessions:
                self._sessions.remove(session)

    def wake(self) -> None:
        """Tell the worker that a session has new input (or its client drained its queue)."""
        self._wake.set()

    def calibrate(self, portrait: EncodedPortrait, max_seconds: float = CALIBRATE_MAX_S) -> None:
        """Measure the render time of the buckets, smallest first, on a throwaway stream of silence, until
        one batch takes longer than `max_seconds` (a GPU measures every bucket in moments; a CPU stops
        early). Call it before `start`: admission then has a capacity estimate from the first session."""
        stream = self.backend.open(portrait.state, seed=0, latency="low")
        n = self.buckets[-1]
        (chunk,) = self.backend.motion([(stream, np.zeros(n * HOP, np.float32), {}, n)])
        for b in (b for b in self.buckets if b <= len(chunk)):
            for warm in (False, True):  # the first call of a size warms it up: the second is measured
                t0 = time.perf_counter()
                finish(self.backend.render([(stream, [chunk.slice(0, b)])], b), [(0, b, None)])
                seconds = time.perf_counter() - t0
                if warm:
                    self.render_clock.observe(b, seconds)
                    if seconds > max_seconds:
                        return

    # ---- one tick ------------------------------------------------------------------------------
    def step(self) -> TickStats:
        t0 = time.perf_counter()
        with self._lock:
            live = [s for s in self._sessions if not s.closed]
        now = self.clock()
        tick = TickStats(sessions=len(live))
        for s in live:
            s.apply_commands(now)

        requests = [(s, r) for s in live if (r := s.motion_request()) is not None]
        if requests:
            motions = self.backend.motion([r for _, r in requests])
            for (s, _), m in zip(requests, motions):
                s.accept_motion(m)
            tick.motion_sessions = len(requests)
            self.stats.motion_calls += 1

        st = self.stats
        for s in live:
            if s.paused:
                held, skipped = s.hold(now)
                st.paused_frames += held
                st.skipped_frames += skipped
        takes, bucket = self._plan([s for s in live if s.room() and s.pending_frames()], live, now)
        if takes:
            t1 = time.perf_counter()
            count = sum(b - a for _, parts in takes for _, a, b in parts)
            items = [(s.stream, [p.motion.slice(a, b) for p, a, b in parts]) for s, parts in takes]
            images = self.backend.render(items, bucket)
            groups, row = [], 0
            for s, parts in takes:
                n = sum(b - a for _, a, b in parts)
                groups.append((row, n, s.mark))
                row += n
            pixels = finish(images, groups)
            done = self.clock()
            for (start, n, _), (s, parts) in zip(groups, takes):
                st.deadline_misses[s.pace] += s.finish(parts, pixels[start : start + n], done)
                st.frames_by_pace[s.pace] += n
            self.render_clock.observe(bucket, time.perf_counter() - t1)
            tick.render_frames, tick.render_sessions, tick.bucket = count, len(takes), bucket
            st.render_calls += 1
            st.frames += count
            st.max_render_sessions = max(st.max_render_sessions, len(takes))
            st.bucket_counts[bucket] = st.bucket_counts.get(bucket, 0) + 1
        self.stats.ticks += 1
        tick.seconds = time.perf_counter() - t0
        return tick

    def _plan(self, ready: list[Session], live: list[Session], now: float) -> tuple[list[tuple[Session, list]], int]:
        """The batch (see the module docstring): [(session, its slices)] and the bucket to render it at."""
        if not ready:
            return [], 0
        slack = min([self.budget_s, *(s.budget_s for s in live if s.realtime)]) / 2
        dues = [d - now for s in ready if s.realtime and (d := s.next_due()) > now]
        limit = self.render_clock.fit(min([slack, *dues]))
        share = self._share([s for s in ready if s.realtime], limit, by_due=True)
        left = limit - sum(share.values())
        bulk = self._share([s for s in ready if not s.realtime], min(left, self._bulk_allowance(now, limit)), False)
        share.update(bulk)
        left -= sum(bulk.values())
        self._bulk_tokens -= sum(bulk.values())
        self._rr += 1
        takes = [(s, s.take(share[id(s)])) for s in ready if share.get(id(s))]
        count = limit - left
        return takes, self.buckets[min(bisect.bisect_left(self.buckets, count), len(self.buckets) - 1)]

    def _bulk_allowance(self, now: float, limit: int) -> int:
        """Frames fast sessions may take now: while realtime sessions are live, what the measured capacity
        leaves over their committed load, as a token bucket (a batch's worth at most); else any."""
        committed, capacity = self.committed_fps, self.capacity_fps
        last, self._bulk_at = self._bulk_at, now
        if not committed or capacity is None:
            self._bulk_tokens = float(self.buckets[-1])
            return limit
        rate = max(0.0, capacity - committed)
        self._bulk_tokens = min(self._bulk_tokens + rate * (now - (last if last is not None else now)), limit)
        return int(self._bulk_tokens)

    def _share(self, group: list[Session], budget: int, by_due: bool) -> dict[int, int]:
        """Round-robin, one frame per session per round: next due first (by_due) or in turns that rotate
        between ticks (so bulk sessions take turns even when a batch holds one frame)."""
        if not group or budget <= 0:
            return {}
        turn = [(i - self._rr) % len(group) for i in range(len(group))]
        order = sorted(range(len(group)), key=lambda i: (group[i].next_due() if by_due else 0, turn[i]))
        left = {i: min(group[i].pending_frames(), group[i].room()) for i in order}
        share = dict.fromkeys(order, 0)
        while budget > 0 and any(left.values()):
            for i in order:
                if budget and left[i]:
                    share[i] += 1
                    left[i] -= 1
                    budget -= 1
        return {id(group[i]): n for i, n in share.items() if n}

    # ---- worker thread -------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="flashtalk-scheduler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10.0)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.idle_interval_s)
            self._wake.clear()
            if self._stop.is_set():
                break
            try:
                tick = self.step()
            except Exception:  # a backend failure must not kill the worker: log it, count it, go on
                log.exception("scheduler tick failed")
                self.stats.errors += 1
                continue
            if tick.render_frames or tick.motion_sessions:
                self._wake.set()  # more may be pending: go again without waiting


__all__ = [
    "AdmissionError",
    "DEFAULT_BUCKETS",
    "REFUSALS",
    "Scheduler",
    "SchedulerStats",
    "TickStats",
]
