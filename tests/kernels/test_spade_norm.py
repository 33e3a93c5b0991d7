"""spade_norm: Triton kernel (interpreter on CPU, compiled on CUDA: `kernel_device`) against spade_norm_ref and against an fp64 reference of
the unfused math (instance_norm, modulation, leaky ReLU as three PyTorch ops)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from flashtalk.errors import FlashTalkError
from flashtalk.kernels import use_kernels
from flashtalk.kernels.cases import SPADE_CASES
from flashtalk.kernels.cases import spade_input as _make
from flashtalk.kernels.spade_norm import _launch, spade_norm, spade_norm_ref
from tests.utils import TOLERANCES, assert_close, max_err

pytestmark = pytest.mark.usefixtures("on_kernel_device")

CASES = [pytest.param(*c[:-1], id=c[-1]) for c in SPADE_CASES]
DTYPES = [pytest.param(d, id=str(d).removeprefix("torch.")) for d in (torch.float32, torch.float16, torch.bfloat16)]


def _unfused64(x, gamma, beta, slope):
    y = F.instance_norm(x.double(), eps=1e-5) * (1 + gamma.double()) + beta.double()
    return F.leaky_relu(y, slope) if slope is not None else y


@pytest.mark.parametrize("slope", [0.2, None], ids=["lrelu0.2", "noact"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,layout", CASES)
def test_kernel_matches_reference(shape, layout, dtype, slope):
    x = _make(shape, layout, dtype, 1)
    gamma = 0.5 * _make(shape, layout, dtype, 2) - 0.7
    beta = _make(shape, "contiguous", dtype, 3)  # mixed layouts across the three inputs
    expected = _unfused64(x, gamma, beta, slope)
    with use_kernels("triton"):
        out = spade_norm(x, gamma, beta, slope)
    assert out.dtype == dtype and out.shape == x.shape
    ref = spade_norm_ref(x, gamma, beta, slope)
    atol, rtol = TOLERANCES[dtype]
    assert_close(out, expected, atol, rtol)
    # low precision: at most ~2x the error of the reference in the same dtype (plus one output ulp)
    if dtype != torch.float32:
        assert max_err(out, expected) <= 2 * max_err(ref, expected) + atol
    assert_close(ref, expected, atol, rtol)


@pytest.mark.parametrize("chunk", [4096, 10, 7], ids=["one-chunk", "chunk10", "chunk7-ragged"])
def test_kernel_writes_every_element_and_merges_chunks(chunk):
    """Poisoned output; small chunks split H·W = 63 into many partial statistics (the last one short)."""
    x = _make((2, 5, 7, 9), "channels_last", torch.float32, 4) + 40.0  # large mean: a naive merge would lose digits
    gamma, beta = _make(x.shape, "contiguous", torch.float32, 5), _make(x.shape, "contiguous", torch.float32, 6)
    out = torch.full_like(x, float("nan"))
    _launch(x, gamma, beta, 0.2, 1e-5, out, chunk=chunk)
    expected = _unfused64(x, gamma, beta, 0.2)
    assert_close(out, expected, 1e-4, 1e-5)
    assert max_err(out, expected) <= 2 * max_err(spade_norm_ref(x, gamma, beta, 0.2), expected) + 1e-6


def test_channels_last_output_keeps_format():
    x = _make((1, 6, 4, 5), "channels_last", torch.float32, 7)
    with use_kernels("triton"):
        out = spade_norm(x, x * 0.1, x * 0.2, 0.2)
    assert out.is_contiguous(memory_format=torch.channels_last)


def test_fp16_large_activations_stay_finite():
    """Values of 3e3 square to 9e6 (> fp16 max 65504): fp16 statistics would overflow; fp32 ones do not."""
    g = torch.Generator(torch.get_default_device()).manual_seed(8)
    x = (3000 * torch.randn(1, 4, 16, 16, generator=g) + 2000).half()
    gamma, beta = torch.zeros_like(x), torch.zeros_like(x)
    with use_kernels("triton"):
        out = spade_norm(x, gamma, beta, None)
    assert torch.isfinite(out).all()
    assert_close(out, _unfused64(x, gamma, beta, None), 2e-3, 2e-3)


def test_bad_inputs():
    x = torch.randn(1, 3, 4, 4)
    with pytest.raises(FlashTalkError, match="gamma must have x's shape"):
        spade_norm(x, torch.randn(1, 3, 4, 5), x)
    with pytest.raises(FlashTalkError, match=r"x must be a non-empty \[B, C, H, W\]"):
        spade_norm(x[0], x[0], x[0])
    with pytest.raises(FlashTalkError, match="beta must be floating point"):
        spade_norm(x, x, x.to(torch.int32))


@pytest.mark.parametrize(
    "B,C,side", [(1, 512, 64), (1, 256, 128), (1, 128, 256), (1, 64, 512), (4, 512, 64), (1, 3, 5)]
)
def test_grid_fills_the_gpu_at_every_resolution(B, C, side):
    """chunk_size: >= PROGRAMS_PER_SM programs per SM of a 132-SM GPU at batch 1 wherever H·W allows it,
    chunks within [MIN_CHUNK, MAX_CHUNK] and whole tile rows, covering H·W."""
    from flashtalk.kernels.spade_norm import BP, MAX_CHUNK, MIN_CHUNK, PROGRAMS_PER_SM, chunk_size

    HW = side * side
    chunk = chunk_size(B, C, HW, sms=132)
    assert MIN_CHUNK <= chunk <= MAX_CHUNK and chunk % BP == 0
    programs = B * -(-C // min(16, C)) * -(-HW // chunk)
    if chunk > MIN_CHUNK:  # not limited by the pixels: the grid reaches its target
        assert programs >= PROGRAMS_PER_SM * 132
    assert programs >= (512 if (B, C, side) == (1, 512, 64) else 1)  # the decoder's 64² layers: 32 before


def test_default_chunks_merge_exactly():
    """The default chunking on a shape that it splits (the merge of many chunks) equals one chunk."""
    x = _make((1, 4, 40, 40), "contiguous", torch.float32, 7)  # 1600 pixels -> 7 chunks of 256
    gamma, beta = (
        0.3 * _make((1, 4, 40, 40), "contiguous", torch.float32, 8),
        _make((1, 4, 40, 40), "contiguous", torch.float32, 9),
    )
    from flashtalk.kernels.spade_norm import chunk_size

    assert chunk_size(1, 4, 1600) == 256
    with use_kernels("triton"):
        split = _launch(x, gamma, beta, 0.2, 1e-5, torch.full_like(x, float("nan")))
        whole = _launch(x, gamma, beta, 0.2, 1e-5, torch.full_like(x, float("nan")), chunk=4096)
    assert_close(split, _unfused64(x, gamma, beta, 0.2), *TOLERANCES[torch.float32])
    assert_close(split, whole, 2e-6, 2e-6)
