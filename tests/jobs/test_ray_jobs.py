"""`flashtalk batch --ray`: two local CPU workers (preview backend), one killed by PID while it renders; every
output is still written exactly once, no partial file is left, and Ray is stopped at the end."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import flashtalk
from flashtalk.cli.animate import demo_assets
from tests.utils import decode_video, speech_excerpts

pytest.importorskip("ray", reason="Ray is needed: pip install 'flashtalk[ray]'")
psutil = pytest.importorskip("psutil", reason="psutil finds the Ray workers")

JOBS = 6


def _workers(pid: int, busy: bool) -> list:
    """BatchWorker actor processes under the batch process (running a call when `busy`)."""
    out = []
    for p in psutil.Process(pid).children(recursive=True):
        try:
            title = " ".join(p.cmdline())
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if "BatchWorker" in title and (not busy or "BatchWorker.run" in title):
            out.append(p)
    return out


@pytest.mark.slow
def test_ray_worker_killed_mid_run_every_output_exactly_once(tmp_path):
    speech = speech_excerpts(tmp_path, {f"s{k}": 1.2 for k in range(JOBS)})
    portrait = demo_assets()[0]
    manifest = tmp_path / "jobs.jsonl"
    manifest.write_text(
        "".join(
            json.dumps({"portrait": str(portrait), "audio": str(a), "output": f"{k}.mp4", "seed": k}) + "\n"
            for k, a in enumerate(speech.values())
        )
    )
    out = tmp_path / "out"
    root = str(Path(flashtalk.__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p))
    argv = [sys.executable, "-m", "flashtalk", "batch", str(manifest), "--out", str(out), "--ray", "--workers", "2"]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seen: set[int] = set()
    try:
        deadline, victim = time.monotonic() + 180, None
        while time.monotonic() < deadline and proc.poll() is None and victim is None:
            seen |= {p.pid for p in _workers(proc.pid, busy=False)}
            busy = _workers(proc.pid, busy=True)
            if busy and len(seen) >= 2:
                time.sleep(0.5)  # well into its call: it is rendering a job
                victim = busy[0]
            time.sleep(0.05)
        assert victim is not None, "no busy worker to kill"
        os.kill(victim.pid, signal.SIGKILL)
        _, err = proc.communicate(timeout=240)
        end = time.monotonic() + 30  # Ray stopped: no worker of this run is left
        while time.monotonic() < end and _alive(seen):
            time.sleep(0.2)
        assert not _alive(seen), "Ray workers outlived the batch run"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)
        for pid in _alive(seen):  # never leave a worker behind, even when the test fails
            psutil.Process(pid).kill()
    assert proc.returncode == 0, err
    assert "a Ray worker was lost; retrying job(s)" in err
    rows = json.loads((out / "summary.json").read_text())["jobs"]
    assert [r["job"] for r in rows] == list(range(1, JOBS + 1))
    assert all(r["status"] == "done" and r["error"] is None for r in rows), rows
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted([f"{k}.mp4" for k in range(JOBS)] + ["summary.csv", "summary.json"])  # no partial
    for k in range(JOBS):
        frames, audio = decode_video(out / f"{k}.mp4")
        assert len(frames) == 30 and audio is not None


def _alive(pids: set[int]) -> list[int]:
    """The Ray worker processes among `pids` still running (a reused PID is not one of ours)."""
    out = []
    for pid in pids:
        try:
            p = psutil.Process(pid)
            if p.status() != psutil.STATUS_ZOMBIE and "ray::" in " ".join(p.cmdline()):
                out.append(pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return out
