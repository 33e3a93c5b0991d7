"""Timing statistics (`flashtalk.profiling.timing`): quantiles as numpy computes them, and `measure` calling with a
rotating index after its warm-up."""

from __future__ import annotations

import numpy as np
import pytest

from flashtalk.profiling.timing import measure, summarize


def test_summary_quantiles_match_numpy():
    rng = np.random.default_rng(1)
    samples = list(rng.gamma(2.0, 3.0, size=37))
    t = summarize(samples, warmup=2, device="cpu")
    assert t.median_ms == pytest.approx(np.median(samples))
    assert t.p20_ms == pytest.approx(np.percentile(samples, 20))
    assert t.p80_ms == pytest.approx(np.percentile(samples, 80))
    assert t.min_ms == min(samples) and t.iters == 37


def test_measure_calls_with_rotating_index():
    seen = []
    t = measure(lambda i: seen.append(i), warmup=2, iters=5)
    assert seen == [0, 1, 0, 1, 2, 3, 4] and t.iters == 5 and t.median_ms >= 0
    with pytest.raises(ValueError):
        summarize([], 0, "cpu")
