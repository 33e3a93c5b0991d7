"""A manifest's jobs on this machine: one engine (the weights load once), the many-clip driver
(`flashtalk.runtime.batch.render_clips`), the summary kept as it goes.

    spec = EngineSpec(seeded=True, preset="tiny")
    jobs = read_manifest("jobs.jsonl", "out", network=spec.network)
    summary = Summary("out", jobs, "jobs.jsonl")
    todo = plan(jobs, summary)          # failed lines recorded, complete outputs skipped, stale partials removed
    run_local(spec, todo, summary)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from flashtalk.constants import DEFAULT_SAMPLER
from flashtalk.errors import FlashTalkError
from flashtalk.io.media import remove_stale_partials
from flashtalk.jobs.manifest import Job
from flashtalk.jobs.summary import Summary
from flashtalk.runtime.batch import DEFAULT_OPTIONS, ClipResult, PackOptions, render_clips

if TYPE_CHECKING:
    from flashtalk.runtime.engine import Engine


@dataclass(frozen=True)
class EngineSpec:
    """Which engine to build (`animate`'s weights options); picklable, so each Ray worker builds its own."""

    weights: str | None = None  # a weights folder, a bundle, or hf; None (and not seeded): the preview
    seeded: bool = False
    preset: str | None = None
    device: str | None = None
    sampler: str = DEFAULT_SAMPLER
    steps: int = 10
    cfg: float = 2.0
    precision: str | None = None

    @property
    def network(self) -> bool:
        return self.weights is not None or self.seeded

    def check(self) -> None:
        if self.preset and not self.seeded:
            raise FlashTalkError("--preset applies to --seeded-weights only (a weights file fixes its own shapes)")
        if self.precision and not self.network:
            raise FlashTalkError("--precision needs the network: pass --weights or --seeded-weights")

    def build(self) -> "Engine":
        from flashtalk.runtime.engine import Engine

        self.check()
        if not self.network:
            return Engine.preview(self.device)
        return Engine.from_weights(
            self.weights,
            seeded=self.seeded,
            preset=self.preset,
            device=self.device,
            sampler=self.sampler,
            steps=self.steps,
            cfg=self.cfg,
            precision=self.precision,
        )


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


def run_jobs(engine: "Engine", jobs: list[Job], options: PackOptions, on_frames: Callable[[int], None] | None = None):
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


__all__ = ["EngineSpec", "output_frames", "plan", "record", "run_jobs", "run_local"]
