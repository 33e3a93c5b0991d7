"""LivePortrait motion extractor M against the golden data (fp32 and fp64): raw outputs and their post-processing to
angles, rotation and keypoints."""

from __future__ import annotations

import pytest
import torch

from flashtalk.models.liveportrait import keypoints as kpm
from tests.models.liveportrait.helpers import DTYPES, _load, _seeded, _tol
from tests.utils import assert_close


@pytest.mark.slow
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
