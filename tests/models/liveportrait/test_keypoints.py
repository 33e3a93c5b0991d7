"""Implicit-keypoint math (`flashtalk.models.liveportrait.keypoints`) against the golden data (fp32 and fp64): angle
bins, rotation and keypoint transform, relative motion composition; the rotation convention by hand; convex-hull
volumes of known shapes."""

from __future__ import annotations

import pytest
import torch

from flashtalk.errors import FlashTalkError
from flashtalk.models.liveportrait import keypoints as kpm
from tests.models.liveportrait.helpers import DTYPES, _load, _seeded, _tol
from tests.utils import assert_close


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
