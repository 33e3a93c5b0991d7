"""deform_warp (softmax-weighted deformation and trilinear sample) against its PyTorch reference, plus the golden
grid_sample / warping-module data (the kernels' trilinear math at the real size), on the CPU under the Triton
interpreter and on CUDA compiled (`kernel_device`: tensors made without a device land on it).

Precision rule for fp32/fp16/bf16 (`check_rule`, tests/kernels/helpers.py): the kernel's max error against the fp64
reference is at most twice the error of PyTorch's own computation in that dtype (the reference op, which samples in
fp32 and rounds to the dtype, as the original network runs under autocast) plus a tiny floor."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch

from flashtalk.kernels import cases
from flashtalk.kernels.cases import keypoints, noncontig
from flashtalk.kernels.deform_warp import deform_warp, deform_warp_ref
from flashtalk.kernels.dense_motion_input import dense_motion_input, dense_motion_input_ref
from flashtalk.kernels.triton_compat import _jit
from tests.kernels.helpers import DTYPES, check_rule, run_triton
from tests.utils import assert_close

triton = pytest.importorskip("triton")
tl = triton.language

# the modules (the package attribute of the same name is the public function)
dmi_mod = importlib.import_module("flashtalk.kernels.dense_motion_input")


pytestmark = pytest.mark.usefixtures("on_kernel_device")


# ------------------------------------------------------------------------------ deform_warp

DW_CASES = [pytest.param(*c[:-1], id=c[-1]) for c in cases.DW_CASES]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("B,K,C,size,fsize,strided", DW_CASES)
def test_deform_warp(B, K, C, size, fsize, strided, dtype):
    logits = (torch.randn(B, K + 1, *size) * 4).to(dtype)
    feature = torch.randn(B, C, *fsize).to(dtype)
    xs, xd = keypoints(B, K)
    if strided:
        logits, feature = noncontig(logits), noncontig(feature)
    out, phi = run_triton(deform_warp, logits, xs, xd, feature, return_deformation=True)
    assert (
        out.shape == (B, C, *size) and out.dtype == dtype and phi.shape == (B, *size, 3) and phi.dtype == torch.float32
    )
    ref64, phi64 = deform_warp_ref(logits.double(), xs.double(), xd.double(), feature.double(), return_deformation=True)
    ours, phi_ref = deform_warp_ref(logits, xs, xd, feature, return_deformation=True)
    check_rule(out, ours, ref64, f"deform_warp warped {dtype}")
    check_rule(phi, phi_ref, phi64, f"deform_warp deformation {dtype}")
    again, none = run_triton(deform_warp, logits, xs, xd, feature)
    assert none is None and torch.equal(again, out)


def test_deform_warp_saturated_softmax():
    """Logits of ±80 (exp overflows without the max subtraction): Φ picks one motion per voxel."""
    logits = torch.randn(2, 5, 3, 4, 5) * 80
    feature = torch.randn(2, 3, 3, 4, 5)
    xs, xd = keypoints(2, 4)
    out, phi = run_triton(deform_warp, logits, xs, xd, feature, return_deformation=True)
    ref, phi_ref = deform_warp_ref(logits.double(), xs.double(), xd.double(), feature.double(), return_deformation=True)
    assert_close(phi, phi_ref, atol=2e-6)
    assert_close(out, ref, atol=1e-5)


# ------------------------------------------------------------------------------ golden data


@_jit
def _sample_at_grid_kernel(f_ptr, g_ptr, out_ptr, C, D, H, W, N, BV: tl.constexpr):
    """Test harness: the ops' trilinear helpers at an arbitrary contiguous grid [N, 3] of one batch."""
    o_v = tl.program_id(0) * BV + tl.arange(0, BV)
    m_v = o_v < N
    gx = tl.load(g_ptr + o_v * 3, mask=m_v, other=0.0)
    gy = tl.load(g_ptr + o_v * 3 + 1, mask=m_v, other=0.0)
    gz = tl.load(g_ptr + o_v * 3 + 2, mask=m_v, other=0.0)
    o000, o001, o010, o011, o100, o101, o110, o111, w000, w001, w010, w011, w100, w101, w110, w111 = (
        dmi_mod.trilinear_corners(gx, gy, gz, D, H, W, H * W, W, 1)
    )
    for i_c in range(C):
        b_v = dmi_mod.trilinear_gather(
            f_ptr + i_c * D * H * W,
            m_v,
            o000,
            o001,
            o010,
            o011,
            o100,
            o101,
            o110,
            o111,
            w000,
            w001,
            w010,
            w011,
            w100,
            w101,
            w110,
            w111,
        )
        tl.store(out_ptr + i_c * N + o_v, b_v, mask=m_v)


def sample_at_grid(volume: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """volume [C, D, H, W] fp32, grid [..., 3] -> [C, ...] through the kernels' trilinear math."""
    g = grid.reshape(-1, 3).contiguous()
    out = torch.full((volume.shape[0], g.shape[0]), float("nan"))
    BV = dmi_mod.block_size(g.shape[0])
    _sample_at_grid_kernel[(triton.cdiv(g.shape[0], BV),)](
        volume.contiguous(), g, out, *volume.shape, g.shape[0], BV=BV
    )
    return out.view(volume.shape[0], *grid.shape[:-1])


def on_device(a: np.ndarray) -> torch.Tensor:
    """A golden array on this test's kernel device."""
    return torch.from_numpy(a).to(torch.get_default_device())


def test_golden_grid_sample_5d(lp_golden):
    z = np.load(lp_golden / "grid_sample_5d.npz")
    inp, grid, expected = (on_device(z[k]) for k in ("in_input", "in_grid", "out"))
    for b in range(inp.shape[0]):
        assert_close(sample_at_grid(inp[b], grid[b]), expected[b], atol=1e-5)


@pytest.mark.slow
def test_golden_warping_module_real_size(lp_golden):
    """Real size (1, 32, 16, 64, 64), 21 keypoints, against the fp64 golden, with the same rule as above
    (PyTorch fp32's own error from the same fp32 inputs): the golden warped feature at depth 8 from the
    golden Φ through the kernels' trilinear math; deform_warp with the golden softmax mask (depth 8,
    repeated over depth) gives the golden Φ and warped feature at depth 8; dense_motion_input against its
    reference at the real size."""
    z = np.load(lp_golden / "warping_module.npz")
    f_s, xs, xd = (on_device(z[k]) for k in ("in_feature_3d", "in_kp_source", "in_kp_driving"))
    phi_gold = on_device(z["out_deformation"])
    warped_z8 = on_device(z["dbg_warped_feature_z8"]).double()
    torch_z8 = torch.nn.functional.grid_sample(f_s, phi_gold[:, 8:9], align_corners=False)[:, :, 0]
    check_rule(sample_at_grid(f_s[0], phi_gold[0, 8])[None], torch_z8, warped_z8, "trilinear at golden Φ")

    logits = on_device(z["dbg_mask_softmax_z8"]).log()[:, :, None].expand(1, 22, 16, 64, 64)
    warped, phi = run_triton(deform_warp, logits, xs, xd, f_s, return_deformation=True)
    ref, phi_ref = deform_warp_ref(logits, xs, xd, f_s, return_deformation=True)
    check_rule(phi[:, 8], phi_ref[:, 8], phi_gold[:, 8].double(), "deform_warp Φ vs golden")
    check_rule(warped[:, :, 8], ref[:, :, 8], warped_z8, "deform_warp warped vs golden")
    assert_close(phi, phi_ref, atol=2e-6)
    assert_close(warped, ref, atol=2e-4)

    compressed = torch.randn(1, 4, 16, 64, 64)
    out = run_triton(dense_motion_input, compressed, xs, xd)
    assert_close(out, dense_motion_input_ref(compressed, xs, xd), atol=2e-5)
