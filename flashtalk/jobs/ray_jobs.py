"""`flashtalk batch --ray`: a manifest's jobs over a Ray cluster (Ray core actors).

One worker actor per GPU (`num_gpus=1`; on a cluster without GPUs, `workers` actors of one CPU each), each
building its engine once (`EngineSpec.build`) and running the many-clip driver
(`flashtalk.runtime.batch.render_clips`) on a few jobs at a time (`JOBS_PER_CALL`, so short clips still
share render calls); jobs are handed out as workers free up. Outputs go to the output folder, which every
worker must reach at the same path (a shared file system), written atomically as on one machine.

Faults: when a worker is lost (its process killed, its node gone), the jobs of its call whose output is
not complete lose their temporary files and go back to the front of the queue for the next free worker,
at most `retries` times each; a replacement worker is started (at most `retries` times the worker count).
A local Ray (no ADDRESS) starts on 127.0.0.1 with the dashboard off, as `flashtalk serve --ray` does
(`flashtalk.serving.ray_app.start_local_ray`), and is stopped at the end.
"""

from __future__ import annotations

import collections
import logging
import os
from collections.abc import Callable
from typing import Any

from flashtalk.errors import FlashTalkError
from flashtalk.io.media import remove_stale_partials
from flashtalk.jobs.local import output_frames, run_jobs
from flashtalk.jobs.manifest import Job
from flashtalk.jobs.summary import Summary
from flashtalk.runtime.batch import DEFAULT_OPTIONS, PackOptions, one_line
from flashtalk.runtime.engine import EngineSpec
from flashtalk.serving.ray_app import start_local_ray

log = logging.getLogger(__name__)

JOBS_PER_CALL = 4
CPU_WORKERS = 2  # workers on a cluster without GPUs, unless told


class BatchWorker:
    """A Ray actor (made remote in `run_ray`): one engine, jobs a call at a time."""

    def __init__(self, spec: EngineSpec, options: PackOptions) -> None:
        self.engine = spec.build()
        self.options = options

    def pid(self) -> int:
        return os.getpid()

    def run(self, jobs: list[Job]) -> list[tuple[int, int, float, str | None]]:
        """(job number, frames, seconds, error or None) of each job."""
        results = run_jobs(self.engine, jobs, self.options)
        return [(int(r.request.key), r.frames, r.seconds, r.error) for r in results]


def _ray() -> Any:
    try:
        import ray
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] == "ray":
            raise FlashTalkError("flashtalk batch --ray needs Ray: pip install 'flashtalk[ray]'") from None
        raise
    return ray


def run_ray(
    spec: EngineSpec,
    jobs: list[Job],
    summary: Summary,
    options: PackOptions = DEFAULT_OPTIONS,
    *,
    address: str | None = None,
    workers: int | None = None,
    retries: int = 2,
    on_result: Callable[[int], None] | None = None,
) -> None:
    """Run `jobs` (from `plan`) over Ray, recording each result in `summary` (see the module docstring).
    address: a running cluster's, or None for a local Ray (stopped at the end)."""
    if workers is not None and workers < 1:
        raise FlashTalkError(f"--workers must be >= 1, got {workers}")
    if retries < 0:
        raise FlashTalkError(f"--retries must be >= 0, got {retries}")
    if not jobs:
        return
    ray = _ray()
    if address is None:
        start_local_ray(num_cpus=max(workers or CPU_WORKERS, os.cpu_count() or 1))
    else:
        ray.init(address=address, configure_logging=False, log_to_driver=False)
    try:
        gpus = int(ray.cluster_resources().get("GPU", 0))
        count = workers or gpus or CPU_WORKERS
        remote = ray.remote(**({"num_gpus": 1} if gpus else {"num_cpus": 1}))(BatchWorker)
        _Dispatch(ray, lambda: remote.remote(spec, options), count, retries, summary, on_result).run(jobs)
    finally:
        ray.shutdown()


class _Dispatch:
    """The driver's loop: hand out calls of JOBS_PER_CALL jobs to free workers, collect, retry lost ones."""

    def __init__(
        self,
        ray: Any,
        start: Callable[[], Any],
        count: int,
        retries: int,
        summary: Summary,
        on_result: Callable[[int], None] | None,
    ) -> None:
        self.ray, self.start, self.retries, self.summary, self.on_result = ray, start, retries, summary, on_result
        self.idle = [start() for _ in range(count)]
        try:  # each builds its engine now: a bad weights path fails the run once, not every job
            ray.get([actor.pid.remote() for actor in self.idle])
        except ray.exceptions.RayActorError as exc:
            lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
            raise FlashTalkError(f"a Ray worker could not start: {lines[-1] if lines else exc}") from None
        self.replacements = retries * count
        self.attempts: collections.Counter[int] = collections.Counter()

    def run(self, jobs: list[Job]) -> None:
        queue = collections.deque(jobs)
        inflight: dict[Any, tuple[Any, list[Job]]] = {}
        while queue or inflight:
            while self.idle and queue:
                share = -(-len(queue) // (len(self.idle) + len(inflight)))  # spread a short queue over all workers
                chunk = [queue.popleft() for _ in range(min(JOBS_PER_CALL, share))]
                actor = self.idle.pop()
                inflight[actor.run.remote(chunk)] = (actor, chunk)
            if not inflight:  # every worker lost, none left to start
                for job in queue:
                    self._set(job.number, "failed", error="no Ray worker left to run it (workers lost)")
                return
            (ref,), _ = self.ray.wait(list(inflight), num_returns=1)
            actor, chunk = inflight.pop(ref)
            try:
                results = self.ray.get(ref)
            except self.ray.exceptions.RayActorError as exc:
                self.ray.kill(actor, no_restart=True)  # lost or unreachable: it must not go on writing
                queue.extendleft(reversed(self._lost(chunk, exc)))
                if self.replacements > 0:
                    self.replacements -= 1
                    self.idle.append(self.start())
                continue
            except self.ray.exceptions.RayTaskError as exc:  # the call raised: its jobs fail, the worker goes on
                for job in chunk:
                    self._set(job.number, "failed", error=one_line(getattr(exc, "cause", None) or exc))
                self.idle.append(actor)
                continue
            for number, frames, seconds, error in results:
                if error is None:
                    self._set(number, "done", frames=frames, seconds=seconds)
                else:
                    self._set(number, "failed", seconds=seconds, error=error)
            self.idle.append(actor)

    def _lost(self, chunk: list[Job], exc: BaseException) -> list[Job]:
        """A worker died during `chunk`: the jobs to run again (complete outputs stay done)."""
        again = []
        reason = " ".join(str(exc).split())[:200]
        for job in chunk:
            assert job.request is not None
            output = job.request.output
            if output.exists():  # committed before the worker died
                self._set(job.number, "done", frames=output_frames(output))
                continue
            remove_stale_partials(output)
            self.attempts[job.number] += 1
            if self.attempts[job.number] > self.retries:
                self._set(
                    job.number, "failed", error=f"its Ray worker was lost {self.attempts[job.number]} times ({reason})"
                )
            else:
                again.append(job)
        if again:
            log.warning("a Ray worker was lost; retrying job(s) %s elsewhere", ", ".join(str(j.number) for j in again))
        return again

    def _set(self, number: int, status: str, **fields: Any) -> None:
        self.summary.set(number, status, **fields)
        if self.on_result is not None:
            self.on_result(number)


__all__ = ["BatchWorker", "JOBS_PER_CALL", "run_ray"]
