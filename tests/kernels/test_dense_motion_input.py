"""dense_motion_input (heatmaps and sparse motions, the dense-motion network's input) against its PyTorch reference, on
the CPU under the Triton interpreter and on CUDA compiled (`kernel_device`: tensors made without a device land on
it); float64 runs the reference and says why.

Precision rule for fp32/fp16/bf16 (`check_rule`, tests/kernels/helpers.py): the kernel's max error against the fp64
reference is at most twice the error of PyTorch's own computation in that dtype (the reference op, which samples in
fp32 and rounds to the dtype, as the original network runs under autocast) plus a tiny floor."""

from __future__ import annotations

import importlib

import pytest
import torch

from flashtalk.kernels import cases, dispatch
from flashtalk.kernels.cases import keypoints, noncontig
from flashtalk.kernels.dense_motion_input import dense_motion_input, dense_motion_input_ref
from tests.kernels.helpers import DTYPES, check_rule, run_triton
from tests.utils import assert_close

triton = pytest.importorskip("triton")

# the modules (the package attribute of the same name is the public function)
dmi_mod = importlib.import_module("flashtalk.kernels.dense_motion_input")

pytestmark = pytest.mark.usefixtures("on_kernel_device")

DMI_CASES = [pytest.param(*c[:-1], id=c[-1]) for c in cases.DMI_CASES]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("B,K,C,size,strided", DMI_CASES)
def test_dense_motion_input(B, K, C, size, strided, dtype):
    c32 = torch.randn(B, C, *size)
    xs, xd = keypoints(B, K)
    c = c32.to(dtype)
    if strided:
        c, xs, xd = (
            noncontig(c),
            xs.transpose(1, 2).contiguous().transpose(1, 2),
            xd.transpose(0, 1).contiguous().transpose(0, 1),
        )
    out = run_triton(dense_motion_input, c, xs, xd)
    assert out.shape == (B, (K + 1) * (C + 1), *size) and out.dtype == dtype
    ref64 = dense_motion_input_ref(c.double(), xs.double(), xd.double())
    check_rule(out, dense_motion_input_ref(c, xs, xd), ref64, f"dense_motion_input {dtype}")
    heat = out[:, 0 :: C + 1].float()
    assert (heat[:, 0] == 0).all()  # background channel
    if K > 1 and min(size) > 1:
        assert heat[:, 1:].abs().max() > 0.1  # real heatmaps, not zeros


def test_dense_motion_input_writes_every_element():
    c = torch.randn(2, 4, 3, 5, 7)
    xs, xd = keypoints(2, 4)
    out = torch.full((2, 5 * 5, 3, 5, 7), float("nan"))
    dmi_mod._launch(c, xs, xd, out)
    assert_close(out, dense_motion_input_ref(c, xs, xd), atol=1e-5)


def test_float64_runs_reference_with_reason():
    xs, xd = keypoints(1, 2)
    c = torch.randn(1, 4, 2, 3, 2, dtype=torch.float64)
    with dispatch.use_kernels("triton"):
        out = dense_motion_input(c, xs, xd)
    assert dispatch.last_choice("dense_motion_input").backend == "reference"
    assert "float64" in dispatch.last_choice("dense_motion_input").reason and out.dtype == torch.float64
