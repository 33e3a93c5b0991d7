"""CI's rehearsal of a lent GPU call: `flashtalk lease run --smoke` in a copy of the tree (tracked and
untracked-not-ignored files) plus the carried wheel folder, with no package index (PIP_NO_INDEX=1) and the copy's
flashtalk, not an installed one. It must finish green, leave results that come back (at most 8 files, 2 folders
deep, 16 MiB each), and the tree + wheels + golden subset must fit in 64 MiB.

The wheels come from `flashtalk lease prepare --python X.Y` (CI runs it for its own Python before the tests;
the GPU image is 3.12); without them for this Python the test skips, saying so."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from flashtalk.bench import lease

ROOT = Path(__file__).resolve().parents[2]
WHEELS = ROOT / lease.WHEELS
TAG = f"-cp{sys.version_info[0]}{sys.version_info[1]}-"

pytestmark = pytest.mark.skipif(
    not (WHEELS / lease.COMMIT_FILE).is_file() or not any(TAG in w.name for w in WHEELS.glob("*.whl")),
    reason=f"no carried wheels for this Python in {WHEELS}: run `flashtalk lease prepare --python "
    f"{sys.version_info[0]}.{sys.version_info[1]}` first",
)


def _copy_tree(dest: Path) -> None:
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for rel in filter(None, dict.fromkeys(listed.split("\0"))):
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    for carried in (lease.WHEELS, lease.GOLDEN):
        if (ROOT / carried).is_dir():
            shutil.copytree(ROOT / carried, dest / carried)


def test_lease_run_smoke_offline_in_a_copy(tmp_path):
    tree, out = tmp_path / "tree", tmp_path / "out"
    _copy_tree(tree)
    size = sum(p.stat().st_size for p in tree.rglob("*") if p.is_file())
    assert size <= lease.TRAVEL_LIMIT, f"what travels is {size / lease.MIB:.1f} MiB, over 64 MiB"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLASHTALK_", "PYTHONPATH", "TRITON_"))}
    env |= {"PIP_NO_INDEX": "1", "PIP_INDEX_URL": "http://127.0.0.1:9/simple", "PYTHONUNBUFFERED": "1"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "flashtalk",
            "lease",
            "run",
            "--smoke",
            "--out",
            str(out),
            "--target",
            str(tmp_path / "site"),
        ],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    tail = (done.stdout + done.stderr)[-3000:]
    assert done.returncode == 0, tail
    assert lease.check_results(out) == [], tail
    assert {p.name for p in out.iterdir()} == {
        "results.json",
        "summary.md",
        "plots.png",
        "preflight.txt",
        "suite.log",
        "rest.tar.gz",
    }
    preflight = (out / "preflight.txt").read_text()
    assert f"flashtalk  0.1.0  {tree / 'flashtalk'}" in preflight, preflight  # the copy's, not an installed one
    assert "av         " in preflight and str(tmp_path / "site") in preflight  # a carried wheel, installed offline
    commit = (WHEELS / lease.COMMIT_FILE).read_text().strip()
    report = json.loads((out / "results.json").read_text())
    assert report["environment"]["commit"] == commit and commit != "unknown"
    assert all(s["status"] != "failed" for s in report["suite"]["steps"]), report["suite"]["steps"]
    assert done.stdout.rstrip().splitlines()[-1] == "RESULT: no failures"
