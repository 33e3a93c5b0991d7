"""warp2d (bilinear 2-D warp, zeros / border padding) against its PyTorch reference, on the CPU under the Triton
interpreter and on CUDA compiled (`kernel_device`: tensors made without a device land on it).

Precision rule for fp32/fp16/bf16 (`check_rule`, tests/kernels/helpers.py): the kernel's max error against the fp64
reference is at most twice the error of PyTorch's own computation in that dtype (the reference op, which samples in
fp32 and rounds to the dtype, as the original network runs under autocast) plus a tiny floor."""

from __future__ import annotations

import pytest
import torch

from flashtalk.kernels import cases
from flashtalk.kernels.cases import grid2d, noncontig
from flashtalk.kernels.warp2d import warp2d, warp2d_ref
from tests.kernels.helpers import DTYPES, check_rule, run_triton

triton = pytest.importorskip("triton")

pytestmark = pytest.mark.usefixtures("on_kernel_device")

W2_CASES = [pytest.param(*c[:-1], id=c[-1]) for c in cases.W2_CASES]


@pytest.mark.parametrize("padding", ["zeros", "border"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("B,C,size,osize,strided", W2_CASES)
def test_warp2d(B, C, size, osize, strided, dtype, padding):
    image = torch.randn(B, C, *size).to(dtype)
    grid = grid2d(B, *osize)
    if strided:
        image, grid = noncontig(image), grid.permute(0, 2, 1, 3).contiguous().permute(0, 2, 1, 3)
    out = run_triton(warp2d, image, grid, padding=padding)
    assert out.shape == (B, C, *osize) and out.dtype == dtype
    ref64 = warp2d_ref(image.double(), grid.double(), padding=padding)
    check_rule(out, warp2d_ref(image, grid, padding=padding), ref64, f"warp2d {padding} {dtype}")
