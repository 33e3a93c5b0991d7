"""`flashtalk verify-golden` end to end through the CLI. LivePortrait: every gated array of every file passes in fp32
(the warping module also on the renderer's fast path with the fused tail), and in fp64 all but W, F and M (checked
in fp64 by their own model tests), and a corrupted reference makes it fail. JoyVASA: every gated array in fp32, and
in fp64 all but the T=50 sampler and the audio encoder."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest

from flashtalk.cli import main

# fp64 leaves out what the model tests check in fp64 at the same gates: warping_module.npz and
# appearance_feature_extractor.npz (models/liveportrait/test_warping.py and test_appearance.py, with their channel
# means) and motion_extractor.npz (models/liveportrait/test_motion_extractor.py, raw outputs and post-processing);
# the CI time is better spent elsewhere
FP64_FILES = ("grid_sample_5d", "keypoint_transform", "motion_compose", "spade_generator", "stitching_retargeting")


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "fp64"])
def test_verify_golden_liveportrait(lp_golden, precision, capsys):
    only = ["--only", *FP64_FILES] if precision == "fp64" else []
    rc = main(["verify-golden", str(lp_golden), "--precision", precision, "--device", "cpu", *only])
    out = capsys.readouterr().out
    gates = [
        g
        for g in json.loads((lp_golden / "tolerances.json").read_text())["gates"]
        if precision == "fp32" or g["file"].removesuffix(".npz") in FP64_FILES
    ]
    fast = ("warping_module.npz:out_out@fast+fused-tail", "warping_module.npz:out_occlusion_map@fast+fused-tail")
    assert rc == 0, out
    rows = len(gates) + (len(fast) if precision == "fp32" else 0)  # W's fast path gated as the network's outputs
    assert re.search(rf"^{rows} passed, 0 failed \({precision}, kernels=reference, device=cpu", out, re.M), out
    names = ("spade_generator.npz:out_image", "motion_compose.npz:out_x_d_expr_stitched")
    for name in names + (("warping_module.npz:out_out",) + fast if precision == "fp32" else ()):
        assert re.search(rf"^{re.escape(name)}\s.*\sok$", out, re.M), name
    assert precision == "fp32" or "warping_module" not in out


def test_verify_golden_detects_corrupted_reference(lp_golden, tmp_path, capsys):
    for name in ("golden.json", "tolerances.json", "manifest.json"):
        shutil.copy(lp_golden / name, tmp_path / name)
    with np.load(lp_golden / "stitching_retargeting.npz") as npz:
        arrays = dict(npz)
    arrays["out_lip_delta"] = arrays["out_lip_delta"].copy()
    arrays["out_lip_delta"][2, 6, 1] += 1e-3  # far above the 1e-5 gate, far below the values' spread
    np.savez(tmp_path / "stitching_retargeting.npz", **arrays)
    rc = main(["verify-golden", str(tmp_path), "--only", "stitching", "--device", "cpu"])
    out = capsys.readouterr().out
    assert rc == 1, out
    assert re.search(r"^stitching_retargeting.npz:out_lip_delta\s.*FAIL", out, re.M), out
    assert re.search(r"^stitching_retargeting.npz:out_eye_delta\s.*\sok$", out, re.M), out
    assert "3 passed, 1 failed" in out


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "fp64"])
def test_verify_golden_cli(jv_golden, precision, capsys):
    """Every gated array of every JoyVASA golden file (audio encoder, denoiser, T=50 and T=5 samplers with
    chained windows, offline pipeline with de-normalisation and EMA), both PE modes, through the CLI. fp64
    leaves out the T=50 sampler (37 s of fp64 matmuls on a CPU): the T=5 one runs the same sampler code at the
    1e-9 gates, and T=50 runs in fp32; and the audio encoder, which models/test_hubert.py checks in fp64 at the
    same gates."""
    from flashtalk.cli import main

    only = ["--only", "denoiser_forward", "sampler_T5.npz", "pipeline"] if precision == "fp64" else []
    rc = main(["verify-golden", str(jv_golden), "--precision", precision, "--device", "cpu", *only])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert ("58 passed, 0 failed" if precision == "fp32" else "40 passed, 0 failed") in out, out
    assert (precision == "fp32") == ("sampler_T50.npz" in out)
