"""`flashtalk batch JOBS --out DIR`: many (portrait, speech) jobs from a JSONL / CSV manifest, on one engine
(or over Ray with --ray), resumable, with a summary (`flashtalk.jobs`)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from flashtalk.constants import DEFAULT_SAMPLER, PRESETS, SAMPLERS
from flashtalk.errors import FlashTalkError

LOCAL_RAY = "local"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("jobs", metavar="JOBS", help="manifest: .jsonl or .csv, one job per line (see the docs, 'Batch')")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (made if missing); summary.json/.csv")
    p.add_argument("--weights", metavar="DIR_OR_BUNDLE", help="network weights (as animate); default: the preview")
    p.add_argument("--seeded-weights", action="store_true", help="the network with deterministic seeded weights")
    p.add_argument("--preset", choices=PRESETS, help="network size with --seeded-weights (tiny is fast on CPU)")
    p.add_argument("--sampler", choices=SAMPLERS, default=DEFAULT_SAMPLER, help="motion sampler (default dpmpp)")
    p.add_argument("--steps", type=int, default=10, help="sampler steps per motion window (default 10)")
    p.add_argument("--cfg", type=float, default=2.0, help="classifier-free guidance on audio (default 2.0)")
    p.add_argument("--precision", metavar="fp32|bf16|fp16", help="renderer precision (default bf16 on CUDA)")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--batch-size", type=int, default=16, help="frames per render batch of a clip (default 16)")
    p.add_argument(
        "--max-batch", type=int, default=64, help="frames per render call, several clips packed (default 64)"
    )
    p.add_argument("--loaders", type=int, default=2, help="threads decoding and cropping ahead (default 2)")
    p.add_argument("--no-watermark", action="store_true", help="do not embed the provenance watermark")
    p.add_argument(
        "--ray",
        nargs="?",
        const=LOCAL_RAY,
        metavar="ADDRESS",
        help="run over Ray (pip install 'flashtalk[ray]'): a cluster's ADDRESS, or without one a local Ray on "
        "127.0.0.1; one engine per GPU, the output folder shared by every worker",
    )
    p.add_argument("--workers", type=int, help="with --ray: engines (default: one per GPU; on CPU 2)")
    p.add_argument(
        "--retries", type=int, default=2, help="with --ray: times a lost worker's job is retried (default 2)"
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar or notices")


def run(args: argparse.Namespace) -> int:
    from flashtalk.cli.animate import engine_spec
    from flashtalk.jobs.local import only_run, plan, run_local
    from flashtalk.jobs.manifest import read_manifest
    from flashtalk.jobs.summary import JSON_NAME, Progress, Summary
    from flashtalk.runtime.batch import PackOptions

    logging.basicConfig(level=logging.ERROR if args.quiet else logging.WARNING, format="flashtalk: %(message)s")
    if args.ray is None and (args.workers is not None):
        raise FlashTalkError("--workers applies to --ray")
    spec = engine_spec(args)
    spec.check()
    options = PackOptions(
        batch_size=args.batch_size, max_batch=args.max_batch, loaders=args.loaders, watermark=not args.no_watermark
    )
    options.check()
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise FlashTalkError(f"--out {out} is a file, not a folder")
    jobs = read_manifest(args.jobs, out, network=spec.network)
    out.mkdir(parents=True, exist_ok=True)
    with only_run(out):
        summary = Summary(out, jobs, str(args.jobs))
        todo = plan(jobs, summary)
        summary.write()
        progress = Progress(summary, enabled=False if args.quiet else None)
        try:
            if args.ray is not None:
                from flashtalk.jobs.ray_jobs import run_ray

                address = None if args.ray == LOCAL_RAY else args.ray
                run_ray(
                    spec,
                    todo,
                    summary,
                    options,
                    address=address,
                    workers=args.workers,
                    retries=args.retries,
                    on_result=lambda _: progress.show(),
                )
            else:
                run_local(
                    spec, todo, summary, options, on_frames=progress.add_frames, on_result=lambda _: progress.show()
                )
        finally:
            progress.close()
    totals = summary.totals()
    for row in summary.rows.values():
        if row["status"] == "failed":
            print(f"flashtalk batch: job {row['job']} failed: {row['error']}", file=sys.stderr)
    if not args.quiet:
        print(
            f"flashtalk batch: {totals['done']} done, {totals['skipped']} skipped, {totals['failed']} failed of "
            f"{totals['jobs']} jobs; {totals['frames']} frames in {totals['seconds']:.1f} s "
            f"({totals['fps']:.1f} FPS); {out / JSON_NAME}",
            file=sys.stderr,
        )
    return 1 if totals["failed"] else 0
