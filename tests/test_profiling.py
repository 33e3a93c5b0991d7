"""Profiling helpers: device recognition, timing statistics, NVML absence handled without a crash."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flashtalk.profiling.devices import lookup
from flashtalk.profiling.nvml import NvmlSampler
from flashtalk.profiling.timing import measure, summarize


@pytest.mark.parametrize(
    "name, sms, expected",
    [
        ("NVIDIA H100 80GB HBM3", 132, "NVIDIA H100 SXM"),
        ("NVIDIA H100 PCIe", 114, "NVIDIA H100 PCIe"),
        ("NVIDIA H100 NVL", 132, "NVIDIA H100 NVL"),
        ("NVIDIA H200", 132, "NVIDIA H200"),
        ("NVIDIA A100-SXM4-80GB", 108, "NVIDIA A100"),
        ("NVIDIA A10", 72, "NVIDIA A10"),
        ("NVIDIA L4", 58, "NVIDIA L4"),
        ("NVIDIA L40S", 142, "NVIDIA L40S"),
        ("NVIDIA GeForce RTX 4090", 128, "NVIDIA GeForce RTX 4090"),
    ],
)
def test_device_lookup(name, sms, expected):
    peak = lookup(name, sms)
    assert peak is not None and peak.name == expected
    assert peak.tflops("bf16") > peak.tflops("fp32") > 0 and peak.mem_gbps > 0


def test_unknown_device_has_no_peak():
    assert lookup("Some Future GPU", 200) is None
    assert lookup("NVIDIA H100 80GB HBM3", 100) is None  # an H100 with an SM count we do not know


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


def test_nvml_sampler_reports_absence_without_crashing():
    with NvmlSampler(interval_s=0.01) as s:
        torch.ones(8).sum()
    summary = s.summary()
    if not torch.cuda.is_available():
        assert summary.available is False and summary.reason
    else:
        assert summary.available and summary.driver
