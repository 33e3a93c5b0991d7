"""Warping kernels (dense_motion_input, deform_warp, warp2d, paste_back) against their PyTorch references,
plus the golden grid_sample / warping-module data; on the CPU under the Triton interpreter and on CUDA
compiled (`kernel_device`: tensors made without a device land on it).

Precision rule for fp32/fp16/bf16: the kernel's max error against the fp64 reference is at most twice the
error of PyTorch's own computation in that dtype (the reference op, which samples in fp32 and rounds to the
dtype, as the original network runs under autocast) plus a tiny floor."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch

from flashtalk.errors import FlashTalkError
from flashtalk.kernels import cases, dispatch
from flashtalk.kernels.cases import grid2d, keypoints, noncontig, rotation_affine
from flashtalk.kernels.deform_warp import deform_warp, deform_warp_ref
from flashtalk.kernels.dense_motion_input import dense_motion_input, dense_motion_input_ref
from flashtalk.kernels.paste_back import make_feather_mask, paste_back, paste_back_ref
from flashtalk.kernels.triton_compat import _jit
from flashtalk.kernels.warp2d import warp2d, warp2d_ref
from tests.utils import assert_close, max_err

triton = pytest.importorskip("triton")
tl = triton.language

# the modules (the package attribute of the same name is the public function)
dmi_mod = importlib.import_module("flashtalk.kernels.dense_motion_input")
pb_mod = importlib.import_module("flashtalk.kernels.paste_back")

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
FLOOR = 1e-6  # absolute slack on top of 2x PyTorch's own error

pytestmark = pytest.mark.usefixtures("on_kernel_device")


def run_triton(fn, *args, **kwargs):
    """Call a public op with the Triton path forced, and check that it really ran Triton."""
    with dispatch.use_kernels("triton"):
        out = fn(*args, **kwargs)
    assert dispatch.last_choice(fn.__name__).use_triton, dispatch.last_choice(fn.__name__)
    return out


def check_rule(kernel: torch.Tensor, ours_ref: torch.Tensor, ref64: torch.Tensor, what: str) -> None:
    k_err, t_err = max_err(kernel, ref64), max_err(ours_ref, ref64)
    assert torch.isfinite(kernel).all(), f"{what}: non-finite output"
    assert k_err <= 2 * t_err + FLOOR, f"{what}: kernel error {k_err:.3e} > 2 x PyTorch's {t_err:.3e} + {FLOOR:g}"


# ------------------------------------------------------------------------------ dense_motion_input

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


# ------------------------------------------------------------------------------ warp2d

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


# ------------------------------------------------------------------------------ paste_back


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_paste_back_matches_reference(dtype):
    h, w = 20, 26
    crop = noncontig(torch.rand(2, 3, h, w).to(dtype))
    bg = torch.randint(0, 256, (1, 37, 45, 3), dtype=torch.uint8)  # broadcast over B
    affine = torch.tensor([rotation_affine(0.3, 0.8, -4.2, -2.5), rotation_affine(-0.1, 1.3, -15.7, -6.1)])
    mask = make_feather_mask((h, w))
    out = run_triton(paste_back, crop, bg, affine, mask)
    ref = paste_back_ref(crop, bg, affine, mask)
    assert out.shape == (2, 37, 45, 3) and out.dtype == torch.uint8
    diff = (out.int() - ref.int()).abs()
    # rounding at exact .5 may differ by one level between fp32 orders of operations, nowhere more
    assert diff.max() <= 1 and (diff > 0).float().mean() < 1e-3, (
        f"{int((diff > 0).sum())} pixels differ, max {diff.max()}"
    )
    assert (out != bg).any(dim=-1).float().mean() > 0.1  # the crop really landed


def test_paste_back_identity():
    """Identity affine, crop values on the uint8 grid: the crop exactly where the mask is 1, the background
    untouched where it is 0 and outside the crop, a blend in between."""
    h, w = 24, 32
    crop8 = torch.randint(0, 256, (2, 3, h, w), dtype=torch.uint8)
    crop = crop8.float() / 255
    bg = torch.randint(0, 256, (2, 30, 40, 3), dtype=torch.uint8)
    affine = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]])
    mask = make_feather_mask((h, w))
    out = torch.full((2, 30, 40, 3), 77, dtype=torch.uint8)  # poison: a wrong pixel shows
    pb_mod._launch(crop, bg, affine, mask, out)
    inner, outer = mask == 1, mask == 0
    assert inner.sum() > 100 and outer.sum() > 50 and ((mask > 0) & (mask < 1)).sum() > 50
    sub = out[:, :h, :w].permute(0, 3, 1, 2)  # [B, 3, h, w]
    assert torch.equal(sub[:, :, inner], crop8[:, :, inner])
    bg_sub = bg[:, :h, :w].permute(0, 3, 1, 2)
    assert torch.equal(sub[:, :, outer], bg_sub[:, :, outer])
    assert torch.equal(out[:, h:], bg[:, h:]) and torch.equal(out[:, :, w:], bg[:, :, w:])
    assert torch.equal(run_triton(paste_back, crop, bg, affine, mask), out)


def test_feather_mask_shape():
    m = make_feather_mask((40, 60))
    assert m.shape == (40, 60) and m.dtype == torch.float32
    assert m.min() == 0 and m.max() == 1 and m[20, 30] == 1 and m[0, 0] == 0
    assert torch.equal(m, m.flip(0)) and torch.equal(m, m.flip(1))
    row = m[20, :30]
    assert (row[1:] >= row[:-1]).all()  # rises monotonically from the edge to the centre


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
    return torch.from_numpy(a).to(torch.getdefault_device())


def test_golden_grid_sample_5d(lp_golden):
    z = np.load(lp_golden / "grid_sample_5d.npz")
    inp, grid, expected = (on_device(z[k]) for k in ("in_input", "in_grid", "out"))
    for b in range(inp.shape[0]):
        assert_close(sample_at_grid(inp[b], grid[b]), expected[b], atol=1e-5)


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


# ------------------------------------------------------------------------------ op plumbing


def test_custom_ops_opcheck():
    xs, xd = keypoints(1, 2)
    with dispatch.use_kernels("triton"):
        torch.library.opcheck(torch.ops.flashtalk.dense_motion_input, (torch.randn(1, 2, 2, 3, 2), xs, xd))
        torch.library.opcheck(
            torch.ops.flashtalk.deform_warp, (torch.randn(1, 3, 2, 3, 2), xs, xd, torch.randn(1, 2, 2, 2, 3), True)
        )
        torch.library.opcheck(torch.ops.flashtalk.warp2d, (torch.randn(1, 2, 3, 4), grid2d(1, 2, 3), "border"))
        torch.library.opcheck(
            torch.ops.flashtalk.paste_back,
            (
                torch.rand(2, 3, 4, 5),
                torch.randint(0, 256, (1, 6, 7, 3), dtype=torch.uint8),
                torch.tensor([[[1.0, 0.0, -1.0], [0.0, 1.0, -1.0]]]),
                make_feather_mask((4, 5)),
            ),
        )


def test_float64_runs_reference_with_reason():
    xs, xd = keypoints(1, 2)
    c = torch.randn(1, 4, 2, 3, 2, dtype=torch.float64)
    with dispatch.use_kernels("triton"):
        out = dense_motion_input(c, xs, xd)
    assert dispatch.last_choice("dense_motion_input").backend == "reference"
    assert "float64" in dispatch.last_choice("dense_motion_input").reason and out.dtype == torch.float64


def test_bad_inputs_are_named():
    xs, xd = keypoints(2, 3)
    with pytest.raises(FlashTalkError, match="compressed"):
        dense_motion_input(torch.randn(2, 4, 3, 3), xs, xd)
    with pytest.raises(FlashTalkError, match="kp_driving"):
        dense_motion_input(torch.randn(2, 4, 2, 3, 3), xs, xd[:1])
    with pytest.raises(FlashTalkError, match="K\\+1"):
        deform_warp(torch.randn(2, 3, 2, 3, 3), xs, xd, torch.randn(2, 4, 2, 3, 3))
    with pytest.raises(FlashTalkError, match="padding"):
        warp2d(torch.randn(1, 3, 4, 4), torch.zeros(1, 2, 2, 2), padding="reflection")
    with pytest.raises(FlashTalkError, match="uint8"):
        paste_back(torch.rand(1, 3, 4, 4), torch.zeros(1, 8, 8, 3), torch.zeros(1, 2, 3), torch.ones(4, 4))
    with pytest.raises(FlashTalkError, match="mask"):
        paste_back(
            torch.rand(1, 3, 4, 4), torch.zeros(1, 8, 8, 3, dtype=torch.uint8), torch.zeros(1, 2, 3), torch.ones(5, 4)
        )
