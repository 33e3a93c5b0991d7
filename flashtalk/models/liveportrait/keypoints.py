"""Implicit-keypoint math of the LivePortrait renderer (docs/specs/liveportrait.md §4.1, §5, §10.4), batched torch functions.

Conventions: angles in degrees; `R` is the transposed rotation (Rz·Ry·Rx)ᵀ used as `x @ R` on row-vector
keypoints; keypoints are [B, 21, 3]; scale [B, 1]; translation [B, 3] whose z component is ignored.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from flashtalk.errors import FlashTalkError

NUM_BINS = 66
NUM_KP = 21
LIP_KEYPOINTS = (6, 12, 14, 17, 19, 20)  # LivePortrait's lip group (driven absolutely by JoyVASA)
EYE_KEYPOINTS = (11, 13, 15, 16, 18)  # LivePortrait's eye group
BIN_DEGREES = 3.0
BIN_OFFSET = 97.5  # bin centres run from -97.5 to +97.5 degrees


def bins_to_degrees(logits: torch.Tensor) -> torch.Tensor:
    """Head-pose bin logits [B, 66] -> expected angle in degrees [B, 1]: 3·E[bin] − 97.5 under softmax."""
    if logits.ndim != 2 or logits.shape[1] != NUM_BINS:
        raise FlashTalkError(f"pose logits must be [B, {NUM_BINS}], got {tuple(logits.shape)}")
    # Σ p_i·(3i − 97.5) equals 3·E[i] − 97.5 (Σ p_i = 1). The 66-term sum runs in float64 (a few hundred
    # flops per frame): in float32 its rounding alone reaches ~7e-6 degrees.
    wide = logits.double()
    centres = torch.arange(NUM_BINS, dtype=wide.dtype, device=wide.device) * BIN_DEGREES - BIN_OFFSET
    return (torch.softmax(wide, dim=1) * centres).sum(dim=1, keepdim=True).to(logits.dtype)


def rotation_from_degrees(pitch: torch.Tensor, yaw: torch.Tensor, roll: torch.Tensor) -> torch.Tensor:
    """Angles in degrees ([B] or [B, 1] each) -> R = (Rz·Ry·Rx)ᵀ [B, 3, 3], to be used as `x @ R`."""
    x, y, z = (a.reshape(-1) / 180 * math.pi for a in (pitch, yaw, roll))
    if not (x.shape == y.shape == z.shape):
        raise FlashTalkError(f"pitch/yaw/roll batch sizes differ: {x.shape[0]}, {y.shape[0]}, {z.shape[0]}")
    one, zero = torch.ones_like(x), torch.zeros_like(x)
    cx, sx, cy, sy, cz, sz = x.cos(), x.sin(), y.cos(), y.sin(), z.cos(), z.sin()
    rx = torch.stack([one, zero, zero, zero, cx, -sx, zero, sx, cx], dim=1).view(-1, 3, 3)
    ry = torch.stack([cy, zero, sy, zero, one, zero, -sy, zero, cy], dim=1).view(-1, 3, 3)
    rz = torch.stack([cz, -sz, zero, sz, cz, zero, zero, zero, one], dim=1).view(-1, 3, 3)
    return (rz @ ry @ rx).transpose(1, 2)


def _as_keypoints(name: str, v: torch.Tensor) -> torch.Tensor:
    if v.ndim == 2 and v.shape[1] % 3 == 0:
        v = v.view(v.shape[0], -1, 3)
    if v.ndim != 3 or v.shape[2] != 3:
        raise FlashTalkError(f"{name} must be [B, K, 3] or [B, 3K], got {tuple(v.shape)}")
    return v


def transform_keypoints(
    kp: torch.Tensor, R: torch.Tensor, exp: torch.Tensor, scale: torch.Tensor, t: torch.Tensor
) -> torch.Tensor:
    """x = s·(kp @ R + exp) + [t_x, t_y, 0]; kp, exp [B, K, 3] (or flat [B, 3K]), R [B, 3, 3], scale [B, 1],
    t [B, 3] -> [B, K, 3]."""
    kp, exp = _as_keypoints("kp", kp), _as_keypoints("exp", exp)
    if R.shape[-2:] != (3, 3) or t.shape[-1] != 3:
        raise FlashTalkError(f"R must be [B, 3, 3] and t [B, 3], got {tuple(R.shape)} and {tuple(t.shape)}")
    txy = torch.cat([t[:, :2], torch.zeros_like(t[:, 2:])], dim=1)
    return scale.reshape(-1, 1, 1) * (kp @ R + exp) + txy[:, None, :]


@dataclass
class Motion:
    """Per-frame motion of the renderer: R [B, 3, 3] (transposed convention), exp [B, 21, 3], scale [B, 1],
    t [B, 3]."""

    R: torch.Tensor
    exp: torch.Tensor
    scale: torch.Tensor
    t: torch.Tensor


_MASKS: dict[tuple[tuple[int, ...], str], torch.Tensor] = {}


def keypoint_mask(keys: tuple[int, ...], device: torch.device | str) -> torch.Tensor:
    """[NUM_KP, 1] bool, True at `keys`: made once per device and kept there (no per-call host copy)."""
    k = (tuple(keys), str(device))
    if k not in _MASKS:
        mask = torch.zeros(NUM_KP, 1, dtype=torch.bool)
        mask[list(keys)] = True
        _MASKS[k] = mask.to(device)
    return _MASKS[k]


def relative_motion(source: Motion, driving: Motion, reference: Motion, *, lips_absolute: bool = False) -> Motion:
    """THE relative motion (docs/specs/liveportrait.md §10.4, docs/specs/joyvasa.md §3.6): the source's motion plus the driving
    frames' change from the reference frame d0, broadcast over the N driving frames. The returned R is the
    rotation change R_di·R_d0ᵀ (compose with the source's: `R @ source.R`); exp = exp_s + exp_di − exp_d0
    (the lip keypoints exp_di when `lips_absolute`), s = s_s·s_di/s_d0, t = t_s + t_di − t_d0."""
    n = driving.R.shape[0]
    R = driving.R @ reference.R.transpose(1, 2)
    exp = (source.exp + (driving.exp - reference.exp)).expand(n, -1, -1)
    if lips_absolute:
        exp = torch.where(keypoint_mask(LIP_KEYPOINTS, exp.device), driving.exp, exp)
    scale = (source.scale * (driving.scale / reference.scale)).expand(n, -1)
    t = (source.t + (driving.t - reference.t)).expand(n, -1)
    return Motion(R=R, exp=exp, scale=scale, t=t)


def compose_relative(
    x_c: torch.Tensor, source: Motion, driving: Motion, reference: Motion, lips_absolute: bool = False
) -> torch.Tensor:
    """Driving keypoints [N, K, 3] of the relative motion (`relative_motion`); x_c [1 or N, K, 3]."""
    m = relative_motion(source, driving, reference, lips_absolute=lips_absolute)
    n = m.R.shape[0]
    return transform_keypoints(x_c.expand(n, -1, -1), m.R @ source.R, m.exp, m.scale, m.t)


def convex_hull_volume(points: torch.Tensor, eps: float = 1e-9) -> torch.Tensor:
    """Volume of the 3-D convex hull of each point set [B, P, 3] -> [B] (float64).

    Brute force over all point triples (P = 21 gives 1330): a triple spans a hull facet when no point lies
    strictly outside its plane. Coplanar facets are merged by their on-plane point sets and measured with
    a 2-D hull, so degenerate-but-valid inputs (several points on one face) are not double counted.
    Volume = Σ_faces (n̂·p)·area / 3 with the points centred on their mean.
    """
    if points.ndim != 3 or points.shape[2] != 3 or points.shape[1] < 4:
        raise FlashTalkError(f"convex hull needs points [B, P>=4, 3], got {tuple(points.shape)}")
    pts_all = points.detach().to("cpu", torch.float64)
    vols = []
    for pts in pts_all:
        pts = pts - pts.mean(dim=0)
        p = pts.shape[0]
        tri = torch.combinations(torch.arange(p), 3)  # [T, 3]
        a, b, c = pts[tri[:, 0]], pts[tri[:, 1]], pts[tri[:, 2]]
        n = torch.linalg.cross(b - a, c - a)  # [T, 3]
        norm = n.norm(dim=1)
        scale = pts.abs().max().clamp_min(1e-300)
        ok = norm > eps * scale * scale
        n = n[ok] / norm[ok, None]
        a = a[ok]
        d = (pts[None, :, :] - a[:, None, :]) @ n[:, :, None]  # [T, P, 1] signed distances
        d = d.squeeze(2)
        tol = eps * scale * 1e3
        outside_pos, outside_neg = (d > tol).any(dim=1), (d < -tol).any(dim=1)
        facet = outside_pos ^ outside_neg  # all others on one side (and some off the plane)
        faces: dict[frozenset, tuple[torch.Tensor, torch.Tensor]] = {}
        for i in facet.nonzero().flatten().tolist():
            on = frozenset((d[i].abs() <= tol).nonzero().flatten().tolist())
            if on not in faces:
                # outward normal: the other points lie on its negative side
                faces[on] = (-n[i] if outside_pos[i] else n[i], a[i])
        if not faces:
            raise FlashTalkError("convex hull volume: the keypoints are coplanar (zero volume)")
        vol = pts.new_zeros(())
        for on, (normal, origin) in faces.items():
            vol = vol + (normal @ origin) * _polygon_area(pts[sorted(on)], normal) / 3
        vols.append(vol.abs())
    return torch.stack(vols)


def _polygon_area(pts: torch.Tensor, normal: torch.Tensor) -> torch.Tensor:
    """Area of the 2-D convex hull of coplanar points [M, 3] lying in the plane with unit `normal`."""
    helper = torch.tensor([1.0, 0.0, 0.0], dtype=pts.dtype)
    if normal[0].abs() > 0.9:
        helper = torch.tensor([0.0, 1.0, 0.0], dtype=pts.dtype)
    e1 = torch.linalg.cross(normal, helper)
    e1 = e1 / e1.norm()
    e2 = torch.linalg.cross(normal, e1)
    uv = sorted(zip((pts @ e1).tolist(), (pts @ e2).tolist()))
    hull: list[tuple[float, float]] = []
    for chain in (uv, uv[::-1]):  # Andrew's monotone chain: lower then upper hull
        start = len(hull)
        for q in chain:
            while len(hull) >= start + 2 and _cross2(hull[-2], hull[-1], q) <= 0:
                hull.pop()
            hull.append(q)
        hull.pop()
    area = 0.0
    for i in range(len(hull)):
        (x0, y0), (x1, y1) = hull[i], hull[(i + 1) % len(hull)]
        area += x0 * y1 - x1 * y0
    return pts.new_tensor(abs(area) / 2)


def _cross2(o: tuple[float, float], a: tuple[float, float], b: tuple[float, float]) -> float:
    return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])


def motion_multiplier(x_s: torch.Tensor, x_d0: torch.Tensor) -> torch.Tensor:
    """Expression-friendly multiplier sqrt(V(x_s)) / sqrt(V(x_d0)), V the convex-hull volume -> [B] in the
    dtype and device of x_s."""
    v_s, v_d = convex_hull_volume(x_s), convex_hull_volume(x_d0)
    if bool((v_d <= 0).any()):
        raise FlashTalkError("motion multiplier: the reference driving keypoints have zero hull volume")
    return (v_s.sqrt() / v_d.sqrt()).to(x_s.device, x_s.dtype)


def expression_friendly(
    x_d: torch.Tensor, x_d0: torch.Tensor, x_s: torch.Tensor, multiplier: torch.Tensor
) -> torch.Tensor:
    """x_d ← (x_d − x_d0)·m + x_s, so the reference frame maps exactly onto the source keypoints."""
    return (x_d - x_d0) * multiplier.reshape(-1, 1, 1) + x_s
