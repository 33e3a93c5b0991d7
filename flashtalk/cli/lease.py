"""`flashtalk lease prepare` (here, with a package index) and `flashtalk lease run` (on a lent GPU machine, from
the copied tree's root, nothing installed: `python3 -m flashtalk lease run --out $OUT`); `flashtalk.bench.lease`
does the work."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="{prepare,run}")
    prep = sub.add_parser("prepare", help="fetch the wheels the GPU image lacks and a golden subset; print the size")
    prep.add_argument("--repo", default=".", help="the checkout's root (default: here)")
    prep.add_argument(
        "--golden",
        metavar="DIR",
        help="golden data to take a subset of (default: $FLASHTALK_GOLDEN, else ../shared/golden beside the repo)",
    )
    prep.add_argument("--python", default="3.12", help="CPython version of the wheels (default 3.12, the GPU image's)")
    prep.add_argument("--commit", help="the commit to report (default: git rev-parse HEAD, '-dirty' if changed)")
    go = sub.add_parser("run", help="on the GPU: install the carried wheels offline, preflight, the suite, results")
    go.add_argument("--out", required=True, metavar="DIR", help="where the result files go (at most 6 files)")
    go.add_argument("--repo", default=".", help="the copied tree's root (default: here)")
    go.add_argument(
        "--budget-s",
        type=float,
        help="the whole run, install to results (default 270 s: two tries, each with a machine start, fit a 15-minute lease; "
        "smoke 240 s)",
    )
    go.add_argument("--smoke", action="store_true", help="the suite's CPU smoke (CI's rehearsal of the plumbing)")
    go.add_argument("--target", metavar="DIR", help="install the wheels here (default: a new temporary folder)")
    go.add_argument("--case", action="append", default=[], metavar="TEXT", help="only suite cases containing TEXT")


def run(args: argparse.Namespace) -> int:
    import os

    from flashtalk.bench import lease

    repo = Path(args.repo)
    if args.action == "prepare":
        golden = args.golden or os.environ.get("FLASHTALK_GOLDEN") or str(repo.resolve().parent / "shared" / "golden")
        return lease.prepare(repo, Path(golden), python=args.python, commit=args.commit)
    return lease.run(
        repo,
        Path(args.out),
        budget_s=args.budget_s,
        smoke=args.smoke,
        target=Path(args.target) if args.target else None,
        cases=args.case,
    )
