"""pytest-benchmark suite for attention over the shared case registry (GPU only; skips without CUDA).

pytest benchmarks/test_bench_attention.py --benchmark-only -k motion
"""

from __future__ import annotations

import pytest
import torch

from flashtalk.bench.attention_cases import CASES, make_inputs

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="attention benchmarks need a CUDA GPU")


def _sdpa(q, k, v, kpm, causal):
    mask = None if kpm is None else ~kpm[:, None, None, :]
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal and mask is None)


@pytest.mark.parametrize("provider", ["flashtalk", "sdpa"])
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_attention(benchmark, case, provider):
    from flashtalk.kernels import use_kernels
    from flashtalk.kernels.attention import attention

    if provider == "sdpa" and case.causal and case.padded:
        pytest.skip("SDPA is not benchmarked with causal together with a padding mask")
    torch.manual_seed(0)
    q, k, v, kpm = make_inputs(case, torch.float16)

    def run():
        with use_kernels("triton"):
            out = (
                attention(q, k, v, key_padding_mask=kpm, causal=case.causal)
                if provider == "flashtalk"
                else _sdpa(q, k, v, kpm, case.causal)
            )
        torch.cuda.synchronize()
        return out

    run()  # compile and warm up outside the timed rounds
    benchmark.pedantic(run, rounds=20, warmup_rounds=3)
    if benchmark.stats:  # absent under --benchmark-disable
        benchmark.extra_info["tflops_at_median"] = case.flops() / benchmark.stats.stats.median / 1e12
