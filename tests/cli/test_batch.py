"""`flashtalk batch` end to end on CPU with the weights-free preview: a manifest mixing good and bad jobs
(outputs identical to `animate`'s, failures named, non-zero exit), and a run killed part-way then restarted
(finished jobs not redone, no partial file left)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import flashtalk
from flashtalk.cli import main
from flashtalk.cli.animate import demo_assets
from tests.utils import decode_video, speech_excerpts

PORTRAIT = demo_assets()[0]


def _summary(out: Path) -> dict[int, dict]:
    return {row["job"]: row for row in json.loads((out / "summary.json").read_text())["jobs"]}


def _write_jsonl(path: Path, jobs: list[dict]) -> Path:
    path.write_text("".join(json.dumps(j) + "\n" for j in jobs))
    return path


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> dict[str, Path]:
    return speech_excerpts(tmp_path_factory.mktemp("speech"), {"a": 0.4, "b": 0.6, "long1": 1.6, "long2": 1.6})


def test_mixed_manifest_good_outputs_match_animate_failures_named(speech, tmp_path, capsys):
    noface = tmp_path / "noface.png"
    y, x = np.mgrid[0:256, 0:256]
    Image.fromarray(np.stack([x % 256, y % 256, (x + y) % 256], -1).astype(np.uint8)).save(noface)
    (tmp_path / "in").mkdir()
    os.symlink(speech["a"], tmp_path / "in" / "a.wav")  # a path relative to the manifest's folder
    manifest = _write_jsonl(
        tmp_path / "jobs.jsonl",
        [
            {"portrait": str(PORTRAIT), "audio": "in/a.wav", "output": "one.mp4", "seed": 3},
            {"portrait": str(PORTRAIT), "audio": "in/missing.wav", "output": "missing.mp4"},
            {"portrait": str(noface), "audio": str(speech["a"]), "crop": "auto", "output": "noface.mp4"},
            {"portrait": str(PORTRAIT), "audio": str(speech["b"]), "output": "two.mp4", "fps": 12.5, "seed": 1},
            {"portrait": str(PORTRAIT), "audio": str(speech["a"]), "output": "bad.mp4", "seed": "three"},
            {"portrait": str(PORTRAIT), "audio": str(speech["b"]), "output": "pasted.mp4", "paste_back": True},
            {"portrait": str(PORTRAIT), "audio": str(speech["a"]), "output": "../escape.mp4"},
        ],
    )
    out = tmp_path / "out"
    rc = main(["batch", str(manifest), "--out", str(out), "--max-batch", "32"])
    err = capsys.readouterr().err
    assert rc == 1
    rows = _summary(out)
    assert [rows[n]["status"] for n in range(1, 8)] == ["done", "failed", "failed", "done", "failed", "done", "failed"]
    assert "missing.wav does not exist" in rows[2]["error"]
    assert "no face found" in rows[3]["error"]
    assert "seed must be an integer" in rows[5]["error"]
    assert "outside the output folder" in rows[7]["error"]
    for n in (2, 3, 5, 7):
        assert "\n" not in rows[n]["error"] and f"job {n} failed: " in err
    csv_rows = (out / "summary.csv").read_text().splitlines()
    assert csv_rows[0] == "job,status,frames,seconds,output,error" and len(csv_rows) == 8
    assert sorted(p.name for p in out.iterdir()) == ["one.mp4", "pasted.mp4", "summary.csv", "summary.json", "two.mp4"]
    # each good output: the frames `animate` makes for the same job, and the speech muxed in
    for name, audio, extra in (
        ("one.mp4", speech["a"], ["--seed", "3"]),
        ("two.mp4", speech["b"], ["--fps", "12.5", "--seed", "1"]),
        ("pasted.mp4", speech["b"], ["--paste-back"]),
    ):
        ref = tmp_path / f"ref-{name}"
        assert main(["animate", str(PORTRAIT), str(audio), "-o", str(ref), "-q", *extra]) == 0
        got, got_audio = decode_video(out / name)
        want, want_audio = decode_video(ref)
        assert got.shape == want.shape and np.array_equal(got, want), name
        assert got_audio is not None and abs(got_audio - want_audio) < 0.05
        assert rows[[r for r in rows if rows[r]["output"] == name][0]]["frames"] == len(got)


def test_killed_run_restarts_without_redoing_finished_jobs(speech, tmp_path, capsys):
    manifest = _write_jsonl(
        tmp_path / "jobs.jsonl",
        [
            {"portrait": str(PORTRAIT), "audio": str(speech["a"]), "output": "first.mp4"},
            {"portrait": str(PORTRAIT), "audio": str(speech["long1"]), "output": "second.mp4"},
            {"portrait": str(PORTRAIT), "audio": str(speech["long2"]), "output": "third.mp4", "seed": 2},
        ],
    )
    out = tmp_path / "out"
    root = str(Path(flashtalk.__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p))
    argv = [sys.executable, "-m", "flashtalk", "batch", str(manifest), "--out", str(out), "-q"]
    proc = subprocess.Popen([*argv, "--batch-size", "8", "--max-batch", "8"], env=env, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if (out / "summary.json").exists() and _summary(out)[1]["status"] == "done":
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the run ended before it could be killed part-way"
        assert _summary(out)[1]["status"] == "done"
        assert main(["batch", str(manifest), "--out", str(out), "-q"]) == 2  # one run per output folder at a time
        assert "another flashtalk batch is writing to" in capsys.readouterr().err
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        proc.stderr.close()
    assert (out / "first.mp4").exists() and not (out / "second.mp4").exists() and not (out / "third.mp4").exists()
    assert [p for p in out.iterdir() if ".partial-" in p.name]  # the killed run's temporary output
    first = (out / "first.mp4").stat()

    assert main(["batch", str(manifest), "--out", str(out), "-q"]) == 0
    rows = _summary(out)
    assert [rows[n]["status"] for n in (1, 2, 3)] == ["skipped", "done", "done"]
    after = (out / "first.mp4").stat()
    assert (after.st_ino, after.st_mtime_ns) == (first.st_ino, first.st_mtime_ns)  # not written again
    assert sorted(p.name for p in out.iterdir()) == [
        "first.mp4",
        "second.mp4",
        "summary.csv",
        "summary.json",
        "third.mp4",
    ]  # no partial file (a killed run leaves its temporary; the restart removes it)
    for name in ("second.mp4", "third.mp4"):
        frames, audio = decode_video(out / name)
        assert len(frames) == 40 and audio is not None
    assert rows[1]["frames"] == 10
