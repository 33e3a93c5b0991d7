"""The batch summary (`summary.json` / `summary.csv`, rewritten as jobs end) and the progress line."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from flashtalk.jobs.manifest import Job
from flashtalk.jobs.summary import Progress, Summary


def test_summary_files_follow_each_change(tmp_path):
    jobs = [Job(1, "a.mp4"), Job(2, "b.mp4"), Job(3, "")]
    s = Summary(tmp_path, jobs, "m.jsonl")
    s.write()
    assert json.loads((tmp_path / "summary.json").read_text())["totals"]["pending"] == 3
    s.set(1, "done", frames=50, seconds=1.23456)
    s.set(3, "failed", error="no face found")
    doc = json.loads((tmp_path / "summary.json").read_text())
    assert doc["totals"] | {"seconds": 0, "fps": 0} == {
        "jobs": 3, "done": 1, "skipped": 0, "failed": 1, "pending": 1, "frames": 50, "seconds": 0, "fps": 0,
    }  # fmt: skip
    assert doc["jobs"][0] == {
        "job": 1,
        "status": "done",
        "frames": 50,
        "seconds": 1.235,
        "output": "a.mp4",
        "error": None,
    }
    rows = list(csv.DictReader((tmp_path / "summary.csv").read_text().splitlines()))
    assert [(r["job"], r["status"], r["frames"], r["error"]) for r in rows] == [
        ("1", "done", "50", ""),
        ("2", "pending", "", ""),
        ("3", "failed", "", "no face found"),
    ]
    assert sorted(p.name for p in Path(tmp_path).iterdir()) == ["summary.csv", "summary.json"]  # no temporaries


def test_progress_line_and_quiet(tmp_path):
    s = Summary(tmp_path, [Job(1, "a.mp4"), Job(2, "b.mp4")], "m.jsonl")
    out = io.StringIO()
    bar = Progress(s, stream=out, enabled=True)
    bar.show(force=True)
    assert "jobs 0/2" in out.getvalue() and "ETA -:--" in out.getvalue()
    s.set(1, "done", frames=25, seconds=1.0)
    bar.add_frames(25)
    bar.close()
    last = out.getvalue().rstrip("\n").split("\r")[-1]
    assert last.startswith("jobs 1/2  done 1  failed 0  skipped 0") and " fps  ETA " in last and "-:--" not in last
    quiet = io.StringIO()
    bar = Progress(s, stream=quiet, enabled=False)
    bar.add_frames(10)
    bar.close()
    assert quiet.getvalue() == ""
