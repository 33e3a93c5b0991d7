"""Renderer fast path: folded / fused rewrites equal the reference (fp32), per-phase mlp_shared equals conv
on the upsampled map, low-precision renders stay finite and close, the full-size G matches golden."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from flashtalk.errors import FlashTalkError
from flashtalk.kernels import last_choice, use_kernels
from flashtalk.models.liveportrait.optimized import (
    FusedSPADEDecoder,
    fold_batchnorms,
    fold_spectral_norms,
    optimize_renderer,
    phase_weights,
    render_frames,
    upsampled_conv3x3,
)
from flashtalk.models.liveportrait.renderer import SourceState, build_network
from flashtalk.models.liveportrait.spade import SPADEConfig, SPADEDecoder
from flashtalk.models.liveportrait.warping import WarpingConfig, WarpingNetwork
from flashtalk.runtime.graphed_renderer import GraphedRenderer
from flashtalk.weights.liveportrait import seeded_renderer, seeded_state_dict
from flashtalk.weights.seeded import seed_module
from tests.utils import assert_close, rebatch_atol


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = (a.double() - b.double()).pow(2).mean().item()
    return float("inf") if mse == 0 else 10 * np.log10(1.0 / mse)


@pytest.fixture(scope="module")
def tiny():
    """Seeded tiny renderer and a source with a 16×16 volume (renders 128² frames) plus 3 driving frames."""
    r = seeded_renderer("tiny")
    src = r.encode_source(torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(0)))
    src = SourceState(**{**src.__dict__, "f_s": src.f_s[..., 8:24, 20:36].contiguous()})
    g = torch.Generator().manual_seed(1)
    x_d = src.x_s.expand(3, -1, -1) + 0.05 * torch.randn(3, r.num_kp, 3, generator=g)
    return r, src, x_d, r.render(src, x_d)


@pytest.mark.parametrize("scale", [2, 4])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
def test_per_phase_mlp_shared_equals_conv_on_upsampled(scale, channels_last):
    g = torch.Generator().manual_seed(scale)
    seg = torch.randn(2, 5, 7, 9, generator=g, dtype=torch.float64)
    w, b = torch.randn(6, 5, 3, 3, generator=g, dtype=torch.float64), torch.randn(6, generator=g, dtype=torch.float64)
    w2, starts = phase_weights(w, scale)
    assert w2.shape == (scale * scale * 6, 5, 2, 2)
    ours = upsampled_conv3x3(seg, w2, b, scale, starts, channels_last)
    expected = F.conv2d(F.interpolate(seg, scale_factor=scale, mode="nearest"), w, b, padding=1)
    assert_close(ours, expected, 1e-12, 1e-12)


def test_fold_batchnorm_warping_equals_reference():
    net = WarpingNetwork(WarpingConfig.tiny())
    seed_module(net, 3, 6**0.5)
    g = torch.Generator().manual_seed(2)
    f = torch.randn(2, 4, 8, 16, 16, generator=g)
    kp_s = 0.5 * torch.rand(2, 21, 3, generator=g) - 0.25
    kp_d = kp_s + 0.05 * torch.randn(2, 21, 3, generator=g)
    with torch.no_grad():
        expected = net(f, kp_d, kp_s)
        folded = fold_batchnorms(net)
        ours = net(f, kp_d, kp_s)
    assert folded == 2 + 3 + 3 + 1  # compress, third, 3 down, 3 up, final hourglass conv
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in net.modules())
    for k in ("out", "occlusion_map", "deformation"):
        assert_close(ours[k], expected[k], 2e-5, 1e-5)


def test_fold_spectral_and_fused_decoder_equal_reference(interpreter):
    dec = SPADEDecoder(SPADEConfig.tiny())
    seed_module(dec, 4, 1.0)
    feature = torch.randn(2, 16, 8, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = dec(feature)
        assert (
            fold_spectral_norms(dec) == 2 * 2 + 2 * 3
        )  # tiny: 2 middle blocks (conv_0, conv_1), 2 up blocks (+ conv_s)
        assert_close(dec(feature), expected, 1e-6)
        for cl in (False, True):
            assert_close(FusedSPADEDecoder(dec, channels_last=cl)(feature), expected, 1e-5)
        with use_kernels("triton"):  # the fused spade_norm kernel inside the decoder (interpreter on CPU)
            assert_close(FusedSPADEDecoder(dec, channels_last=True)(feature[:1]), expected[:1], 1e-5)
        assert last_choice("spade_norm").use_triton


def test_optimize_fp32_renders_like_reference_and_leaves_original(tiny):
    r, src, x_d, expected = tiny
    before = {k: v.clone() for k, v in r.state_dict().items()}
    fast = optimize_renderer(r, "fp32")
    with torch.no_grad():
        assert_close(render_frames(fast, src.f_s, src.x_s, x_d), expected, 2e-5)
    after = r.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("precision,min_psnr", [("bf16", 35.0), ("fp16", 45.0)])
def test_low_precision_render_is_finite_and_close(tiny, precision, min_psnr):
    r, src, x_d, expected = tiny
    frames = GraphedRenderer(r, precision).render(src, x_d)
    assert frames.dtype == torch.float32 and frames.shape == expected.shape
    assert torch.isfinite(frames).all()
    # no black or saturated 8×8 blocks
    blocks = F.avg_pool2d(frames, 8)
    assert blocks.min() > 0.01 and blocks.max() < 0.99
    assert psnr(frames, expected) >= min_psnr, psnr(frames, expected)


@pytest.mark.gpu
@pytest.mark.parametrize("precision,min_psnr", [("bf16", 35.0), ("fp16", 45.0)])
def test_low_precision_render_on_cuda_with_triton_kernels(tiny, precision, min_psnr, monkeypatch):
    """The same fidelity budget on the GPU, with the compiled kernels (fused spade_norm, warping ops) and CUDA
    graphs, against the CPU fp32 reference render."""
    r, src, x_d, expected = tiny
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    cuda = SourceState(**{k: v.cuda() if torch.is_tensor(v) else v for k, v in src.__dict__.items()})
    frames = GraphedRenderer(copy.deepcopy(r).cuda(), precision).render(cuda, x_d.cuda()).cpu()
    for op in ("spade_norm", "deform_warp"):
        assert last_choice(op).backend == "triton", (op, last_choice(op))
    assert torch.isfinite(frames).all()
    blocks = F.avg_pool2d(frames, 8)
    assert blocks.min() > 0.01 and blocks.max() < 0.99
    assert psnr(frames, expected) >= min_psnr, psnr(frames, expected)


def test_graph_runner_path_on_cpu_matches_eager(tiny):
    """GraphedRenderer(graphs=True) on the CPU goes through GraphRunner with eager replay (pad / slice). Padding
    the batch from 3 to 4 may change the convolutions' rounding: the tolerance is the REBATCH rule on the
    eager model's own difference between batch 3 and batch 4 (padded with the last row, as the runner does)."""
    r, src, x_d, _ = tiny
    fr = GraphedRenderer(r, "fp32", buckets=(4,), graphs=True)
    out = fr.render(src, x_d)  # 3 frames -> bucket 4, one padding row
    assert fr._runner is not None and fr._runner.bucket_for(3) == 4
    with torch.no_grad():
        eager3 = render_frames(fr.model, src.f_s, src.x_s, x_d)
        eager4 = render_frames(fr.model, src.f_s, src.x_s, torch.cat([x_d, x_d[-1:]]))[:3]
    assert_close(out, eager3, rebatch_atol(eager3, eager4))


def test_bad_inputs(tiny):
    r, src, x_d, _ = tiny
    with pytest.raises(FlashTalkError, match="precision must be one of fp32, bf16, fp16"):
        optimize_renderer(r, "int8")
    with pytest.raises(FlashTalkError, match=r"x_d must be driving keypoints \[N, 21, 3\]"):
        GraphedRenderer(r, "fp32").render(src, x_d[:, :20])


@pytest.mark.slow
def test_full_size_spade_golden_fused_fp32(lp_golden):
    """The full-size decoder after spectral folding + fusion + channels-last, once, against golden."""
    with np.load(lp_golden / "spade_generator.npz") as npz:
        feature, image = (torch.from_numpy(npz[k]).float() for k in ("in_feature", "out_image"))
    dec = build_network("spade_generator")
    state = seeded_state_dict("spade_generator", json.loads((lp_golden / "manifest.json").read_text()), 0)
    dec.load_state_dict(state, strict=True)
    dec = dec.float()
    fold_spectral_norms(dec)
    with torch.no_grad():
        out = FusedSPADEDecoder(dec, channels_last=True)(feature)
    assert_close(out, image, 2e-5)
