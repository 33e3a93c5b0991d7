"""LivePortrait appearance feature extractor F and warping network W: checkpoint key layout, golden
outputs at fp32 and fp64 (full size, once each), tiny presets end to end, input errors, and the float64
per-tap convolution of layers.py."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from flashtalk.errors import FlashTalkError
from flashtalk.kernels import last_choice, use_kernels
from flashtalk.models.layers import Conv2d, Conv3d, conv_by_taps
from flashtalk.models.liveportrait.appearance import AppearanceConfig, AppearanceFeatureExtractor
from flashtalk.models.liveportrait.warping import WarpingConfig, WarpingNetwork
from flashtalk.weights.seeded import seed_module
from tests.utils import assert_close, mismatch_report

NETWORKS = {
    "appearance_feature_extractor": (AppearanceFeatureExtractor, AppearanceConfig),
    "warping_module": (WarpingNetwork, WarpingConfig),
}
FP64_ABS_GATE = 1e-9  # float64-stored golden arrays (dbg_chanmean_*) on our fp64 path
FP32_DBG_GATE = 1e-5  # dbg_chanmean_* on our fp32 path (diagnostics; the gated outputs use tolerances.json)
PRECISIONS = {"fp32": torch.float32, "fp64": torch.float64}


def manifest(folder: Path, network: str) -> dict:
    return json.loads((folder / "manifest.json").read_text())["networks"][network]


def gate(folder: Path, npz: str, array: str, precision: str) -> tuple[float, float]:
    for g in json.loads((folder / "tolerances.json").read_text())["gates"]:
        if g["file"] == npz and g["array"] == array:
            return g[precision]["atol"], g[precision]["rtol"]
    raise KeyError(f"no gate for {npz}:{array}")


def seeded(network: str, folder: Path, dtype: torch.dtype) -> torch.nn.Module:
    """Full-size network in `dtype` with the golden weights (cast first, so fp64 gets unrounded weights)."""
    cls, _ = NETWORKS[network]
    net = cls().to(dtype)
    base_seed = json.loads((folder / "golden.json").read_text())["base_seed"]
    seed_module(net, base_seed, manifest(folder, network)["weight_gain"])
    return net


def run_with_chanmeans(net: torch.nn.Module, names: list[str], *args):
    """net(*args) plus, per sub-module name, the mean of its output over batch and space (one per channel)."""
    means: dict[str, torch.Tensor] = {}

    def hook(name):
        return lambda _m, _i, out: means.__setitem__(name, out.detach().double().mean(dim=(0, *range(2, out.dim()))))

    handles = [net.get_submodule(n).register_forward_hook(hook(n)) for n in names]
    try:
        with torch.no_grad():
            out = net(*args)
    finally:
        for h in handles:
            h.remove()
    return out, means


def check_golden(
    folder: Path, npz: str, ours: dict[str, torch.Tensor], means: dict[str, torch.Tensor], ref, precision: str
):
    failures = []
    for array, value in ours.items():
        atol, rtol = gate(folder, npz, array, precision)
        expected = torch.from_numpy(ref[array]).double()
        limit = atol + rtol * expected.abs().max().item()
        report = mismatch_report(value, expected, limit, 0.0)
        if report:
            failures.append(f"{npz}:{array} ({precision}, limit {limit:.3g}): {report}")
    dbg_gate = FP64_ABS_GATE if precision == "fp64" else FP32_DBG_GATE
    for name, value in means.items():
        key = f"dbg_chanmean_{name}"
        assert ref[key].dtype == np.float64
        report = mismatch_report(value, torch.from_numpy(ref[key]), dbg_gate, 0.0)
        if report:
            failures.append(f"{npz}:{key} ({precision}): {report}")
    assert not failures, "\n".join(failures)


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
def test_appearance_golden(lp_golden, precision):
    dtype = PRECISIONS[precision]
    ref = np.load(lp_golden / "appearance_feature_extractor.npz")
    net = seeded("appearance_feature_extractor", lp_golden, dtype)
    names = ["first", "down_blocks.0", "down_blocks.1", "second", "resblocks_3d.3dr0", "resblocks_3d.3dr5"]
    f_s, means = run_with_chanmeans(net, names, torch.from_numpy(ref["in_image"]).to(dtype))
    assert f_s.dtype == dtype and f_s.shape == (1, 32, 16, 64, 64)
    check_golden(lp_golden, "appearance_feature_extractor.npz", {"out_feature_3d": f_s}, means, ref, precision)


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


@pytest.mark.parametrize(
    "image, match",
    [
        pytest.param(torch.rand(1, 1, 32, 32), r"shape \[B, 3, H, W\].*\(1, 1, 32, 32\)", id="gray"),
        pytest.param(torch.rand(3, 32, 32), r"shape \[B, 3, H, W\]", id="no-batch"),
        pytest.param(torch.rand(1, 3, 30, 32), r"multiples of 4.*\(1, 3, 30, 32\)", id="odd-size"),
        pytest.param(torch.rand(1, 3, 32, 32) * 255, r"values must be in \[0, 1\].*max", id="0-255"),
        pytest.param(torch.rand(1, 3, 32, 32) * 2 - 1, r"values must be in \[0, 1\].*min", id="minus1-1"),
        pytest.param(torch.full((1, 3, 32, 32), float("nan")), r"values must be in \[0, 1\]", id="nan"),
        pytest.param(torch.zeros(1, 3, 32, 32, dtype=torch.uint8), r"floating.*uint8", id="uint8"),
    ],
)
def test_appearance_rejects_bad_images(image, match):
    f = AppearanceFeatureExtractor(AppearanceConfig.tiny())
    with pytest.raises(FlashTalkError, match=match):
        f(image)


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


# ----------------------------------------------------------------------------------- per-tap conv


@pytest.mark.parametrize(
    "shape, kernel, padding",
    [
        pytest.param((2, 5, 7, 9, 6), (3, 3, 3), (1, 1, 1), id="3d-k3-B2"),
        pytest.param((1, 4, 5, 6, 7), (7, 7, 7), (3, 3, 3), id="3d-k7"),
        pytest.param((1, 3, 4, 5, 6), (2, 3, 1), (0, 1, 0), id="3d-uneven"),
        pytest.param((2, 3, 11, 13), (3, 3), (1, 1), id="2d-k3"),
        pytest.param((1, 6, 8, 9), (1, 1), (0, 0), id="2d-1x1"),
    ],
)
def test_conv_by_taps_matches_torch(shape, kernel, padding):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(*shape, generator=g, dtype=torch.float64)
    w = torch.randn(4, shape[1], *kernel, generator=g, dtype=torch.float64)
    b = torch.randn(4, generator=g, dtype=torch.float64)
    conv = F.conv3d if len(kernel) == 3 else F.conv2d
    assert_close(conv_by_taps(x, w, b, padding), conv(x, w, b, padding=padding), 1e-12, 1e-12)
    assert_close(conv_by_taps(x, w, None, padding), conv(x, w, None, padding=padding), 1e-12, 1e-12)
    # the module path: float64 CPU takes the per-tap route, other dtypes the regular convolution
    layer = (Conv3d if len(kernel) == 3 else Conv2d)(shape[1], 4, kernel, padding=padding).double()
    assert_close(layer(x), conv(x, layer.weight, layer.bias, padding=padding), 1e-12, 1e-12)
    x32 = x[:, :, ::2].float()  # non-contiguous
    assert_close(layer.float()(x32), conv(x32, layer.weight, layer.bias, padding=padding), 1e-6, 1e-6)
