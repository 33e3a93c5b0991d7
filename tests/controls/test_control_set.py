"""ControlSet (`flashtalk.controls.control_set`): keyframed tracks (keys hit, no jumps, no overshoot), track files and
their errors, bad controls, live updates with `merged`."""

from __future__ import annotations

import pytest
import torch

from flashtalk.controls.control_set import ControlSet, Track, load_tracks
from flashtalk.errors import FlashTalkError

D = torch.float64


@pytest.mark.parametrize("interp", ["monotone", "smoothstep", "linear"])
def test_tracks_hit_keys_without_jumps_or_overshoot(interp):
    tr = Track((0.0, 1.0, 1.5, 3.0), (0.0, 10.0, 10.0, -5.0), interp)
    assert tr(torch.tensor([0.0, 1.0, 1.5, 3.0])).tolist() == [0.0, 10.0, 10.0, -5.0]
    assert tr(torch.tensor([-1.0, 9.0])).tolist() == [0.0, -5.0]  # held outside the keys
    t = torch.linspace(-0.5, 3.5, 40001, dtype=D)
    v = tr(t)
    step = (v[1:] - v[:-1]).abs().max()
    assert float(step) < 0.01  # largest slope ~15/s over 1e-4 s steps: no jumps
    assert float(v.max()) <= 10.0 + 1e-12 and float(v.min()) >= -5.0 - 1e-12  # no overshoot
    flat = v[(t >= 1.0) & (t <= 1.5)]
    torch.testing.assert_close(flat, torch.full_like(flat, 10.0), atol=1e-12, rtol=0)  # equal keys hold the value


def test_smoothstep_is_flat_at_keys():
    tr = Track((0.0, 1.0), (2.0, 4.0), "smoothstep")
    h = 1e-6
    ends = tr(torch.tensor([h, 1 - h], dtype=D))
    assert abs(float(ends[0]) - 2.0) < 1e-9 and abs(float(ends[1]) - 4.0) < 1e-9
    assert abs(float(tr(torch.tensor([0.5], dtype=D))) - 3.0) < 1e-12


@pytest.mark.parametrize(
    "content, match",
    [
        ("{not json", "not valid JSON"),
        ('{"keyframes": {"x": {"yaw": 1}}}', "not a number of seconds"),
        ('{"keyframes": {"0": {"region": 1}}}', "cannot be keyframed"),
        ('{"keyframes": {"0": {"yaw": 400}}}', "yaw"),
        ('{"keyframes": {"0": {"yaw": 1}}, "speed": 2}', "unknown keys"),
        ('{"interpolation": "cubic", "keyframes": {"0": {"yaw": 1}}}', "interpolation"),
    ],
)
def test_bad_track_files(tmp_path, content, match):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(FlashTalkError, match=match):
        load_tracks(path)


@pytest.mark.parametrize(
    "controls, match",
    [
        (dict(gaze=1.0), "unknown controls"),
        (dict(head_distance=5), "head_distance"),
        (dict(eye_open=2.0), "eye_open"),
        (dict(region="mouth"), "region"),
        (dict(smile="wide"), "smile"),
        (dict(yaw=float("nan")), "finite"),
        (dict(emotion=[0.0] * 5), "63"),
        (dict(emotion="happy.png"), "needs the network"),
        (dict(auto_blink=1), "true or false"),
        (dict(controls="missing.json"), "not found"),
    ],
)
def test_bad_controls(controls, match):
    with pytest.raises(FlashTalkError, match=match):
        ControlSet.from_mapping(controls)


def test_merged_is_the_live_update():
    c = ControlSet(yaw=5.0, smile=0.2).merged({"smile": 0.4, "gaze_x": 3.0})
    assert (c.yaw, c.smile, c.gaze_x) == (5.0, 0.4, 3.0)
    with pytest.raises(FlashTalkError, match="smile"):
        c.merged({"smile": 9.0})
