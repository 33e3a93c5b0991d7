"""`flashtalk bench`: the options of the benchmark harness (`flashtalk.bench.harness.run`) and of the one-call
GPU suite (`--suite gpu`, `flashtalk.bench.suite`)."""

from __future__ import annotations

import argparse

from flashtalk.bench.harness import run

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="a short run: fewer cases and iterations")
    parser.add_argument(
        "--only",
        action="append",
        choices=["kernel", "stage", "renderer", "pipeline", "stream"],
        help="case group(s) to run (default: all)",
    )
    parser.add_argument("--case", action="append", metavar="TEXT", help="only cases whose name contains TEXT")
    parser.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], help="dtype of the attention / warp kernel cases")
    parser.add_argument(
        "--compile",
        dest="compile",
        action="store_true",
        default=None,
        help="measure torch.compile providers (default: on, except --quick)",
    )
    parser.add_argument("--no-compile", dest="compile", action="store_false")
    parser.add_argument("--iters", type=int, help="timed calls per provider (default 20 on GPU, 3 on CPU; quick fewer)")
    parser.add_argument("--sessions", type=int, help="concurrent sessions of the aggregate streaming case")
    parser.add_argument("--json", metavar="PATH", help="write one record per case and provider as JSON")
    parser.add_argument("--markdown", metavar="PATH", help="write the tables as Markdown")
    parser.add_argument("--plot", metavar="PATH", help="write PNG charts (speed-up, FPS vs batch, latency CDF)")
    parser.add_argument(
        "--impl",
        action="append",
        metavar="OP=IMPL[,IMPL...]",
        help="measure other implementations of a kernel op beside ours (registered NAME or module:function): "
        "the op's cases, then renderer / offline / streaming with each swapped in",
    )
    parser.add_argument("--compare", metavar="OLD.json", help="print the ratio against an earlier --json report")
    parser.add_argument(
        "--suite",
        choices=["gpu"],
        help="the one-call GPU suite: gpu tests, then the headline benchmarks, within --budget-s, written under --out",
    )
    parser.add_argument("--out", metavar="DIR", help="--suite: folder for results.json, summary.md and plots")
    parser.add_argument(
        "--budget-s",
        type=float,
        help="stop before this many seconds, naming what did not fit (default: 480 for --suite, none otherwise)",
    )
    parser.add_argument("--smoke", action="store_true", help="--suite on the CPU at tiny sizes (CI)")
    parser.add_argument(
        "--tests",
        metavar="DIR",
        help="--suite: the checkout's tests/ folder (found by itself "
        "in a checkout; a wheel install needs it to run the gpu tests)",
    )
