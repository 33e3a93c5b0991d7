"""Timing with warm-up excluded: CUDA events on the GPU, perf_counter on the CPU; median and p20/p80.

`measure(fn, ...)` calls `fn(i)` with the iteration index, so a case can rotate through several inputs
and keep caches from flattering the result.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass


@dataclass
class Timing:
    median_ms: float
    p20_ms: float
    p80_ms: float
    min_ms: float
    iters: int
    warmup: int
    device: str

    def as_dict(self) -> dict:
        return asdict(self)


def _quantile(sorted_ms: list[float], q: float) -> float:
    if len(sorted_ms) == 1:
        return sorted_ms[0]
    pos = q * (len(sorted_ms) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(sorted_ms) - 1)
    return sorted_ms[lo] + (sorted_ms[hi] - sorted_ms[lo]) * (pos - lo)


def summarize(samples_ms: list[float], warmup: int, device: str) -> Timing:
    if not samples_ms:
        raise ValueError("no timing samples")
    s = sorted(samples_ms)
    return Timing(statistics.median(s), _quantile(s, 0.2), _quantile(s, 0.8), s[0], len(s), warmup, device)


def measure(fn: Callable[[int], object], *, warmup: int = 3, iters: int = 20, device: str = "cpu") -> Timing:
    """Time `fn(i)` for i in range(iters) after `warmup` untimed calls; one sample per call."""
    import torch

    for i in range(warmup):
        fn(i)
    samples: list[float] = []
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        for i in range(iters):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn(i)
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end))
    else:
        for i in range(iters):
            t0 = time.perf_counter()
            fn(i)
            samples.append((time.perf_counter() - t0) * 1e3)
    return summarize(samples, warmup, device)


def latency_percentiles(samples_ms: list[float]) -> dict[str, float]:
    """p50/p90/p99 of per-item latencies (streams, frames)."""
    s = sorted(samples_ms)
    return {"p50_ms": _quantile(s, 0.5), "p90_ms": _quantile(s, 0.9), "p99_ms": _quantile(s, 0.99)}
