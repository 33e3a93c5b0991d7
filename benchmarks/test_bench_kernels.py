"""pytest-benchmark suite over the kernel cases of the one registry (`flashtalk/bench/registry.py`), the same
cases and providers `flashtalk bench --only kernel` measures: the GPU grid on CUDA, small shapes on the CPU.

    pytest benchmarks/test_bench_kernels.py --benchmark-only                 # quick set
    FLASHTALK_BENCH_FULL=1 pytest benchmarks/test_bench_kernels.py --benchmark-only -k attention
"""

from __future__ import annotations

import itertools
import os

import pytest
import torch

from flashtalk.bench.registry import Setup, select

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SETUP = Setup.for_device(DEVICE, quick=not os.environ.get("FLASHTALK_BENCH_FULL"), compile=torch.cuda.is_available())
CASES = select(SETUP, ["kernel"])


@pytest.mark.parametrize("provider", ["flashtalk", "eager", "compile"])
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_kernel(benchmark, case, provider):
    built = case.build(SETUP)
    fn = built.providers[provider]
    if isinstance(fn, str):
        pytest.skip(fn)
    counter = itertools.count()

    def call(i):
        out = fn(i)
        if SETUP.cuda:
            torch.cuda.synchronize()
        return out

    for i in range(3):  # compile / autotune / warm caches outside the timed rounds
        call(i)
    benchmark.pedantic(call, setup=lambda: ((next(counter),), {}), rounds=20 if SETUP.cuda else 5)
    benchmark.extra_info.update(shape=built.shape, dtype=built.dtype, device=DEVICE)
    if benchmark.stats:  # absent under --benchmark-disable
        median = benchmark.stats.stats.median
        if built.flops:
            benchmark.extra_info["tflops_at_median"] = built.flops / median / 1e12
        if built.bytes:
            benchmark.extra_info["gbps_at_median"] = built.bytes / median / 1e9
