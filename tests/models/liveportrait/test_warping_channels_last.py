"""Warping network on the fast path (`flashtalk.models.liveportrait.warping_channels_last`): channels-last-3d end to end, equal to
the reference network (tiny, with and without the Triton kernels under the interpreter) and on the golden
W inputs (full size, fp32, CPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from flashtalk.kernels import last_choice, use_kernels
from flashtalk.models.liveportrait.optimized import fold_batchnorms, optimize_renderer
from flashtalk.models.liveportrait.warping import WarpingConfig, WarpingNetwork
from flashtalk.models.liveportrait.warping_channels_last import ChannelsLastWarpingNetwork, depth_conv, to_format
from flashtalk.weights.liveportrait import seeded_renderer
from flashtalk.weights.seeded import seed_module
from tests.models.liveportrait.helpers import gate, seeded
from tests.utils import assert_close

CL3D = torch.channels_last_3d


def _tiny(seed: int = 3, batch: int = 2, side: int = 16):
    net = WarpingNetwork(WarpingConfig.tiny())
    seed_module(net, seed, 6**0.5)
    g = torch.Generator().manual_seed(seed)
    f = torch.randn(batch, 4, 8, side, side, generator=g)
    kp_s = 0.5 * torch.rand(batch, 21, 3, generator=g) - 0.25
    kp_d = kp_s + 0.05 * torch.randn(batch, 21, 3, generator=g)
    return net, f, kp_d, kp_s


def test_depth_conv_equals_conv2d_on_the_flattened_volume():
    g = torch.Generator().manual_seed(0)
    conv = nn.Conv2d(3 * 5, 4, 3, padding=1).double()
    x = torch.randn(2, 3, 5, 6, 7, generator=g, dtype=torch.float64)
    ours = depth_conv(conv, 5)(x)
    assert ours.shape == (2, 4, 1, 6, 7)
    assert_close(ours[:, :, 0], conv(x.reshape(2, 15, 6, 7)), 1e-12, 1e-12)
    with pytest.raises(ValueError, match="not a multiple of the depth 4"):
        depth_conv(conv, 4)


def test_to_format_converts_a_broadcast_source_once():
    x = torch.randn(1, 4, 3, 5, 6).expand(3, -1, -1, -1, -1)
    y = to_format(x, CL3D)
    assert y.stride(0) == 0 and y[:1].is_contiguous(memory_format=CL3D) and torch.equal(y, x)


def _conv3d_inputs(module: nn.Module) -> tuple[list[bool], list]:
    """Run hooks that record, for every Conv3d call, whether its input is channels-last-3d."""
    seen: list[bool] = []
    hooks = [
        m.register_forward_pre_hook(lambda _m, args: seen.append(args[0].is_contiguous(memory_format=CL3D)))
        for m in module.modules()
        if isinstance(m, nn.Conv3d)
    ]
    return seen, hooks


@pytest.mark.parametrize("channels_last", [True, False], ids=["cl3d", "ncdhw"])
def test_fast_warping_equals_reference_tiny(channels_last):
    net, f, kp_d, kp_s = _tiny()
    with torch.no_grad():
        expected = net(f, kp_d, kp_s)
        fold_batchnorms(net)
        fast = ChannelsLastWarpingNetwork(net, channels_last=channels_last)
        ours = fast(f, kp_d, kp_s)
    for k in ("out", "occlusion_map", "deformation"):
        assert_close(ours[k], expected[k], 2e-5, 1e-5)
    assert ours["out"].is_contiguous(memory_format=torch.channels_last) == channels_last


def test_fast_warping_triton_kernels_stay_channels_last_3d(kernel_device):
    """With the kernels (interpreter on CPU) every Conv3d input is channels-last-3d: no layout round trip."""
    net, f, kp_d, kp_s = _tiny(4, batch=2, side=8)  # small: the interpreter runs the kernels (batch 2: the
    # CPU conv3d keeps channels-last-3d only for batch > 1; cuDNN always does)
    net, f, kp_d, kp_s = net.to(kernel_device), f.to(kernel_device), kp_d.to(kernel_device), kp_s.to(kernel_device)
    with torch.no_grad():
        expected = net(f, kp_d, kp_s, return_deformation=False)
        fold_batchnorms(net)
        fast = ChannelsLastWarpingNetwork(net)
        seen, hooks = _conv3d_inputs(fast)
        try:
            with use_kernels("triton"):
                ours = fast(f, kp_d, kp_s, return_deformation=False)
                assert last_choice("deform_warp").use_triton and last_choice("dense_motion_input").use_triton
        finally:
            for h in hooks:
                h.remove()
    assert seen and all(seen), seen
    assert_close(ours["out"], expected["out"], 2e-5, 1e-5)
    assert ours["deformation"] is None


def test_optimize_renderer_uses_it():
    fast = optimize_renderer(seeded_renderer("tiny"), "fp32")
    assert isinstance(fast.warping_module, ChannelsLastWarpingNetwork)
    assert all(
        m.weight.is_contiguous(memory_format=CL3D) for m in fast.warping_module.modules() if isinstance(m, nn.Conv3d)
    )


@pytest.mark.slow
def test_full_size_fast_warping_golden_fp32(lp_golden):
    """Full-size W, folded + channels-last-3d, against the golden arrays at the fp32 gates (with the fused tail:
    `verify-golden`'s `@fast+fused-tail` rows, test_verify_golden.py and test_golden_triton.py)."""
    ref = np.load(lp_golden / "warping_module.npz")
    net = seeded("warping_module", lp_golden, torch.float32)
    fold_batchnorms(net)
    inputs = [torch.from_numpy(ref[k]).float() for k in ("in_feature_3d", "in_kp_driving", "in_kp_source")]
    with torch.no_grad():
        out = ChannelsLastWarpingNetwork(net)(*inputs)
    for k in ("out", "occlusion_map", "deformation"):
        atol, rtol = gate(lp_golden, "warping_module.npz", f"out_{k}", "fp32")
        expected = torch.from_numpy(ref[f"out_{k}"]).double()
        assert_close(out[k], expected, atol + rtol * expected.abs().max().item())


def test_fused_tail_wiring_tiny_and_off_by_default(monkeypatch):
    """fused_tail routes the mask conv + deform_warp through `warp_tail` (its reference on the CPU; the
    kernel itself is tested under the interpreter in test_warp_tail.py); off unless asked."""
    net, f, kp_d, kp_s = _tiny(5)
    with torch.no_grad():
        expected = net(f, kp_d, kp_s)
        fold_batchnorms(net)
        fused = ChannelsLastWarpingNetwork(net, fused_tail=True)
        ours = fused(f, kp_d, kp_s, return_deformation=False)
        assert last_choice("warp_tail") is not None and ours["deformation"] is None
        assert_close(ours["out"], expected["out"], 2e-5, 1e-5)
        assert fused(f, kp_d, kp_s)["deformation"] is not None  # asked for: the unfused pair
    assert fused.mask_packed.shape == (343, 96, 32)  # tiny: 22 mask channels padded to 32, Cin to whole BK chunks
    r = seeded_renderer("tiny")
    assert not optimize_renderer(r, "fp32").warping_module.fused_tail
    monkeypatch.setenv("FLASHTALK_WARP_TAIL", "fused")
    assert optimize_renderer(r, "fp32").warping_module.fused_tail
