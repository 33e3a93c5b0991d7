"""A manifest's jobs on this machine: one engine (the weights load once), the many-clip driver
(`flashtalk.runtime.batch.render_clips`), the summary kept as it goes.

    spec = EngineSpec(seeded=True, preset="tiny")     # flashtalk.runtime.engine.EngineSpec
    jobs = read_manifest("jobs.jsonl", "out", network=spec.network)
    summary = Summary("out", jobs, "jobs.jsonl")
    todo = plan(jobs, summary)          # failed lines recorded, complete outputs skipped, stale partials removed
    run_local(spec, todo, summary)
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from flashtalk.errors import FlashTalkError
from flashtalk.io.media import remove_stale_partials
from flashtalk.jobs.manifest import Job
from flashtalk.jobs.summary import Summary
from flashtalk.runtime.batch import DEFAULT_OPTIONS, ClipResult, PackOptions, render_clips
from flashtalk.runtime.engine import Engine, EngineSpec


@contextlib.contextmanager
def only_run(out_dir: Path) -> Iterator[None]:
    """Hold the output folder for this run: a second batch run on it (which would take this run's
    temporary outputs for a killed run's) is refused until this one ends (an advisory lock on the folder)."""
    import fcntl

    fd = os.open(out_dir, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FlashTalkError(f"another flashtalk batch is writing to {out_dir}; wait for it to end") from None
        yield
    finally:
        os.close(fd)


def output_frames(path: Any) -> int | None:
    """The frame count an MP4's video stream declares (None when it cannot be read)."""
    import av

    try:
        with av.open(str(path)) as container:
            return int(container.streams.video[0].frames) or None
    except (av.error.FFmpegError, IndexError, OSError):
        return None


def plan(jobs: list[Job], summary: Summary) -> list[Job]:
    """The jobs to run: a line that is not a valid job is recorded as failed; a job whose output is there
    (outputs appear only complete) is skipped; what killed runs left of the others' outputs is removed."""
    todo = []
    for job in jobs:
        if job.request is None:
            summary.set(job.number, "failed", error=job.error)
        elif job.request.output.exists():
            summary.set(job.number, "skipped", frames=output_frames(job.request.output))
        else:
            remove_stale_partials(job.request.output)
            todo.append(job)
    return todo


def record(summary: Summary, result: ClipResult) -> None:
    number = int(result.request.key)
    if result.error is None:
        summary.set(number, "done", frames=result.frames, seconds=result.seconds)
    else:
        summary.set(number, "failed", seconds=result.seconds, error=result.error)


def run_jobs(engine: Engine, jobs: list[Job], options: PackOptions, on_frames: Callable[[int], None] | None = None):
    """The results of `jobs` (valid ones, outputs' folders made) on `engine`, as each clip ends."""
    requests = []
    for job in jobs:
        assert job.request is not None  # plan() keeps only valid jobs
        job.request.output.parent.mkdir(parents=True, exist_ok=True)
        requests.append(job.request)
    return render_clips(engine, requests, options, on_frames=on_frames)


def run_local(
    spec: EngineSpec,
    jobs: list[Job],
    summary: Summary,
    options: PackOptions = DEFAULT_OPTIONS,
    on_frames: Callable[[int], None] | None = None,
    on_result: Callable[[ClipResult], None] | None = None,
) -> None:
    """Run `jobs` (from `plan`) with one engine, recording each result in `summary` as it ends."""
    if not jobs:
        return
    engine = spec.build()
    results = run_jobs(engine, jobs, options, on_frames)
    try:
        for result in results:
            record(summary, result)
            if on_result is not None:
                on_result(result)
    finally:
        results.close()


__all__ = ["only_run", "output_frames", "plan", "record", "run_jobs", "run_local"]
