"""Fused warping tail (mask conv + softmax + deformation + trilinear sample): the Triton kernel under the
interpreter (compiled on CUDA: `kernel_device`) against an fp64 reference of the unfused modules, at small and odd shapes, non-contiguous and
channels-last-3d inputs, samples reaching past the volume's edges; the packing; the dispatch."""

from __future__ import annotations

import pytest
import torch

from flashtalk.errors import FlashTalkError
from flashtalk.kernels import last_choice, use_kernels
from flashtalk.kernels.cases import WARP_TAIL_CASES as _CASES
from flashtalk.kernels.cases import warp_tail_inputs as _inputs
from flashtalk.kernels.warp_tail import BM, BN, _launch, pack_mask_weight, tile_m, warp_tail, warp_tail_ref
from tests.utils import TOLERANCES, assert_close, max_err

pytestmark = pytest.mark.usefixtures("on_kernel_device")

_DTYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
PARAMS = [
    pytest.param(*case, dtype, id=f"{name}-{_DTYPES[dtype]}")
    for name, case in _CASES.items()
    for dtype in (_DTYPES if name.startswith("B1-Cin5") else (torch.float32, torch.bfloat16))
]


def _ref64(pred, weight, bias, kp_s, kp_d, feature):
    return warp_tail_ref(pred.double(), weight.double(), bias.double(), kp_s.double(), kp_d.double(), feature.double())


@pytest.mark.parametrize("B,cin,K,ks,size,C,fsize,layout,dtype", PARAMS)
def test_kernel_matches_fp64_reference(B, cin, K, ks, size, C, fsize, layout, dtype):
    pred, weight, bias, kp_s, kp_d, feature = _inputs(B, cin, K, ks, size, C, fsize, layout, dtype)
    expected = _ref64(pred, weight, bias, kp_s, kp_d, feature)
    out = torch.full(expected.shape, float("nan"), dtype=dtype)  # poisoned: every element must be written
    with use_kernels("triton"):
        _launch(pred, pack_mask_weight(weight), bias, kp_s, kp_d, feature, out, ks)
    assert not torch.isnan(out).any()
    atol, rtol = TOLERANCES[dtype]
    if dtype == torch.float32:
        assert_close(out, expected, atol, rtol)
    else:  # at most ~2x the unfused modules' own error in the same dtype (plus one output ulp)
        ref = warp_tail_ref(pred, weight, bias, kp_s, kp_d, feature)
        assert max_err(out, expected) <= 2 * max_err(ref, expected) + atol
    assert expected.abs().max() > 0.1 and (expected == 0).any()  # real values, and samples past the edges


@pytest.mark.parametrize("bm", [64, None], ids=["tile64", "tile-default"])
def test_tile_size_only_tiles(bm):
    """210 voxels: the compiled tile of 64 (four programs, the last one partial) and the launch's default
    (under the interpreter one program of 256, `tile_m`) both match the fp64 reference."""
    pred, weight, bias, kp_s, kp_d, feature = _inputs(
        2, 7, 4, 3, (5, 6, 7), 5, (4, 6, 5), "contiguous", torch.float32, 2
    )
    expected = _ref64(pred, weight, bias, kp_s, kp_d, feature)
    out = torch.full(expected.shape, float("nan"))
    with use_kernels("triton"):
        _launch(pred, pack_mask_weight(weight), bias, kp_s, kp_d, feature, out, 3, bm=bm)
    assert_close(out, expected, *TOLERANCES[torch.float32])
    assert expected.abs().max() > 0.1 and (expected == 0).any()


def test_interpreter_tile_sizes(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert (tile_m(10, 32), tile_m(210, 32), tile_m(16 * 64 * 64, 32), tile_m(16 * 64 * 64, 64)) == (
        64,
        256,
        32768,
        16384,
    )
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert tile_m(16 * 64 * 64, 32) == BM == 64  # compiled: the tile `kernels check` gates


def test_public_op_dispatch_layout_and_fallback():
    pred, weight, bias, kp_s, kp_d, feature = _inputs(
        1, 6, 4, 3, (2, 3, 4), 5, (2, 3, 4), "channels_last", torch.float32, 1
    )
    with use_kernels("triton"):
        out = warp_tail(pred, weight, bias, kp_s, kp_d, feature)
        assert last_choice("warp_tail").use_triton
        assert out.is_contiguous(memory_format=torch.channels_last_3d)  # prediction's layout
        ours64 = warp_tail(
            pred.double(), weight.double(), bias.double(), kp_s.double(), kp_d.double(), feature.double()
        )
        assert "float64" in last_choice("warp_tail").reason
    assert_close(out, ours64, *TOLERANCES[torch.float32])
    assert_close(
        warp_tail(pred, weight, bias, kp_s, kp_d, feature), out, *TOLERANCES[torch.float32]
    )  # reference on CPU


def test_pack_mask_weight_layout():
    w = torch.randn(22, 142, 7, 7, 7)
    packed = pack_mask_weight(w)
    assert packed.shape == (343, 160, BN)
    tap = (2 * 7 + 3) * 7 + 5  # (kd, kh, kw) = (2, 3, 5)
    assert torch.equal(packed[tap, :142, :22], w[:, :, 2, 3, 5].T)
    assert not packed[:, 142:].any() and not packed[:, :, 22:].any()


def test_bad_inputs_name_the_problem():
    pred, weight, bias, kp_s, kp_d, feature = _inputs(1, 6, 4, 3, (2, 3, 4), 5, (2, 3, 4), "contiguous", torch.float32)
    with pytest.raises(FlashTalkError, match=r"weight must be \[K\+1, 6, k, k, k\] with k odd"):
        warp_tail(pred, weight[:, :, :2], bias, kp_s, kp_d, feature)
    with pytest.raises(FlashTalkError, match="5 mask channels need 4 keypoints, got 3"):
        warp_tail(pred, weight, bias, kp_s[:, :3], kp_d[:, :3], feature)
    with pytest.raises(FlashTalkError, match="at most 32 mask channels, got 40"):
        pack_mask_weight(torch.zeros(40, 6, 3, 3, 3))


@pytest.mark.slow
def test_golden_size_and_weights_at_one_depth(lp_golden, kernel_device):
    """LivePortrait's size with the golden W's weights and inputs: the prediction volume [1, 142, 16, 64, 64]
    (the fast path's, captured where the mask conv reads it), the 7×7×7 142 -> 22 conv, 21 keypoints, 32 feature
    channels. The kernel writes depth 8 only (`voxels`; the whole volume is `verify-golden --kernels triton`'s
    job, minutes under the interpreter), against the golden warped feature at depth 8 within 2x our unfused
    modules' own fp32 error (the rule of test_deform_warp.py; fp64 at this size is 25 GB of conv3d unfold)."""
    import numpy as np

    from flashtalk.models.liveportrait.optimized import fold_batchnorms
    from flashtalk.models.liveportrait.warping_channels_last import ChannelsLastWarpingNetwork
    from tests.kernels.helpers import check_rule
    from tests.models.liveportrait.helpers import seeded

    z = np.load(lp_golden / "warping_module.npz")
    f_s, xd, xs = (torch.from_numpy(z[k]).to(kernel_device) for k in ("in_feature_3d", "in_kp_driving", "in_kp_source"))
    net = seeded("warping_module", lp_golden, torch.float32).to(kernel_device)
    fold_batchnorms(net)
    fast = ChannelsLastWarpingNetwork(net)
    seen = []
    fast.occlusion.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    with torch.no_grad(), use_kernels("reference"):
        fast(f_s, xd, xs, return_deformation=False)
    pred, feature = seen[0], f_s.contiguous(memory_format=torch.channels_last_3d)
    weight, bias = fast.mask.weight.detach(), fast.mask.bias.detach()
    assert pred.shape == (1, 142, 16, 64, 64) and weight.shape == (22, 142, 7, 7, 7)

    out = torch.full((1, 32, 16, 64, 64), float("nan"), device=kernel_device)
    with use_kernels("triton"):
        _launch(pred, pack_mask_weight(weight), bias, xs, xd, feature, out, 7, voxels=(8 * 4096, 9 * 4096))
    assert torch.isnan(out[:, :, :8]).all() and torch.isnan(out[:, :, 9:]).all()  # only the range is written
    with torch.no_grad():
        ref32 = warp_tail_ref(pred, weight, bias, xs, xd, feature)[:, :, 8]
    golden = torch.from_numpy(z["dbg_warped_feature_z8"]).double().to(kernel_device)
    check_rule(out[:, :, 8], ref32, golden, "warp_tail at depth 8 vs the golden warped feature")
    assert golden.abs().max() > 0.1


def test_voxel_range_is_checked():
    pred, weight, bias, kp_s, kp_d, feature = _inputs(1, 6, 4, 3, (2, 3, 4), 5, (2, 3, 4), "contiguous", torch.float32)
    out = torch.empty(1, 5, 2, 3, 4)
    with pytest.raises(FlashTalkError, match=r"voxels \[20, 30\) is not a range inside 0..24"):
        _launch(pred, pack_mask_weight(weight), bias, kp_s, kp_d, feature, out, 3, voxels=(20, 30))
