"""Motion extractor M, SPADE decoder G, stitching/retargeting MLPs and keypoint math against the golden
data (fp32 and fp64), the tiny presets end to end through the Renderer, and bad inputs."""

from __future__ import annotations

import functools
import json

import numpy as np
import pytest
import torch

from flashtalk.errors import FlashTalkError
from flashtalk.models.liveportrait import keypoints as kpm
from flashtalk.models.liveportrait.motion_extractor import MotionExtractor, MotionExtractorConfig
from flashtalk.models.liveportrait.renderer import Renderer, RendererConfig, build_network
from flashtalk.models.liveportrait.spade import SPADEConfig, SPADEDecoder, SpectralNormConv2d
from flashtalk.models.liveportrait.stitching import StitchingRetargeting
from flashtalk.weights.liveportrait import seeded_renderer, seeded_state_dict
from tests.utils import assert_close

DTYPES = [pytest.param(torch.float32, id="fp32"), pytest.param(torch.float64, id="fp64")]


def _tol(dtype: torch.dtype, fp32: float = 1e-5) -> float:
    return fp32 if dtype == torch.float32 else 1e-9


def _load(folder, name: str, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    with np.load(folder / name) as npz:
        return {k: torch.from_numpy(npz[k]).to(dtype) for k in npz.files}


@functools.cache
def _seeded_state(folder, network: str) -> dict[str, torch.Tensor]:
    """float64 golden-rule weights, generated once per network for the whole module (M: 28 M, G: 55 M)."""
    return seeded_state_dict(network, json.loads((folder / "manifest.json").read_text()), 0)


def _seeded(folder, network: str, dtype: torch.dtype) -> torch.nn.Module:
    module = build_network(network).to(dtype)
    module.load_state_dict(_seeded_state(folder, network), strict=True)
    return module


@pytest.fixture(scope="module", autouse=True)
def _drop_cached_weights():
    yield
    _seeded_state.cache_clear()


@pytest.mark.parametrize("network", ["motion_extractor", "spade_generator", "stitching_retargeting_module"])
def test_state_dict_matches_manifest(lp_golden, network):
    net = json.loads((lp_golden / "manifest.json").read_text())["networks"][network]
    if "sub_networks" in net:
        expected = [
            (f"{p}.{e['key']}", tuple(e["shape"])) for p, s in net["sub_networks"].items() for e in s["entries"]
        ]
    else:
        expected = [(e["key"], tuple(e["shape"])) for e in net["entries"]]
    ours = [(k, tuple(v.shape)) for k, v in build_network(network).state_dict().items()]
    assert ours == expected  # same keys, shapes and order


@pytest.mark.parametrize("dtype", DTYPES)
def test_motion_extractor_golden(lp_golden, dtype):
    d = _load(lp_golden, "motion_extractor.npz", dtype)
    with torch.no_grad():
        out = _seeded(lp_golden, "motion_extractor", dtype)(d["in_image"])
    for k in ("pitch", "yaw", "roll", "t", "exp", "scale", "kp"):
        assert_close(out[k], d[f"out_{k}"], _tol(dtype))
    # The two batch elements differ by far more than the tolerance: a batch mix-up would fail above.
    assert (d["out_kp"][0] - d["out_kp"][1]).abs().max() > 1e-2
    pitch, yaw, roll = (kpm.bins_to_degrees(out[k]) for k in ("pitch", "yaw", "roll"))
    R = kpm.rotation_from_degrees(pitch, yaw, roll)
    x = kpm.transform_keypoints(out["kp"], R, out["exp"], out["scale"], out["t"])
    for name, ours in (("pitch_deg", pitch), ("yaw_deg", yaw), ("roll_deg", roll), ("R", R), ("x", x)):
        assert_close(ours, d[f"post_{name}"], _tol(dtype))


def test_spade_generator_golden_fp32(lp_golden):
    """Full-size G once in fp32 (the fp64 run is part of test_verify_golden)."""
    d = _load(lp_golden, "spade_generator.npz", torch.float32)
    g = _seeded(lp_golden, "spade_generator", torch.float32)
    with torch.no_grad():
        out = g(d["in_feature"])
    assert out.shape == (1, 3, 512, 512)
    assert_close(out, d["out_image"], 1e-5)


def test_spectral_norm_sigma_golden_fp64(lp_golden):
    g = _seeded(lp_golden, "spade_generator", torch.float64)
    d = _load(lp_golden, "spade_generator.npz", torch.float64)
    names = [k.removeprefix("dbg_sigma_") for k in d if k.startswith("dbg_sigma_")]
    assert len(names) == 18
    for name in names:
        layer = g.get_submodule(name)
        assert isinstance(layer, SpectralNormConv2d)
        assert abs(layer.sigma().item() - d[f"dbg_sigma_{name}"].item()) < 1e-12, name


def test_spectral_norm_matches_torch_eval():
    """Our W_eff = weight_orig / (u·W v) equals torch's legacy spectral_norm in eval mode, with u, v
    left by a few training-mode power iterations (so they are not the seeded ones)."""
    ref = torch.nn.utils.spectral_norm(torch.nn.Conv2d(6, 5, 3, padding=1).double())
    x = torch.randn(2, 6, 9, 7, dtype=torch.float64)
    ref.train()
    for _ in range(3):
        ref(x)
    ref.eval()
    ours = SpectralNormConv2d(6, 5, 3, padding=1).double()
    ours.load_state_dict(ref.state_dict(), strict=True)
    with torch.no_grad():
        assert_close(ours(x), ref(x), 1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
def test_stitching_retargeting_golden(lp_golden, dtype):
    d = _load(lp_golden, "stitching_retargeting.npz", dtype)
    s = _seeded(lp_golden, "stitching_retargeting_module", dtype)
    x_s, x_d = d["in_kp_source"], d["in_kp_driving"]
    with torch.no_grad():
        assert_close(s.stitch_delta(x_s, x_d), d["out_stitch_delta"], _tol(dtype))
        assert_close(s.stitch(x_s, x_d), d["out_kp_driving_stitched"], _tol(dtype))
        assert_close(s.retarget_eye_delta(x_s, d["in_eye_ratio"]), d["out_eye_delta"], _tol(dtype))
        assert_close(s.retarget_lip_delta(x_s, d["in_lip_ratio"]), d["out_lip_delta"], _tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_keypoint_transform_golden(lp_golden, dtype):
    d = _load(lp_golden, "keypoint_transform.npz", dtype)
    pitch, yaw, roll = (kpm.bins_to_degrees(d[f"in_{k}_logits"]) for k in ("pitch", "yaw", "roll"))
    R = kpm.rotation_from_degrees(pitch, yaw, roll)
    for name, ours in (("pitch_deg", pitch), ("yaw_deg", yaw), ("roll_deg", roll), ("R", R)):
        assert_close(ours, d[f"out_{name}"], _tol(dtype))
    assert_close(kpm.transform_keypoints(d["in_kp"], R, d["in_exp"], d["in_scale"], d["in_t"]), d["out_x"], _tol(dtype))
    a = d["in_angles_deg"]
    assert_close(kpm.rotation_from_degrees(a[:, 0], a[:, 1], a[:, 2]), d["out_R_from_angles"], _tol(dtype))


def test_rotation_convention_by_hand():
    """Yaw 90°: rot = Ry maps the column vector x̂ to −ẑ, so the row vector x̂ @ R is (0, 0, −1)."""
    R = kpm.rotation_from_degrees(
        torch.zeros(1, dtype=torch.float64),
        torch.full((1,), 90.0, dtype=torch.float64),
        torch.zeros(1, dtype=torch.float64),
    )
    x = torch.tensor([[[1.0, 0.0, 0.0]]], dtype=torch.float64) @ R
    assert_close(x, torch.tensor([[[0.0, 0.0, -1.0]]], dtype=torch.float64), 1e-12)


def _motion(d, who):
    R = kpm.rotation_from_degrees(d[f"in_{who}_pitch"], d[f"in_{who}_yaw"], d[f"in_{who}_roll"])
    return kpm.Motion(R=R, exp=d[f"in_{who}_exp"], scale=d[f"in_{who}_scale"], t=d[f"in_{who}_t"])


@pytest.mark.parametrize("dtype", DTYPES)
def test_motion_compose_golden(lp_golden, dtype):
    d = _load(lp_golden, "motion_compose.npz", dtype)
    s = _seeded(lp_golden, "stitching_retargeting_module", dtype)
    src, drv = _motion(d, "src"), _motion(d, "drv")
    ref = kpm.Motion(R=drv.R[:1], exp=drv.exp[:1], scale=drv.scale[:1], t=drv.t[:1])
    x_s = kpm.transform_keypoints(d["in_src_kp"], src.R, src.exp, src.scale, src.t)
    x_pose = kpm.compose_relative(d["in_src_kp"], src, drv, ref)
    m = kpm.motion_multiplier(x_s, x_pose[:1])
    x_expr = kpm.expression_friendly(x_pose, x_pose[:1], x_s, m)
    tol = _tol(dtype)
    assert_close(src.R, d["out_R_s"], tol)
    assert_close(x_s, d["out_x_s"], tol)
    assert_close(m.reshape(()), d["out_motion_multiplier"], tol)
    assert_close(x_pose, d["out_x_d_pose"], tol)
    assert_close(x_expr, d["out_x_d_expr"], tol)
    assert_close(x_expr[0], x_s[0], tol)  # the reference frame maps onto the source exactly
    with torch.no_grad():
        assert_close(s.stitch(x_s, x_pose), d["out_x_d_pose_stitched"], tol)
        assert_close(s.stitch(x_s, x_expr), d["out_x_d_expr_stitched"], tol)


def test_convex_hull_volume_known_shapes():
    g = torch.Generator().manual_seed(3)
    # Unit cube scaled by 2 (volume 8) with 13 interior points and points on faces and edges.
    corners = torch.tensor([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)], dtype=torch.float64)
    inside = torch.rand(9, 3, generator=g, dtype=torch.float64) * 0.8 + 0.1
    on_faces = torch.tensor([[0.5, 0.5, 0.0], [0.5, 0.5, 1.0], [0.0, 0.3, 0.7], [1.0, 0.5, 0.5]], dtype=torch.float64)
    cube = torch.cat([corners, inside, on_faces]) * 2
    # A tetrahedron: volume |det| / 6, with interior points as convex combinations of its corners.
    tet = torch.tensor([[0.1, 0.2, 0.3], [1.3, 0.1, 0.2], [0.4, 1.1, 0.0], [0.2, 0.3, 0.9]], dtype=torch.float64)
    w = torch.rand(17, 4, generator=g, dtype=torch.float64)
    tet_pts = torch.cat([tet, (w / w.sum(1, keepdim=True)) @ tet])
    vol_tet = abs(torch.linalg.det(tet[1:] - tet[0]).item()) / 6
    vols = kpm.convex_hull_volume(torch.stack([cube, tet_pts]))
    assert abs(vols[0].item() - 8.0) < 1e-12
    assert abs(vols[1].item() - vol_tet) < 1e-12
    # Invariant under rotation and translation of the point set.
    R = kpm.rotation_from_degrees(*(torch.tensor([a], dtype=torch.float64) for a in (20.0, -35.0, 50.0)))
    moved = kpm.convex_hull_volume((tet_pts @ R[0] + torch.tensor([3.0, -1.0, 0.5], dtype=torch.float64))[None])
    assert abs(moved.item() - vol_tet) < 1e-12
    with pytest.raises(FlashTalkError, match="coplanar"):
        kpm.convex_hull_volume(torch.cat([cube[:, :2], torch.zeros(cube.shape[0], 1, dtype=torch.float64)], 1)[None])


def test_tiny_presets_shapes():
    m = MotionExtractor(MotionExtractorConfig.tiny()).eval()
    with torch.no_grad():
        out = m(torch.rand(2, 3, 256, 256))
    shapes = {k: tuple(v.shape) for k, v in out.items()}
    assert shapes == {
        "kp": (2, 63),
        "scale": (2, 1),
        "pitch": (2, 66),
        "yaw": (2, 66),
        "roll": (2, 66),
        "t": (2, 3),
        "exp": (2, 63),
    }
    g = SPADEDecoder(SPADEConfig.tiny()).eval()
    with torch.no_grad():
        img = g(torch.randn(1, SPADEConfig.tiny().input_channels, 16, 16))
    assert img.shape == (1, 3, 128, 128) and bool(((img >= 0) & (img <= 1)).all())


def test_tiny_renderer_end_to_end():
    r = seeded_renderer("tiny", base_seed=7)
    image = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(1))
    src = r.encode_source(image)
    assert src.f_s.shape == (1, 4, 8, 64, 64) and src.x_s.shape == (1, 21, 3)
    n = 3
    g = torch.Generator().manual_seed(2)
    x_d = r.driving_keypoints(
        src,
        pitch=torch.tensor([0.0, 10.0, -15.0]),
        yaw=torch.tensor([0.0, 5.0, 20.0]),
        roll=torch.zeros(n),
        exp=src.exp + 0.02 * torch.randn(n, 21, 3, generator=g),
        scale=src.scale.expand(n, 1),
        t=src.t.expand(n, 3),
    )
    frames = r.render(src, x_d)
    assert frames.shape == (n, 3, 512, 512)
    assert bool(torch.isfinite(frames).all()) and frames.min() >= 0 and frames.max() <= 1
    assert (frames[0] - frames[2]).abs().max() > 1e-4  # different poses give different frames
    # Batched over frames == one frame at a time (f_s broadcast, no cross-frame mixing).
    # (fp32 convolutions pick batch-dependent algorithms: ~1e-5 apart; a frame mix-up is > 1e-3.)
    assert_close(r.render(src, x_d[1:2]), frames[1:2], 1e-4)
    # Stitching changes the keypoints the warp sees.
    assert (r.render(src, x_d[2:], stitching=False) - frames[2:]).abs().max() > 1e-6


def test_bad_inputs():
    r = Renderer(RendererConfig.from_name("tiny"))
    with pytest.raises(FlashTalkError, match=r"image must be \[B, 3, 256, 256\]"):
        r.encode_source(torch.rand(1, 3, 128, 128))
    with pytest.raises(FlashTalkError, match=r"\[0, 1\]"):
        r.encode_source(torch.rand(1, 3, 256, 256) * 255)
    with pytest.raises(FlashTalkError, match="float"):
        r.encode_source(torch.zeros(1, 3, 256, 256, dtype=torch.uint8))
    src = r.encode_source(torch.rand(1, 3, 256, 256))
    with pytest.raises(FlashTalkError, match=r"x_d must be driving keypoints \[N, 21, 3\]"):
        r.render(src, torch.zeros(2, 20, 3))
    with pytest.raises(FlashTalkError, match="pitch, yaw, roll"):
        r.driving_keypoints(src, exp=src.exp, scale=src.scale, t=src.t)
    with pytest.raises(FlashTalkError, match="unknown renderer preset"):
        RendererConfig.from_name("huge")
    with pytest.raises(FlashTalkError, match=r"feature must be \[B, 16, H, W\]"):
        r.spade_generator(torch.zeros(1, 15, 8, 8))
    with pytest.raises(FlashTalkError, match=r"\[B, 66\]"):
        kpm.bins_to_degrees(torch.zeros(2, 65))
    s = StitchingRetargeting()
    with pytest.raises(FlashTalkError, match="x_d must be"):
        s.stitch(torch.zeros(1, 21, 3), torch.zeros(1, 63))
    with pytest.raises(FlashTalkError, match=r"eye_ratio must be \[B, 3\]"):
        s.retarget_eye_delta(torch.zeros(1, 21, 3), torch.zeros(1, 2))
