"""The record of a batch: `summary.json` and `summary.csv` in the output folder, rewritten (atomically) as
each job ends, and the progress line on the terminal.

A job's status: `pending`, `done` (written by this run), `skipped` (its output was complete already: an
earlier run wrote it) or `failed` (with its one-line error)."""

from __future__ import annotations

import csv
import io
import json
import os
import sys
import time
from pathlib import Path
from typing import IO, Any

from flashtalk.jobs.manifest import Job

COLUMNS = ("job", "status", "frames", "seconds", "output", "error")
JSON_NAME, CSV_NAME = "summary.json", "summary.csv"


class Summary:
    """One row per job (COLUMNS), written to `out_dir` after every change."""

    def __init__(self, out_dir: str | os.PathLike, jobs: list[Job], manifest: str) -> None:
        self.out_dir = Path(out_dir)
        self.manifest = manifest
        self.start = time.perf_counter()
        self.rows: dict[int, dict[str, Any]] = {
            j.number: dict(job=j.number, status="pending", frames=None, seconds=None, output=j.output, error=None)
            for j in jobs
        }

    def set(
        self,
        number: int,
        status: str,
        *,
        frames: int | None = None,
        seconds: float | None = None,
        error: str | None = None,
    ) -> None:
        row = self.rows[number]
        row.update(status=status, frames=frames, seconds=None if seconds is None else round(seconds, 3), error=error)
        self.write()

    def count(self, status: str) -> int:
        return sum(r["status"] == status for r in self.rows.values())

    def totals(self) -> dict[str, Any]:
        elapsed = time.perf_counter() - self.start
        frames = sum(r["frames"] or 0 for r in self.rows.values() if r["status"] == "done")
        out: dict[str, Any] = {"jobs": len(self.rows)}
        out.update({s: self.count(s) for s in ("done", "skipped", "failed", "pending")})
        out.update(frames=frames, seconds=round(elapsed, 3), fps=round(frames / elapsed, 2) if elapsed > 0 else 0.0)
        return out

    def write(self) -> None:
        rows = [self.rows[k] for k in sorted(self.rows)]
        doc = {"manifest": self.manifest, "totals": self.totals(), "jobs": rows}
        _replace(self.out_dir / JSON_NAME, json.dumps(doc, indent=1) + "\n")
        text = io.StringIO()
        writer = csv.DictWriter(text, COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: ("" if v is None else v) for k, v in r.items()} for r in rows)
        _replace(self.out_dir / CSV_NAME, text.getvalue())


def _replace(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


class Progress:
    """`jobs 12/40  done 11  failed 1  283.4 fps  ETA 1:05` on one rewritten stderr line; silent when not
    enabled (default: when stderr is a TTY). ETA: the jobs left at the mean time per finished job."""

    def __init__(self, summary: Summary, stream: IO[str] | None = None, enabled: bool | None = None) -> None:
        self.summary = summary
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.frames = 0
        self.start = time.perf_counter()
        self._last = 0.0

    def add_frames(self, n: int) -> None:
        self.frames += n
        self.show()

    def show(self, force: bool = False) -> None:
        now = time.perf_counter()
        if not self.enabled or (not force and now - self._last < 0.2):
            return
        self._last = now
        s = self.summary
        elapsed = max(now - self.start, 1e-9)
        done, failed, skipped = s.count("done"), s.count("failed"), s.count("skipped")
        finished = done + failed
        left = len(s.rows) - finished - skipped
        eta = "-:--"
        if finished:
            left_s = int(left * elapsed / finished)
            eta = f"{left_s // 60}:{left_s % 60:02d}"
        self.stream.write(
            f"\rjobs {finished + skipped}/{len(s.rows)}  done {done}  failed {failed}  skipped {skipped}  "
            f"{self.frames / elapsed:7.1f} fps  ETA {eta} "
        )
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.show(force=True)
            self.stream.write("\n")
            self.stream.flush()


__all__ = ["COLUMNS", "CSV_NAME", "JSON_NAME", "Progress", "Summary"]
