"""The worked example (examples/byo_kernel) installed into a temporary folder with pip, then driven through
the command line in subprocesses (PYTHONPATH = that folder + the checkout): `kernels list` finds its entry
points, `kernels verify` passes its two implementations (deform_warp with its golden rows and frames; attention's
golden rows are left to `--full` runs: ~1 min on 2 cores) and fails each deliberately wrong one, naming the
case and the error, with exit status 1 and no traceback; `bench --impl` measures them beside ours on the CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def byo_env(tmp_path_factory) -> dict:
    target = tmp_path_factory.mktemp("byo-site")
    build = tmp_path_factory.mktemp("byo-src")
    src = build / "byo_kernel"  # a copy: pip's in-tree build would leave build/ and *.egg-info in the checkout
    subprocess.run(["cp", "-r", str(ROOT / "examples" / "byo_kernel"), str(src)], check=True)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "-q",
            "--target",
            str(target),
            str(src),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(target), str(ROOT)]))
    env.pop("FLASHTALK_KERNELS", None)
    return env


def _flashtalk(env: dict, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "flashtalk", *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


def test_list_finds_the_entry_points(byo_env):
    proc = _flashtalk(byo_env, "kernels", "list")
    assert proc.returncode == 0, proc.stderr
    assert "sdpa" in proc.stdout and "grid_sample" in proc.stdout
    assert "entry point: byo_kernel.ops:attention [flashtalk-byo-kernel 0.1.0]" in proc.stdout


def test_verify_the_example_green(byo_env, tmp_path):
    report = tmp_path / "rows.json"
    proc = _flashtalk(byo_env, "kernels", "verify", "deform_warp=grid_sample", "--json", str(report))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    rows = json.loads(report.read_text())
    cases = [r["case"] for r in rows]
    assert any(c.startswith("golden warping_module.npz") for c in cases) or "no golden folder" in proc.stdout
    assert any("PSNR" in c for c in cases) and all(r["passed"] for r in rows)
    proc = _flashtalk(byo_env, "kernels", "verify", "attention=sdpa", "--no-golden")
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "bool-B1LqLk-allmasked-rows" in proc.stdout and " 0 failed" in proc.stdout


def test_verify_fails_the_wrong_set_by_name(byo_env):
    bad = ["off_by_1e2", "transposed", "nan", "in_place", "hangs", "raises"]
    proc = _flashtalk(
        byo_env,
        "kernels",
        "verify",
        *(f"attention=byo_kernel.bad:{b}" for b in bad),
        "attention=no_such_module:fn",
        "--no-golden",
        "--timeout",
        "2",
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1 and "Traceback" not in out, out[-3000:]
    for impl, note in [
        ("off_by_1e2", "max error 1.000e-02 > bound"),
        ("transposed", "> bound"),
        ("nan", "NaN values where the reference is finite"),
        ("in_place", "wrote into its input q"),
        ("hangs", "hang: no result after 2 s"),
        ("raises", "raised RuntimeError: this implementation always fails"),
    ]:
        lines = [line for line in out.splitlines() if f"byo_kernel.bad:{impl} " in line and "FAIL" in line]
        assert any(note in line and "-fp32" in line for line in lines), (impl, lines[:3])
    assert "cannot import no_such_module:fn" in out


def test_bench_beside_ours_on_the_cpu(byo_env, tmp_path):
    report = tmp_path / "bench.json"
    proc = _flashtalk(
        byo_env,
        "bench",
        "--quick",
        "--device",
        "cpu",
        "--iters",
        "1",
        "--impl",
        "attention=sdpa",
        "--impl",
        "deform_warp=grid_sample",
        "--only",
        "kernel",
        "--case",
        "attention/cpu",
        "--case",
        "deform_warp/B1",
        "--json",
        str(report),
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    data = json.loads(report.read_text())
    mine = [r for r in data["records"] if r.get("impl")]
    assert {r["provider"] for r in mine} == {"attention=sdpa", "deform_warp=grid_sample"}
    for r in mine:
        assert r["status"] == "ok" and r["correct"] is True and r["impl_package"] == "flashtalk-byo-kernel"
        assert r["impl_version"] == "0.1.0" and r["speedup_vs_flashtalk"] > 0
    assert {(s["op"], s["kernel_cases"], s["correct"]) for s in data["impls"]} == {
        ("attention", 1, 1),
        ("deform_warp", 1, 1),
    }
    assert all(0 <= s["fast_1"] <= 1 for s in data["impls"])
