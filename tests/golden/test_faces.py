"""The LivePortrait face pipeline against golden/faces: every file kind, model calls replaced by the stored
raw tensors, README tolerances (the gates live in flashtalk/golden/faces.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

GOLDEN = Path(__file__).resolve().parents[2] / ".." / "shared" / "golden" / "faces"
pytestmark = pytest.mark.skipif(not (GOLDEN / "golden.json").is_file(), reason="shared golden/faces folder not present")


def test_every_faces_golden_file_passes():
    from flashtalk.golden import faces
    from flashtalk.golden.verify import verify

    results = verify(GOLDEN)
    files = {r.file for r in results}
    expected = {p.name for p in GOLDEN.glob("*.npz")} - {"images.npz"}
    assert files == expected
    for prefix, _ in faces.KINDS:  # every README file kind is present and gated
        assert any(f.startswith(prefix) for f in files), prefix
    failed = [f"{r.file}:{r.array} {r.max_abs:.3g} > {r.limit:.3g} {r.note}" for r in results if not r.passed]
    assert not failed, "\n".join(failed)
    assert len(results) > 200


def test_a_wrong_crop_offset_and_ratio_epsilon_fail(monkeypatch):
    from flashtalk.faces import crop, ratios
    from flashtalk.golden.verify import verify

    monkeypatch.setattr(crop, "SOURCE", crop.CropParams(512, 2.3, +0.125))
    failed = {r.array for r in verify(GOLDEN, only=["chain_one_face"]) if not r.passed}
    assert {"crop_M_c2o", "crop_pt_crop", "crop_img_crop"} <= failed
    assert "l203_lmk" not in failed  # the 203 crop has its own parameters
    monkeypatch.setattr(ratios, "EPS", 1e-2)
    failed = {r.array for r in verify(GOLDEN, only=["ratios"]) if not r.passed}
    assert {"eye_ratio", "lip_ratio"} <= failed


@pytest.mark.slow
def test_cli_routes_the_faces_family():
    proc = subprocess.run(
        [sys.executable, "-m", "flashtalk", "verify-golden", str(GOLDEN), "--only", "ratios", "scrfd"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert "scrfd_stress_333x517.npz:keep" in proc.stdout and " 0 failed" in proc.stdout
