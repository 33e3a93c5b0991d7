"""Controls applied to the keypoint motion (`flashtalk.controls.apply`): each control moves exactly the keypoints and
axes of docs/specs/controls.md by the stated amounts; identity is bit for bit; tracks per frame; guard; the blink
schedule; the committed contact sheet.

Expected offsets are written out from the spec's table (1.2), not computed by the code under test."""

from __future__ import annotations

import json

import pytest
import torch

from flashtalk.controls.apply import apply_controls, blink_schedule
from flashtalk.controls.control_set import ControlSet
from flashtalk.errors import FlashTalkError
from flashtalk.models.liveportrait.keypoints import LIP_KEYPOINTS, Motion, rotation_from_degrees, transform_keypoints

D = torch.float64


class _Source:
    def __init__(self, g):
        self.pitch, self.yaw, self.roll = (torch.tensor([[a]], dtype=D) for a in (4.0, -7.0, 2.0))
        self.R = rotation_from_degrees(self.pitch, self.yaw, self.roll)
        self.exp = torch.randn(1, 21, 3, generator=g, dtype=D) * 0.02
        self.scale = torch.tensor([[0.8]], dtype=D)
        self.t = torch.tensor([[0.03, -0.02, 0.01]], dtype=D)
        self.x_c = torch.randn(1, 21, 3, generator=g, dtype=D) * 0.2
        self.x_s = transform_keypoints(self.x_c, self.R, self.exp, self.scale, self.t)


def _motion(g, n, angles=None):
    angles = angles if angles is not None else [torch.randn(n, generator=g, dtype=D) * 8 for _ in range(3)]
    return Motion(
        R=rotation_from_degrees(*angles),
        exp=torch.randn(n, 21, 3, generator=g, dtype=D) * 0.02,
        scale=1 + 0.05 * torch.rand(n, 1, generator=g, dtype=D),
        t=torch.randn(n, 3, generator=g, dtype=D) * 0.02,
    )


@pytest.fixture
def scene():
    g = torch.Generator().manual_seed(7)
    return _Source(g), _motion(g, 5), _motion(g, 1)


def _apply(scene, c, **kw):
    src, gen, ref = scene
    return apply_controls(c, x_c=src.x_c, source=src, generated=gen, reference=ref, **kw)


def _uncontrolled(scene, R_s=None, exp_override=None):
    """docs/specs/joyvasa.md §3.6 written out: R = R_d R_ref^T R_s; δ = exp_s + exp_d − exp_ref, lips absolute."""
    src, gen, ref = scene
    R = gen.R @ ref.R.transpose(1, 2) @ (src.R if R_s is None else R_s)
    exp = (src.exp + (gen.exp - ref.exp)).clone()
    exp[:, list(LIP_KEYPOINTS)] = gen.exp[:, list(LIP_KEYPOINTS)]
    if exp_override is not None:
        exp = exp_override
    scale, t = src.scale * (gen.scale / ref.scale), src.t + (gen.t - ref.t)
    return transform_keypoints(src.x_c.expand(5, -1, -1), R, exp, scale, t), scale


def test_identity_is_bit_for_bit(scene):
    want, _ = _uncontrolled(scene)
    assert torch.equal(_apply(scene, ControlSet()), want)
    zeros = ControlSet(
        yaw=0,
        pitch=0,
        roll=0,
        yaw_gain=1,
        expression_scale=1,
        intensity=1,
        head_distance=1,
        gaze_x=0,
        gaze_y=0,
        look_at_camera=0,
        blink=0,
        eyebrow=0,
        wink=0,
        mouth_open=0,
        grin=0,
        purse=0,
        pout=0,
        smile=0,
        emotion_weight=1,
    )
    assert torch.equal(_apply(scene, zeros, frames=torch.arange(5)), want)
    assert ControlSet().is_identity() and zeros.is_identity() and not ControlSet(smile=0.1).is_identity()


# (control, value, {(keypoint, axis): change of δ}) from docs/specs/controls.md table 1.2 times the value
ROWS = [
    ("gaze_x", 5.0, {(11, 0): 0.0035, (15, 0): 0.005}),
    ("gaze_x", -4.0, {(11, 0): -0.004, (15, 0): -0.0028}),
    ("gaze_y", 10.0, {(11, 1): -0.005, (15, 1): -0.005, (13, 1): -0.0015, (16, 1): -0.0015}),
    ("blink", -10.0, {(11, 1): 0.01, (13, 1): -0.003, (15, 1): 0.01, (16, 1): -0.003, (1, 1): 0.0025, (2, 1): -0.0025}),
    ("eyebrow", 10.0, {(1, 1): 0.01, (2, 1): -0.01}),
    ("eyebrow", -10.0, {(1, 0): 0.01, (2, 0): -0.01, (1, 1): -0.003, (2, 1): 0.003}),
    ("wink", 20.0, {(11, 1): 0.02, (13, 1): -0.006, (17, 0): 0.006, (17, 1): 0.006, (3, 1): -0.006}),
    ("mouth_open", 60.0, {(19, 1): 0.06, (19, 2): 0.006, (17, 1): -0.006}),
    ("grin", 10.0, {(20, 2): -0.01, (20, 1): -0.01, (14, 1): -0.01}),
    ("purse", -10.0, {(14, 1): -0.01, (3, 1): 0.005, (7, 1): 0.005, (17, 2): 0.005}),
    ("pout", 0.05, {(19, 0): 0.05}),
    (
        "smile",
        1.0,
        {
            (20, 1): -0.01,
            (14, 1): -0.02,
            (17, 1): 0.0065,
            (17, 2): 0.003,
            (13, 1): -0.00275,
            (16, 1): -0.00275,
            (3, 1): -0.0035,
            (7, 1): -0.0035,
        },
    ),
]


def _expected_delta(rows):
    d = torch.zeros(21, 3, dtype=D)
    for (k, a), v in rows.items():
        d[k, a] = v
    return d


@pytest.mark.parametrize("name, value, rows", ROWS, ids=[f"{r[0]}={r[1]:g}" for r in ROWS])
def test_keypoint_sliders_move_exactly_their_rows(scene, name, value, rows):
    base, scale = _uncontrolled(scene)
    moved = _apply(scene, ControlSet(**{name: value}))
    # δ enters un-rotated: x_d changes by scale · Δδ, at the table's keypoints and axes only
    want = scale[:, :, None] * _expected_delta(rows)
    torch.testing.assert_close(moved - base, want.expand(5, -1, -1), atol=1e-12, rtol=0)


def test_look_at_camera_counter_rotates_the_pupils(scene):
    src, _, ref = scene
    gen = _motion(
        torch.Generator().manual_seed(1),
        5,
        [torch.zeros(5, dtype=D), torch.full((5,), 10.0, dtype=D), torch.zeros(5, dtype=D)],
    )
    ref = Motion(R=torch.eye(3, dtype=D)[None], exp=ref.exp, scale=ref.scale, t=ref.t)
    s2 = (src, gen, ref)
    base = apply_controls(ControlSet(), x_c=src.x_c, source=src, generated=gen, reference=ref)
    on = apply_controls(ControlSet(look_at_camera=1.0), x_c=src.x_c, source=src, generated=gen, reference=ref)
    scale = src.scale * gen.scale / ref.scale
    dx = 0.26 * 10.0  # Ditto: 0.26 eyeball units per degree of yaw, positive split 0.0007 / 0.001
    want = scale[:, :, None] * _expected_delta({(11, 0): 0.0007 * dx, (15, 0): 0.001 * dx})
    torch.testing.assert_close(on - base, want.expand(5, -1, -1), atol=1e-12, rtol=0)
    del s2


def test_pose_offsets_and_gains(scene):
    src, gen, ref = scene
    R_s = rotation_from_degrees(src.pitch - 5, src.yaw + 20, src.roll + 3)
    want, _ = _uncontrolled(scene, R_s=R_s)
    torch.testing.assert_close(_apply(scene, ControlSet(yaw=20, pitch=-5, roll=3)), want, atol=1e-12, rtol=0)
    # gain 0 on all axes: the head keeps the source pose (R = R_s), expression still driven
    frozen = _apply(scene, ControlSet(yaw_gain=0, pitch_gain=0, roll_gain=0))
    exp = (src.exp + gen.exp - ref.exp).clone()
    exp[:, list(LIP_KEYPOINTS)] = gen.exp[:, list(LIP_KEYPOINTS)]
    scale, t = src.scale * gen.scale / ref.scale, src.t + gen.t - ref.t
    torch.testing.assert_close(
        frozen,
        transform_keypoints(src.x_c.expand(5, -1, -1), src.R.expand(5, -1, -1), exp, scale, t),
        atol=1e-12,
        rtol=0,
    )
    # gain 2 on a pure yaw change doubles it
    yaw = torch.tensor([6.0, -3.0], dtype=D)
    zero = torch.zeros(2, dtype=D)
    g2 = Motion(R=rotation_from_degrees(zero, yaw, zero), exp=gen.exp[:2], scale=gen.scale[:2], t=gen.t[:2])
    r0 = Motion(R=torch.eye(3, dtype=D)[None], exp=ref.exp, scale=ref.scale, t=ref.t)
    got = apply_controls(ControlSet(yaw_gain=2), x_c=src.x_c, source=src, generated=g2, reference=r0)
    g4 = Motion(R=rotation_from_degrees(zero, 2 * yaw, zero), exp=g2.exp, scale=g2.scale, t=g2.t)
    torch.testing.assert_close(
        got, apply_controls(ControlSet(), x_c=src.x_c, source=src, generated=g4, reference=r0), atol=1e-12, rtol=0
    )


def test_expression_scale_intensity_and_regions(scene):
    src, gen, ref = scene
    base, scale = _uncontrolled(scene)
    exp = (src.exp + gen.exp - ref.exp).clone()
    exp[:, list(LIP_KEYPOINTS)] = gen.exp[:, list(LIP_KEYPOINTS)]
    want, _ = _uncontrolled(scene, exp_override=src.exp + 1.5 * (exp - src.exp))
    torch.testing.assert_close(_apply(scene, ControlSet(expression_scale=1.5)), want, atol=1e-12, rtol=0)
    torch.testing.assert_close(
        _apply(scene, ControlSet(intensity=0.5)), src.x_s + 0.5 * (base - src.x_s), atol=1e-12, rtol=0
    )
    pose_only, _ = _uncontrolled(scene, exp_override=src.exp.expand(5, -1, -1))
    torch.testing.assert_close(_apply(scene, ControlSet(region="pose")), pose_only, atol=1e-12, rtol=0)
    # lips only: source pose, scale and translation; the source expression except the lip keypoints
    lips = src.exp.expand(5, -1, -1).clone()
    lips[:, list(LIP_KEYPOINTS)] = gen.exp[:, list(LIP_KEYPOINTS)]
    want = transform_keypoints(
        src.x_c.expand(5, -1, -1), src.R.expand(5, -1, -1), lips, src.scale.expand(5, -1), src.t.expand(5, -1)
    )
    torch.testing.assert_close(_apply(scene, ControlSet(region="lips")), want, atol=1e-12, rtol=0)


def test_head_distance_scales_and_the_guard_keeps_the_face_in_the_crop(scene):
    base, _ = _uncontrolled(scene)
    src, gen, ref = scene
    txy = (src.t + gen.t - ref.t).clone()
    txy[:, 2] = 0
    got = _apply(scene, ControlSet(head_distance=1.1))
    assert (base[..., :2].abs().max() * 1.1 + txy.abs().max()) < 0.95  # far from the guard here
    torch.testing.assert_close(got - txy[:, None], 1.1 * (base - txy[:, None]), atol=1e-12, rtol=0)
    near = _apply(scene, ControlSet(head_distance=0.9))
    torch.testing.assert_close(near - txy[:, None], 0.9 * (base - txy[:, None]), atol=1e-12, rtol=0)
    # k = 2 would push keypoints past the bound: the guard lowers k per frame so the farthest one sits on it
    bound = round(float(base[..., :2].abs().max()) * 1.2, 3)
    assert float((2 * (base - txy[:, None]) + txy[:, None])[..., :2].abs().max()) > bound
    guarded = _apply(scene, ControlSet(head_distance=2.0, head_guard=bound))
    assert float(guarded[..., :2].abs().max()) <= bound + 1e-12
    torch.testing.assert_close(
        guarded[..., :2].abs().flatten(1).amax(1), torch.full((5,), bound, dtype=D), atol=1e-12, rtol=0
    )
    k = (guarded - txy[:, None])[..., :2].norm() / (base - txy[:, None])[..., :2].norm()
    assert 1.0 < float(k) < 2.0


def test_emotion_offset_masked_off_the_lips(scene):
    base, scale = _uncontrolled(scene)
    e = torch.linspace(-0.01, 0.02, 63, dtype=D)
    masked = _apply(scene, ControlSet(emotion=tuple(e.tolist()), emotion_weight=0.5))
    lips = list(LIP_KEYPOINTS)
    assert torch.equal(masked[:, lips], base[:, lips])
    others = [k for k in range(21) if k not in LIP_KEYPOINTS]
    want = scale[:, :, None] * 0.5 * e.view(1, 21, 3)
    torch.testing.assert_close((masked - base)[:, others], want[:, others].expand(5, -1, -1), atol=1e-12, rtol=0)
    full = _apply(scene, ControlSet(emotion=tuple(e.tolist()), emotion_weight=0.5, emotion_lips=True))
    torch.testing.assert_close(full - base, want.expand(5, -1, -1), atol=1e-12, rtol=0)


def test_auto_blink_moves_only_the_blink_row():
    frames = torch.arange(400)
    b = blink_schedule(frames, seed=3)
    assert torch.equal(b, blink_schedule(frames, seed=3))
    assert float(b.max()) == 0.0 and -20.0 <= float(b.min()) < -15.0  # closes nearly fully
    closed = (b < -1).int()
    starts = int((closed[1:] - closed[:-1] == 1).sum())
    assert 3 <= starts <= 7  # one blink per 60..100 open frames
    g = torch.Generator().manual_seed(2)
    src, gen, ref = _Source(g), _motion(g, 400), _motion(g, 1)
    kw = dict(x_c=src.x_c, source=src, generated=gen, reference=ref, frames=frames, seed=3)
    diff = apply_controls(ControlSet(auto_blink=True), **kw) - apply_controls(ControlSet(), **kw)
    moved = {(k, a) for k in range(21) for a in range(3) if float(diff[:, k, a].abs().max()) > 0}
    assert moved == {(11, 1), (13, 1), (15, 1), (16, 1), (1, 1), (2, 1)}


# ------------------------------------------------------------------------------------------------ tracks


def test_track_file_and_per_frame_application(scene, tmp_path):
    path = tmp_path / "track.json"
    path.write_text(
        json.dumps(
            {"interpolation": "linear", "keyframes": {"0": {"yaw": 0, "gaze_x": 0}, "0.2": {"yaw": 10, "gaze_x": 8}}}
        )
    )
    c = ControlSet.from_mapping({"controls": str(path)})
    assert set(c.tracks) == {"yaw", "gaze_x"}
    frames = torch.arange(5)  # 0, 40, ... 160 ms at 25 fps: yaw 0, 2, 4, 6, 8
    got = _apply(scene, c, frames=frames)
    for i in range(5):
        one = ControlSet(yaw=2.0 * i, gaze_x=1.6 * i)
        torch.testing.assert_close(got[i], _apply(scene, one)[i], atol=1e-12, rtol=0)
    with pytest.raises(FlashTalkError, match="frame times"):
        _apply(scene, c)


# ------------------------------------------------------------------------------------------------ contact sheet, blink schedule


def test_contact_sheet_is_committed_and_small():
    from pathlib import Path

    from PIL import Image

    sheet = Path(__file__).resolve().parents[2] / "docs" / "controls_contact_sheet.png"
    assert sheet.is_file() and sheet.stat().st_size <= 300 * 1024
    with Image.open(sheet) as im:
        assert im.format == "PNG" and im.size[0] >= 4 * 128


def test_blink_schedule_is_a_device_table_gather():
    """The schedule needs no host sync: a table per (seed, device), indexed by frame (repeats after the horizon)."""
    from flashtalk.controls.apply import BLINK_DEPTH, BLINK_HORIZON

    frames = torch.arange(0, 400)
    b = blink_schedule(frames, seed=3)
    assert b.min() < 0.9 * BLINK_DEPTH and b.max() == 0 and (b < 0).sum() > 10  # closes, opens again
    torch.testing.assert_close(blink_schedule(frames + BLINK_HORIZON, seed=3), b, atol=0, rtol=0)
    assert not torch.equal(blink_schedule(frames, seed=4), b)
