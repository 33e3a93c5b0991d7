"""What the renderer can do, measured: seconds per render batch by bucket (an EWMA of the ticks that ran at
that bucket), and from it the batch that meets a deadline and the frames per second the device sustains.

    clock = RenderClock((1, 2, 4, 8, 16, 32))
    clock.observe(bucket=4, seconds=0.03)      # after each tick's render + finish
    clock.seconds(8)                           # 0.06: unmeasured buckets scale from the nearest measured one
    clock.fit(0.05)                            # 4: the largest bucket expected to finish within 50 ms
    clock.capacity_fps(max_batch_s=0.1)        # ~133: the best measured rate at a batch of at most 0.1 s

An unmeasured bucket larger than a measured one is assumed to run at the measured one's rate (linear in
frames: batching never assumed to help until seen); a smaller one no faster than the measured one (a lower
bound on its time is not known); and a bucket is never expected quicker than a smaller measured one (its
own measurement may be old: the machine got busier since). The average follows a slower batch at once
(weight UP_WEIGHT) and a quicker one gently (EWMA_WEIGHT): a deadline estimate errs late, not early. Nothing measured: `seconds` and `capacity_fps` are None, `fit` the
largest bucket (as if no deadline bound it: the first batch measures it).
"""

from __future__ import annotations

from collections.abc import Sequence

EWMA_WEIGHT = 0.2  # weight of a new measurement quicker than the average
UP_WEIGHT = 0.5  # ... and of one slower than it


class RenderClock:
    def __init__(self, buckets: Sequence[int], weight: float = EWMA_WEIGHT, up_weight: float = UP_WEIGHT) -> None:
        self.buckets = tuple(sorted(buckets))
        self.weight, self.up_weight = weight, up_weight
        self.measured: dict[int, float] = {}  # bucket -> EWMA seconds per batch

    def observe(self, bucket: int, seconds: float) -> None:
        old = self.measured.get(bucket)
        weight = self.up_weight if old is not None and seconds > old else self.weight
        self.measured[bucket] = seconds if old is None else old + weight * (seconds - old)

    def seconds(self, bucket: int) -> float | None:
        """Expected seconds for a batch at `bucket` (None: nothing measured yet)."""
        below = [b for b in self.measured if b < bucket]
        floor = max((self.measured[b] for b in below), default=0.0)
        if bucket in self.measured:
            return max(self.measured[bucket], floor)
        if below:
            b = max(below)
            return max(self.measured[b] * bucket / b, floor)
        above = [b for b in self.measured if b > bucket]
        return self.measured[min(above)] if above else None

    def fit(self, seconds: float) -> int:
        """The largest bucket expected to finish within `seconds`; when none does, the largest of the
        quickest (a smaller bucket not known to be quicker gains nothing); the largest while nothing was
        measured (its first batch measures it)."""
        if not self.measured:
            return self.buckets[-1]
        times = {b: self.seconds(b) for b in self.buckets}
        fits = [b for b, t in times.items() if t <= seconds]
        quickest = min(times.values())
        return max(fits) if fits else max(b for b, t in times.items() if t == quickest)

    def capacity_fps(self, max_batch_s: float) -> float | None:
        """Frames per second at the best bucket whose batch takes at most `max_batch_s` (batches longer
        than that would break a live session's deadline, so their rate does not count); the smallest
        bucket's rate when none is that quick. None: nothing measured."""
        rates = [(b / t, t <= max_batch_s) for b in self.buckets if (t := self.seconds(b)) is not None and t > 0]
        if not rates:
            return None
        quick = [r for r, ok in rates if ok]
        return max(quick) if quick else rates[0][0]


__all__ = ["EWMA_WEIGHT", "RenderClock", "UP_WEIGHT"]
