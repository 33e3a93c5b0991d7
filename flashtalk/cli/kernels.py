"""`flashtalk kernels check`: compile every production kernel variant ahead of time for a GPU architecture
(`flashtalk.kernels.check`), and report registers, shared memory, spills and tensor-core instructions."""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import asdict
from pathlib import Path

from flashtalk.errors import FlashTalkError
from flashtalk.kernels.check import SMEM_LIMIT, check, table, triton_version


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = sub.add_parser("check", help="compile every production kernel variant ahead of time for a GPU architecture")
    p.add_argument(
        "--arch", default="sm_90", help=f"target architecture, one of {', '.join(SMEM_LIMIT)} (default sm_90)"
    )
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    p.add_argument("--file", action="append", metavar="NAME", help="only this kernel file (repeatable), e.g. attention")
    p.add_argument("--match", metavar="TEXT", help="only variants whose name contains TEXT")
    p.add_argument(
        "--jobs",
        type=int,
        default=min(8, os.cpu_count() or 1),
        help="compile in this many processes (default: the CPU count, at most 8)",
    )


def run(args: argparse.Namespace) -> int:
    out = Path(args.json) if args.json else None
    if out is not None and (out.is_dir() or not out.parent.is_dir()):
        raise FlashTalkError(f"--json {args.json}: {'is a folder' if out.is_dir() else 'its folder does not exist'}")
    t0 = time.perf_counter()
    results = check(args.arch, args.file, args.match, args.jobs)
    limit = SMEM_LIMIT[args.arch]
    print(table(results, limit))
    failed = [r for r in results if r.problems(limit)]
    wall = time.perf_counter() - t0
    print(
        f"\n{len(results)} launches from {len({r.file for r in results})} kernel files for {args.arch} "
        f"(triton {triton_version()}) in {wall:.1f} s: {len(failed)} failed"
    )
    if out is not None:
        report = {
            "arch": args.arch,
            "triton": triton_version(),
            "torch": _torch_version(),
            "smem_limit": limit,
            "wall_s": round(wall, 1),
            "results": [asdict(r) | {"problems": r.problems(limit)} for r in results],
        }
        out.write_text(json.dumps(report, indent=1))
        print(f"wrote {out}")
    return 1 if failed else 0


def _torch_version() -> str:
    import torch

    return torch.__version__
