"""LivePortrait warping network W (and the appearance feature extractor F where the two are checked together):
checkpoint key layout and config values against the manifest, golden outputs at fp32 and fp64 (full size, once
each), the tiny presets end to end, still keypoints giving the identity deformation, the path through the Triton
kernels, input errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from flashtalk.errors import FlashTalkError
from flashtalk.kernels import last_choice, use_kernels
from flashtalk.models.liveportrait.appearance import AppearanceConfig, AppearanceFeatureExtractor
from flashtalk.models.liveportrait.warping import WarpingConfig, WarpingNetwork
from flashtalk.weights.seeded import seed_module
from tests.models.liveportrait.helpers import NETWORKS, PRECISIONS, check_golden, manifest, run_with_chanmeans, seeded
from tests.utils import assert_close

# ----------------------------------------------------------------------------------- key layout


@pytest.mark.parametrize("network", list(NETWORKS))
def test_state_dict_matches_manifest(lp_golden, network):
    cls, config = NETWORKS[network]
    entries = manifest(lp_golden, network)["entries"]
    with torch.device("meta"):
        sd = cls(config()).state_dict()
    ours = [(k, list(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in sd.items()]
    theirs = [(e["key"], e["shape"], e["dtype"]) for e in entries]
    missing = [t for t in theirs if t not in ours]
    unexpected = [o for o in ours if o not in theirs]
    assert not missing and not unexpected, f"missing {missing[:5]}, unexpected {unexpected[:5]}"
    assert ours == theirs, "same entries, different order"


def test_official_config_values(lp_golden):
    for network, (_, config) in NETWORKS.items():
        official = manifest(lp_golden, network)["config"]
        ours = config()
        for key, value in official.items():
            if key == "estimate_occlusion_map":
                assert value is True  # always on in our module
            elif key == "dense_motion_params":
                assert {k: getattr(ours.dense_motion_params, k) for k in value} == value
            else:
                assert getattr(ours, key) == value, key


# ----------------------------------------------------------------------------------- golden


@pytest.mark.slow
@pytest.mark.parametrize("precision", list(PRECISIONS))
def test_warping_golden(lp_golden, precision):
    dtype = PRECISIONS[precision]
    ref = np.load(lp_golden / "warping_module.npz")
    net = seeded("warping_module", lp_golden, dtype)
    dm = "dense_motion_network."
    names = [
        dm + "norm",
        dm + "hourglass.encoder.down_blocks.0",
        dm + "hourglass.decoder.up_blocks.4",
        dm + "hourglass",
        dm + "mask",
        dm + "occlusion",
        "third",
        "fourth",
    ]
    inputs = [torch.from_numpy(ref[k]).to(dtype) for k in ("in_feature_3d", "in_kp_driving", "in_kp_source")]
    out, means = run_with_chanmeans(net, names, *inputs)
    assert out["out"].shape == (1, 256, 64, 64) and out["out"].dtype == dtype
    assert out["deformation"].shape == (1, 16, 64, 64, 3)
    assert out["occlusion_map"].shape == (1, 1, 64, 64)
    ours = {f"out_{k}": out[k] for k in ("out", "deformation", "occlusion_map")}
    check_golden(lp_golden, "warping_module.npz", ours, means, ref, precision)


# ----------------------------------------------------------------------------------- tiny presets


def tiny_pair(dtype=torch.float32) -> tuple[AppearanceFeatureExtractor, WarpingNetwork]:
    f = AppearanceFeatureExtractor(AppearanceConfig.tiny()).to(dtype)
    w = WarpingNetwork(WarpingConfig.tiny()).to(dtype)
    seed_module(f, 1, 1.0)
    seed_module(w, 2, math.sqrt(6))
    return f, w


def keypoints(batch: int, num_kp: int = 21, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    kp_source = (torch.rand(batch, num_kp, 3, generator=g) * 2 - 1) * 0.8
    kp_driving = kp_source + (torch.rand(batch, num_kp, 3, generator=g) * 2 - 1) * 0.15
    return kp_source, kp_driving


def test_tiny_presets_end_to_end():
    f, w = tiny_pair()
    image = torch.rand(2, 3, 32, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        f_s = f(image)
        assert f_s.shape == (2, 4, 8, 8, 16)
        kp_source, kp_driving = keypoints(2)
        out = w(f_s, kp_driving, kp_source)
        assert out["out"].shape == (2, 16, 8, 16)
        assert out["deformation"].shape == (2, 8, 8, 16, 3)
        assert out["occlusion_map"].shape == (2, 1, 8, 16)
        for v in out.values():
            assert torch.isfinite(v).all() and v.std() > 1e-3
        assert ((out["occlusion_map"] > 0) & (out["occlusion_map"] < 1)).all()
        # batch elements are independent: running each alone gives the same numbers
        single = w(f_s[1:], kp_driving[1:], kp_source[1:])
        assert_close(single["out"], out["out"][1:], 1e-5, 1e-5)
        assert_close(f(image[1:]), f_s[1:], 1e-5, 1e-5)
        assert not torch.allclose(out["out"][0], out["out"][1], atol=1e-3)
        # without the deformation, the rest is unchanged
        lean = w(f_s, kp_driving, kp_source, return_deformation=False)
        assert lean["deformation"] is None
        assert_close(lean["out"], out["out"], 0.0)


def test_tiny_warping_still_keypoints_give_identity_deformation():
    # x_d = x_s makes every sparse motion the identity grid, so Φ is the grid whatever the mask:
    # G[d,h,w] = (x_w, y_h, z_d), corner-aligned linspace(-1, 1) per axis (docs/specs/liveportrait.md §6.2).
    _, w = tiny_pair(torch.float64)
    f_s = torch.randn(1, 4, 8, 16, 8, dtype=torch.float64)
    kp, _ = keypoints(1)
    with torch.no_grad():
        out = w(f_s, kp.double(), kp.double())
    z, y, x = torch.meshgrid(*(torch.linspace(-1, 1, n, dtype=torch.float64) for n in (8, 16, 8)), indexing="ij")
    assert_close(out["deformation"][0], torch.stack([x, y, z], dim=-1), 1e-12)


def test_tiny_warping_through_triton_kernels_matches_reference(kernel_device):
    # the model path through the Triton kernels (interpreter on CPU, compiled on CUDA) against the references
    pytest.importorskip("triton")
    device = kernel_device
    _, w = tiny_pair()
    w = w.to(device)
    f_s = torch.randn(1, 4, 8, 8, 8, generator=torch.Generator().manual_seed(4)).to(device)
    kp_source, kp_driving = (kp.to(device) for kp in keypoints(1, seed=7))
    with torch.no_grad():
        with use_kernels("reference"):
            ref = w(f_s, kp_driving, kp_source)
        with use_kernels("triton"):
            ours = w(f_s, kp_driving, kp_source)
    assert last_choice("dense_motion_input").use_triton and last_choice("deform_warp").use_triton
    for key in ("out", "deformation", "occlusion_map"):
        assert_close(ours[key], ref[key], 1e-5 * max(1.0, ref[key].abs().max().item()), 0.0)


# ----------------------------------------------------------------------------------- input errors


def _warp_inputs(**change):
    kp_source, kp_driving = keypoints(1)
    args = {"feature_3d": torch.randn(1, 4, 8, 8, 8), "kp_driving": kp_driving, "kp_source": kp_source}
    args.update(change)
    return args


@pytest.mark.parametrize(
    "change, match",
    [
        pytest.param(
            {"kp_driving": torch.zeros(1, 20, 3)},
            r"kp_driving must have shape \[B=1, 21, 3\].*\(1, 20, 3\)",
            id="kp-count",
        ),
        pytest.param({"kp_source": torch.zeros(1, 21, 2)}, r"kp_source must have shape.*\(1, 21, 2\)", id="kp-dims"),
        pytest.param({"kp_source": torch.zeros(2, 21, 3)}, r"kp_source must have shape \[B=1", id="kp-batch"),
        pytest.param(
            {"kp_driving": torch.zeros(1, 21, 3, dtype=torch.int64)}, r"kp_driving must be a floating", id="kp-int"
        ),
        pytest.param(
            {"feature_3d": torch.randn(1, 4, 4, 8, 8)},
            r"feature_3d must have shape \[B, 4, 8, H, W\].*\(1, 4, 4, 8, 8\)",
            id="depth",
        ),
        pytest.param({"feature_3d": torch.randn(1, 32, 8, 8)}, r"feature_3d must have shape", id="4d"),
        pytest.param({"feature_3d": torch.randn(1, 4, 8, 12, 8)}, r"multiples of 8.*\(1, 4, 8, 12, 8\)", id="odd-size"),
    ],
)
def test_warping_rejects_bad_inputs(change, match):
    w = WarpingNetwork(WarpingConfig.tiny())
    with pytest.raises(FlashTalkError, match=match):
        w(**_warp_inputs(**change))


def test_configs_reject_inconsistent_reshape():
    with pytest.raises(FlashTalkError, match="reshape_channel"):
        AppearanceConfig(reshape_channel=16)
    with pytest.raises(FlashTalkError, match="reshape_channel"):
        WarpingConfig(max_features=256)
