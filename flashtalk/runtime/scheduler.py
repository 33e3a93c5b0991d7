"""Many live sessions on one device: per tick, one batched motion call and one batched render call.

    scheduler = Scheduler(backend, max_sessions=16)
    scheduler.admit(session)      # AdmissionError (a FlashTalkError) past max_sessions
    scheduler.start()             # worker thread: ticks whenever a session has work, or every 40 ms
    ...
    scheduler.release(session); scheduler.stop()

A tick (`step`): every live session applies its queued commands; all sessions with whole frames of
audio (or idle silence) go to `backend.motion` together; then up to `buckets[-1]` pending frames are
taken round-robin, one frame per session per round, sessions whose oldest pending audio arrived first
going first (so a session with a long backlog cannot starve the others), and rendered by one
`backend.render` call at the smallest bucket that holds them. Then one batched finish for all frames of
the tick (`flashtalk.runtime.finish.finish`: one uint8 conversion, one watermark call per run of sessions with
the same mark, one pinned
asynchronous device-to-host copy on CUDA) and the frames are handed back to their sessions in order.
The scheduler talks to sessions through their public worker methods only.
"""

from __future__ import annotations

import bisect
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from flashtalk.constants import FPS
from flashtalk.errors import FlashTalkError
from flashtalk.runtime.backends import Backend
from flashtalk.runtime.finish import finish
from flashtalk.runtime.graphs import capture_sizes
from flashtalk.runtime.session import Session

if TYPE_CHECKING:
    pass

log = logging.getLogger(__name__)

DEFAULT_BUCKETS = capture_sizes(32)  # render batches of a tick: the one bucket list, up to 32 frames


class AdmissionError(FlashTalkError):
    """A session was refused: the scheduler is at its session limit."""


@dataclass
class TickStats:
    sessions: int = 0  # live sessions this tick
    motion_sessions: int = 0  # sessions in the batched motion call (0: no call)
    render_frames: int = 0  # frames in the batched render call (0: no call)
    render_sessions: int = 0  # sessions with frames in it
    bucket: int = 0  # batch size it ran at
    seconds: float = 0.0


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


class Scheduler:
    def __init__(
        self,
        backend: Backend,
        *,
        max_sessions: int = 16,
        buckets: Sequence[int] = DEFAULT_BUCKETS,
        clock: Callable[[], float] = time.monotonic,
        idle_interval_s: float = 1.0 / FPS,
    ) -> None:
        if isinstance(max_sessions, bool) or not isinstance(max_sessions, int) or max_sessions < 1:
            raise FlashTalkError(f"max_sessions must be a positive integer; got {max_sessions!r}")
        buckets = sorted(set(buckets))
        if not buckets or any(not isinstance(b, int) or b < 1 for b in buckets):
            raise FlashTalkError(f"buckets must be positive integers; got {buckets!r}")
        self.backend = backend
        self.max_sessions = max_sessions
        self.buckets = tuple(buckets)
        self.clock = clock
        self.idle_interval_s = idle_interval_s
        self.stats = SchedulerStats()
        self._sessions: list[Session] = []
        self._lock = threading.Lock()  # guards _sessions (admit / release from other threads)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._rr = 0  # round-robin offset, so ties rotate between ticks

    # ---- membership ----------------------------------------------------------------------------
    @property
    def sessions(self) -> int:
        return len(self._sessions)

    def admit(self, session: Session) -> None:
        with self._lock:
            if len(self._sessions) >= self.max_sessions:
                self.stats.refused += 1
                raise AdmissionError(
                    f"server is full: {len(self._sessions)} of {self.max_sessions} sessions are live; try again later"
                )
            self._sessions.append(session)
            self.stats.admitted += 1
        self.wake()

    def release(self, session: Session) -> None:
        session.close()
        with self._lock:
            if session in self._sessions:
                self._sessions.remove(session)

    def wake(self) -> None:
        """Tell the worker that a session has new input."""
        self._wake.set()

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

        takes = self._plan([s for s in live if s.pending_frames()])
        if takes:
            count = sum(b - a for _, parts in takes for _, a, b in parts)
            bucket = self.buckets[min(bisect.bisect_left(self.buckets, count), len(self.buckets) - 1)]
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
                s.finish(parts, pixels[start : start + n], done)
            tick.render_frames, tick.render_sessions, tick.bucket = count, len(takes), bucket
            st = self.stats
            st.render_calls += 1
            st.frames += count
            st.max_render_sessions = max(st.max_render_sessions, len(takes))
            st.bucket_counts[bucket] = st.bucket_counts.get(bucket, 0) + 1
        self.stats.ticks += 1
        tick.seconds = time.perf_counter() - t0
        return tick

    def _plan(self, ready: list[Session]) -> list[tuple[Session, list]]:
        """Round-robin over sessions (oldest pending audio first) until the largest bucket is full."""
        if not ready:
            return []
        order = sorted(range(len(ready)), key=lambda i: (ready[i].oldest_pending(), (i - self._rr) % len(ready)))
        self._rr += 1
        share = {i: 0 for i in order}
        budget = self.buckets[-1]
        left = {i: ready[i].pending_frames() for i in order}
        while budget > 0 and any(left.values()):
            for i in order:
                if budget and left[i]:
                    share[i] += 1
                    left[i] -= 1
                    budget -= 1
        return [(ready[i], ready[i].take(share[i])) for i in order if share[i]]

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


__all__ = ["AdmissionError", "DEFAULT_BUCKETS", "Scheduler", "SchedulerStats", "TickStats"]
