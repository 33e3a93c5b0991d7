"""NVML sampling (`flashtalk.profiling.nvml`): its absence is reported, not a crash."""

from __future__ import annotations

import torch

from flashtalk.profiling.nvml import NvmlSampler


def test_nvml_sampler_reports_absence_without_crashing():
    with NvmlSampler(interval_s=0.01) as s:
        torch.ones(8).sum()
    summary = s.summary()
    if not torch.cuda.is_available():
        assert summary.available is False and summary.reason
    else:
        assert summary.available and summary.driver
