"""`flashtalk verify-golden DIR`: our networks against a folder of golden tensors (`flashtalk.golden.verify`),
one row per array: max abs error, relative error, the gate, ok / FAIL."""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import asdict
from pathlib import Path

from flashtalk.golden.verify import verify


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("folder", metavar="DIR", help="golden folder (holds golden.json, tolerances.json, *.npz)")
    p.add_argument("--precision", choices=("fp32", "fp64"), default="fp32")
    p.add_argument(
        "--kernels",
        choices=("reference", "triton"),
        default="reference",
        help="triton: our Triton kernels (on CPU this sets TRITON_INTERPRET=1, slow)",
    )
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--only", nargs="+", metavar="FILE", help="run only the .npz files whose names contain these")
    p.add_argument(
        "--published-only",
        action="store_true",
        help="check the networks as published only, not also the renderer's fast path (its fused warping "
        "tail under the interpreter takes minutes)",
    )
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")


def run(args: argparse.Namespace) -> int:
    if args.kernels == "triton" and args.device != "cuda" and "TRITON_INTERPRET" not in os.environ:
        import torch

        if not torch.cuda.is_available() or args.device == "cpu":
            os.environ["TRITON_INTERPRET"] = "1"
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    t0 = time.perf_counter()
    results = verify(args.folder, args.precision, args.kernels, device, args.only, args.published_only)
    width = max(len(f"{r.file}:{r.array}") for r in results)
    print(f"{'array':<{width}}  {'max abs err':>11}  {'rel err':>9}  {'limit':>9}  result")
    for r in results:
        verdict = "ok" if r.passed else "FAIL" + (f" ({r.note})" if r.note else "")
        print(f"{r.file + ':' + r.array:<{width}}  {r.max_abs:11.3e}  {r.rel:9.2e}  {r.limit:9.2e}  {verdict}")
    failed = [r for r in results if not r.passed]
    print(
        f"{len(results) - len(failed)} passed, {len(failed)} failed "
        f"({args.precision}, kernels={args.kernels}, device={device}, {time.perf_counter() - t0:.1f} s)"
    )
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in results], indent=1))
    return 1 if failed else 0
