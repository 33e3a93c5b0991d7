"""Applying a `ControlSet` (flashtalk.controls.control_set, whose docstring says what each control does) to the
driving keypoints: `apply_controls` in three stages (pose, expression, scale and translation), the keypoint
slider rows (docs/specs/controls.md table 1.2), the automatic blink schedule, the head-distance guard and the
eye / lip retargeting deltas.
"""

from __future__ import annotations

import math
import random
from typing import TYPE_CHECKING, Any

from flashtalk.controls.control_set import DRIVING, SOURCE_EYE_RATIO, SOURCE_LIP_RATIO, ControlSet
from flashtalk.errors import FlashTalkError
from flashtalk.models.liveportrait.keypoints import EYE_KEYPOINTS, LIP_KEYPOINTS, NUM_KP, keypoint_mask

if TYPE_CHECKING:
    import torch

X, Y, Z = 0, 1, 2

# (keypoint, axis, coefficient): δ[k, a] += coefficient · value (docs/specs/controls.md table 1.2, LP convention)
KEYPOINT_ROWS: dict[str, tuple[tuple[int, int, float], ...]] = {
    "blink": ((11, Y, -0.001), (13, Y, 0.0003), (15, Y, -0.001), (16, Y, 0.0003), (1, Y, -0.00025), (2, Y, 0.00025)),
    "wink": ((11, Y, 0.001), (13, Y, -0.0003), (17, X, 0.0003), (17, Y, 0.0003), (3, Y, -0.0003)),
    # eyeball y plus LP's eyelid coupling (blink row at b = −v/2 on kps 11, 13, 15, 16), summed
    "gaze_y": ((11, Y, -0.0005), (15, Y, -0.0005), (13, Y, -0.00015), (16, Y, -0.00015)),
    "mouth_open": ((19, Y, 0.001), (19, Z, 0.0001), (17, Y, -0.0001)),
    "grin": ((20, Z, -0.001), (20, Y, -0.001), (14, Y, -0.001)),
    "purse": ((14, Y, 0.001), (3, Y, -0.0005), (7, Y, -0.0005), (17, Z, -0.0005)),
    "pout": ((19, X, 1.0),),
    "smile": (
        (20, Y, -0.01),
        (14, Y, -0.02),
        (17, Y, 0.0065),
        (17, Z, 0.003),
        (13, Y, -0.00275),
        (16, Y, -0.00275),
        (3, Y, -0.0035),
        (7, Y, -0.0035),
    ),
}
# rows chosen by the value's sign: (rows for v > 0, rows for v <= 0)
SIGNED_ROWS: dict[str, tuple[tuple[tuple[int, int, float], ...], tuple[tuple[int, int, float], ...]]] = {
    "gaze_x": (((11, X, 0.0007), (15, X, 0.001)), ((11, X, 0.001), (15, X, 0.0007))),
    "eyebrow": (((1, Y, 0.001), (2, Y, -0.001)), ((1, X, -0.001), (2, X, 0.001), (1, Y, 0.0003), (2, Y, -0.0003))),
}
GAZE_COMP_YAW, GAZE_COMP_PITCH = 0.26, 0.28  # Ditto: eyeball units per degree of head yaw / pitch
GAZE_COMP_Y_ROWS = ((11, Y, -0.001), (15, Y, -0.001))  # Ditto's vertical eyeball rows (no eyelid coupling)

BLINK_HORIZON = 25 * 60 * 30  # frames of the precomputed blink schedule (30 min at 25 fps), then it repeats
BLINK_FRAMES, BLINK_DEPTH, BLINK_GAP = 6, -20.0, (60, 100)


def _per_frame(v: Any, like: "torch.Tensor") -> "torch.Tensor":
    """A control value as [N] in like's dtype (a float broadcasts)."""
    import torch

    if isinstance(v, torch.Tensor):
        return v.to(like.device, like.dtype)
    return torch.full((like.shape[0],), float(v), dtype=like.dtype, device=like.device)


def _is(v: Any, identity: float) -> bool:
    return not hasattr(v, "shape") and v == identity


def add_rows(delta: "torch.Tensor", rows, v: Any) -> "torch.Tensor":
    """δ [N, 21, 3] += coefficient · v at each (keypoint, axis, coefficient) row (v a float or [N])."""
    vn = _per_frame(v, delta)
    for k, a, coef in rows:
        delta[:, k, a] += coef * vn
    return delta


def add_signed_rows(delta: "torch.Tensor", rows_pos, rows_neg, v: Any) -> "torch.Tensor":
    import torch

    vn = _per_frame(v, delta)
    pos = vn > 0
    add_rows(delta, rows_pos, torch.where(pos, vn, torch.zeros_like(vn)))
    return add_rows(delta, rows_neg, torch.where(pos, torch.zeros_like(vn), vn))


def euler_degrees(R: "torch.Tensor") -> tuple["torch.Tensor", "torch.Tensor", "torch.Tensor"]:
    """Inverse of keypoints.rotation_from_degrees: R = (Rz Ry Rx)ᵀ [N, 3, 3] -> (pitch, yaw, roll) [N]."""
    import torch

    pitch = torch.atan2(R[:, 1, 2], R[:, 2, 2])
    yaw = torch.atan2(-R[:, 0, 2], torch.hypot(R[:, 1, 2], R[:, 2, 2]))
    roll = torch.atan2(R[:, 0, 1], R[:, 0, 0])
    return tuple(a * (180 / math.pi) for a in (pitch, yaw, roll))


_BLINKS: dict[tuple[int, str], Any] = {}


def _blink_table(seed: int, device: Any) -> "torch.Tensor":
    """The blink values of frames 0 .. BLINK_HORIZON - 1 for `seed`, [BLINK_HORIZON] float64, made once per
    (seed, device) and kept on the device (the schedule then needs no host sync)."""
    import torch

    key = (int(seed), str(device))
    if key not in _BLINKS:
        rng = random.Random(seed)
        starts, at = [], rng.randint(*BLINK_GAP) // 2  # the first blink comes sooner
        while at < BLINK_HORIZON:
            starts.append(at)
            at += BLINK_FRAMES + rng.randint(*BLINK_GAP)
        f = torch.arange(BLINK_HORIZON, dtype=torch.float64)
        out = torch.zeros(BLINK_HORIZON, dtype=torch.float64)
        for s in starts:
            u = (f - s + 0.5) / BLINK_FRAMES
            inside = (u > 0) & (u < 1)
            out = torch.where(inside, BLINK_DEPTH * torch.sin(math.pi * u) ** 2, out)
        if len(_BLINKS) >= 64:
            _BLINKS.pop(next(iter(_BLINKS)))
        _BLINKS[key] = out.to(device)
    return _BLINKS[key]


def blink_schedule(frames: "torch.Tensor", seed: int = 0) -> "torch.Tensor":
    """Natural blinks: the blink value (0 open .. BLINK_DEPTH closed) of frames [N] (indices): a smooth
    BLINK_FRAMES-long closing and opening, with open gaps of BLINK_GAP frames drawn from `seed`. A gather
    from the device-side table (`_blink_table`); it repeats after BLINK_HORIZON frames."""
    return _blink_table(seed, frames.device)[frames.long() % BLINK_HORIZON]


def _index(keys: tuple[int, ...], device: Any) -> "torch.Tensor":
    """[NUM_KP, 1] device mask of a keypoint group (kept on the device)."""
    return keypoint_mask(keys, device)


def apply_controls(
    controls: ControlSet,
    *,
    x_c: "torch.Tensor",
    source: Any,
    generated: Any,
    reference: Any,
    lip_absolute: bool = True,
    frames: "torch.Tensor | None" = None,
    fps: float = 25.0,
    retarget: Any = None,
    seed: int = 0,
) -> "torch.Tensor":
    """Driving keypoints [N, 21, 3] (before stitching) of N generated frames with the controls.

    source: the portrait's state (R, exp, scale, t, pitch, yaw, roll [1, 1], x_s); generated / reference:
    `Motion`s (R, exp, scale, t) of the N frames and of the reference frame d_0. The relative motion is
    `flashtalk.models.liveportrait.keypoints.relative_motion` (docs/specs/joyvasa.md §3.6: R = R_d R_ref^T R_s, δ = exp_s + exp_d −
    exp_ref with the lips absolute when lip_absolute, scale = s_s s_d / s_ref, t = t_s + t_d − t_ref);
    the controls act on it in three stages: pose (`_pose_stage`), expression (`_expression_stage`), scale
    and translation (`_scale_stage`). frames: output frame indices [N] (for tracks and blinks, at `fps`);
    retarget: the stitching module (for eye_open / lip_open)."""
    import torch

    from flashtalk.models.liveportrait.keypoints import relative_motion

    c = controls
    times = None if frames is None else frames.to(torch.float64) / fps
    v = c.values_at(times)
    rel = relative_motion(source, generated, reference, lips_absolute=lip_absolute)
    R, angles = _pose_stage(c, v, source, rel.R)
    exp = _expression_stage(c, v, source, rel.exp, angles, frames, seed)
    return _scale_stage(c, v, x_c, source, R, exp, rel, retarget)


def _pose_stage(c: ControlSet, v: dict, source: Any, R_rel: "torch.Tensor") -> tuple["torch.Tensor", Any]:
    """The rotation [N, 3, 3]: the driven change R_rel (with the gains) times the source's (with the
    offsets); the region keeps the source's when the pose is not driven. Also the gained relative angles
    (pitch, yaw, roll) when look_at_camera needs them, else None."""
    from flashtalk.models.liveportrait.keypoints import rotation_from_degrees

    n = R_rel.shape[0]
    gained = not all(_is(v[f"{a}_gain"], 1.0) for a in ("pitch", "yaw", "roll"))
    rel = None
    if gained or not _is(v["look_at_camera"], 0.0):
        rel = euler_degrees(R_rel)
        rel = tuple(r * _per_frame(v[f"{a}_gain"], r) for r, a in zip(rel, ("pitch", "yaw", "roll")))
        if gained:
            R_rel = rotation_from_degrees(*rel)
    R_s = source.R
    if not all(_is(v[a], 0.0) for a in ("pitch", "yaw", "roll")):
        dp, dy, dr = (_per_frame(v[a], R_rel) for a in ("pitch", "yaw", "roll"))
        R_s = rotation_from_degrees(
            source.pitch.reshape(-1) + dp, source.yaw.reshape(-1) + dy, source.roll.reshape(-1) + dr
        )
    return (R_rel @ R_s if c.region in ("all", "pose") else R_s.expand(n, -1, -1)), rel


def _expression_stage(
    c: ControlSet, v: dict, source: Any, exp: "torch.Tensor", rel: Any, frames: "torch.Tensor | None", seed: int
) -> "torch.Tensor":
    """The expression [N, 21, 3]: the region, expression_scale, the keypoint sliders, automatic blinks,
    the gaze compensation of look_at_camera and the emotion offset (group masks on the device)."""
    import torch

    if c.region != "all":
        keep = {"pose": (), "exp": tuple(range(NUM_KP)), "lips": LIP_KEYPOINTS, "eyes": EYE_KEYPOINTS}[c.region]
        exp = torch.where(_index(keep, exp.device), exp, source.exp)
    if not _is(v["expression_scale"], 1.0):
        exp = source.exp + _per_frame(v["expression_scale"], exp)[:, None, None] * (exp - source.exp)
    edits = [name for name in (*KEYPOINT_ROWS, *SIGNED_ROWS) if not _is(v[name], 0.0)]
    blinks = c.auto_blink and frames is not None
    if not (edits or blinks or rel is not None or c.emotion is not None):
        return exp
    delta = torch.zeros_like(exp)
    for name in edits:
        if name in SIGNED_ROWS:
            add_signed_rows(delta, *SIGNED_ROWS[name], v[name])
        else:
            add_rows(delta, KEYPOINT_ROWS[name], v[name])
    if blinks:
        add_rows(delta, KEYPOINT_ROWS["blink"], blink_schedule(frames, seed))
    if not _is(v["look_at_camera"], 0.0):
        w = _per_frame(v["look_at_camera"], exp)
        head_pitch = rel[0] + _per_frame(v["pitch"], exp)
        head_yaw = rel[1] + _per_frame(v["yaw"], exp)
        add_signed_rows(delta, *SIGNED_ROWS["gaze_x"], w * GAZE_COMP_YAW * head_yaw)
        add_rows(delta, GAZE_COMP_Y_ROWS, w * GAZE_COMP_PITCH * head_pitch)
    if c.emotion is not None:
        e = _emotion_tensor(c.emotion, exp)
        if not c.emotion_lips:
            e = torch.where(_index(LIP_KEYPOINTS, exp.device), torch.zeros_like(e), e)
        delta = delta + _per_frame(v["emotion_weight"], exp)[:, None, None] * e
    return exp + delta


_EMOTIONS: dict[tuple, Any] = {}


def _emotion_tensor(values: tuple[float, ...], like: "torch.Tensor") -> "torch.Tensor":
    """The emotion offset [1, 21, 3] on like's device, made once per (values, device, dtype)."""
    import torch

    key = (values, str(like.device), like.dtype)
    if key not in _EMOTIONS:
        if len(_EMOTIONS) >= 64:
            _EMOTIONS.pop(next(iter(_EMOTIONS)))
        _EMOTIONS[key] = torch.tensor(values, dtype=like.dtype).view(1, -1, 3).to(like.device)
    return _EMOTIONS[key]


def _scale_stage(
    c: ControlSet,
    v: dict,
    x_c: "torch.Tensor",
    source: Any,
    R: "torch.Tensor",
    exp: "torch.Tensor",
    rel: Any,
    retarget: Any,
) -> "torch.Tensor":
    """Scale and translation (driven, or the source's when the pose is not), then head_distance (guarded),
    intensity and the eye / lip retargeting: x_d [N, 21, 3]."""
    import torch

    from flashtalk.models.liveportrait.keypoints import transform_keypoints

    n = R.shape[0]
    if c.region in ("all", "pose"):
        scale, t = rel.scale, rel.t
    else:
        scale, t = source.scale.expand(n, -1), source.t.expand(n, -1)
    distance = not _is(v["head_distance"], 1.0)
    intensity = not _is(v["intensity"], 1.0)
    if not (distance or intensity):
        x_d = transform_keypoints(x_c.expand(n, -1, -1), R, exp, scale, t)
        return x_d if c.eye_open is None and c.lip_open is None else x_d + retarget_deltas(c, x_d, source, retarget)
    # x_d(k) = k·A + B: A the scaled part, B translation, retargeting deltas and the intensity blend
    A = transform_keypoints(x_c.expand(n, -1, -1), R, exp, scale, torch.zeros_like(t))
    B = transform_keypoints(torch.zeros_like(A), R, torch.zeros_like(A), scale, t)
    B = B + retarget_deltas(c, A + B, source, retarget)
    if intensity:
        m = _per_frame(v["intensity"], A)[:, None, None]
        A, B = m * A, source.x_s + m * (B - source.x_s)
    k = _per_frame(v["head_distance"], A)
    if distance:
        k = head_distance_guard(A, B, k, c.head_guard)
    return k[:, None, None] * A + B


def head_distance_guard(A: "torch.Tensor", B: "torch.Tensor", k: "torch.Tensor", bound: float) -> "torch.Tensor":
    """Largest k' <= k (never below 1 when k > 1) with |k'·A + B| <= bound in x and y at every keypoint
    ([N, K, 3] each; k [N])."""
    import torch

    a, b = A[..., :2], B[..., :2]
    limit = torch.where(a > 0, (bound - b) / a, torch.where(a < 0, (-bound - b) / a, torch.full_like(a, math.inf)))
    k_max = limit.flatten(1).amin(dim=1).clamp_min(1.0)
    return torch.where(k > 1, torch.minimum(k, k_max), k)


def retarget_deltas(c: ControlSet, x_d: "torch.Tensor", source: Any, retarget: Any) -> "torch.Tensor | float":
    if c.eye_open is None and c.lip_open is None:
        return 0.0
    if retarget is None:
        raise FlashTalkError("eye_open / lip_open need the renderer's retargeting MLPs (not given)")
    import torch

    n, out = x_d.shape[0], 0.0
    if c.eye_open is not None:
        eye = c.source_eye if c.source_eye is not None else (SOURCE_EYE_RATIO, SOURCE_EYE_RATIO)
        target = _targets(c.eye_open, c.driving_eye, n, x_d, "eye_open")
        ratio = torch.cat([x_d.new_tensor(eye).expand(n, -1), target[:, None]], dim=1)
        out = out + retarget.retarget_eye_delta(source.x_s, ratio)
    if c.lip_open is not None:
        lip = c.source_lip if c.source_lip is not None else SOURCE_LIP_RATIO
        target = _targets(c.lip_open, c.driving_lip, n, x_d, "lip_open")
        ratio = torch.stack([x_d.new_full((n,), lip), target], dim=1)
        out = out + retarget.retarget_lip_delta(source.x_s, ratio)
    return out


def _targets(value: Any, driving: tuple[float, ...] | None, n: int, like: "torch.Tensor", name: str) -> "torch.Tensor":
    """[n] retargeting targets: the control's value, or the driving frames' ratios for "driving"."""
    if value != DRIVING:
        return like.new_full((n,), float(value))
    if driving is None:
        raise FlashTalkError(
            f"{name}=driving needs a driving video and LivePortrait's face models (`flashtalk download`)"
        )
    if len(driving) != n:
        raise FlashTalkError(f"{name}=driving: {len(driving)} driving ratios for {n} frames")
    return like.new_tensor(driving)
