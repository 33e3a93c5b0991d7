"""LivePortrait stitching and eye / lip retargeting MLPs against the golden data (fp32 and fp64)."""

from __future__ import annotations

import pytest
import torch

from tests.models.liveportrait.helpers import DTYPES, _load, _seeded, _tol
from tests.utils import assert_close


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
