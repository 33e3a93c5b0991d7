"""`flashtalk kernels ACTION`:

* `check`: compile every production kernel variant ahead of time for a GPU architecture
  (`flashtalk.kernels.check`), and report registers, shared memory, spills and tensor-core instructions;
* `list`: the ops, their contracts and every registered implementation (a broken entry point named);
* `verify OP=IMPL ...`: an implementation against the op's conformance cases and fp64 reference, then the
  golden networks and frames with it swapped in (`flashtalk.kernels.conformance`, `flashtalk.golden.impl_check`);
  exit status 0 only when every row passes."""

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

    p = sub.add_parser("list", help="the ops, their contracts and every registered implementation")
    p.add_argument("--op", action="append", metavar="OP", help="only this op (repeatable)")
    p.add_argument("--contracts", action="store_true", help="print each op's full contract (Markdown)")
    p = sub.add_parser("verify", help="an implementation against the conformance cases, golden rows and frames")
    p.add_argument("impls", nargs="+", metavar="OP=IMPL", help="IMPL: a registered NAME or module:function")
    p.add_argument("--full", action="store_true", help="every conformance case and golden file (slow on a CPU)")
    p.add_argument("--no-golden", action="store_true", help="only the conformance cases")
    p.add_argument("--golden", metavar="DIR", help="golden folder (default: ../shared/golden beside the checkout)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds per conformance case (default 30)")
    p.add_argument("--match", metavar="TEXT", help="only conformance cases whose id contains TEXT")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--json", metavar="FILE", help="also write the rows as JSON")


def run(args: argparse.Namespace) -> int:
    if args.action == "list":
        from flashtalk.cli.kernels_verify import list_impls

        return list_impls(args)
    if args.action == "verify":
        from flashtalk.cli.kernels_verify import verify

        return verify(args)
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
