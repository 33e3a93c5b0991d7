"""`flashtalk kernels list` and `flashtalk kernels verify` (the options are in `flashtalk.cli.kernels`)."""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict
from pathlib import Path

from flashtalk.errors import FlashTalkError


def list_impls(args: argparse.Namespace) -> int:
    from flashtalk.kernels import OPS, implementations, load_op
    from flashtalk.kernels.registry import GROUP, selected

    ops = args.op or list(OPS)
    for op in ops:
        if op not in OPS:
            raise FlashTalkError(f"--op {op!r} is not one of {', '.join(OPS)}")
    rows = implementations()
    for op in ops:
        contract = load_op(op).contract
        chosen = selected(op)
        print(f"{op}({contract.signature})")
        if args.contracts:
            print("\n".join("    " + line if line else "" for line in contract.markdown().splitlines()))
        else:
            print(f"    returns {contract.returns}")
        for impl in (i for i in rows if i.op == op):
            active = "*" if (chosen.name if chosen else "flashtalk") == impl.name else " "
            where = f"{impl.origin}: {impl.target}" + (f" [{impl.package} {impl.version}]" if impl.package else "")
            state = f"  BROKEN: {impl.error}" if impl.error else ""
            print(f"  {active} {impl.name:<24} {where}{state}")
    unknown = [i for i in rows if i.op not in OPS]
    for impl in unknown:
        print(f"entry point {impl.op}.{impl.name} ({impl.target}): BROKEN: {impl.error}")
    print(f"\n* = in use here (FLASHTALK_KERNELS / use_impl); entry points: group {GROUP!r}, name OP.NAME")
    return 0


def default_golden() -> Path:
    """../shared/golden beside the checkout (absent from a wheel install: the golden rows are then skipped)."""
    return Path(__file__).resolve().parents[2].parent / "shared" / "golden"


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "dB":
        return "inf dB" if math.isinf(value) else f"{value:.1f} dB"
    return "inf" if math.isinf(value) else f"{value:.3e}"


def verify(args: argparse.Namespace) -> int:
    import torch

    from flashtalk.golden.impl_check import golden_rows, psnr_row
    from flashtalk.kernels.conformance import Row, verify_op
    from flashtalk.kernels.registry import parse_specs, resolve

    if args.timeout <= 0:
        raise FlashTalkError(f"--timeout must be > 0 seconds, got {args.timeout:g}")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise FlashTalkError(f"--device {device}: CUDA is not available here")
    if device != "cpu":
        torch.set_default_device(device)
    golden = Path(args.golden) if args.golden else default_golden()
    if args.golden and not golden.is_dir():
        raise FlashTalkError(f"--golden {golden}: no such folder")
    t0 = time.perf_counter()
    rows: list[Row] = []
    for op, spec in parse_specs(args.impls):
        try:
            impl = resolve(op, spec)
        except FlashTalkError as exc:
            rows.append(Row(op, spec, "import", None, None, False, str(exc)))
            continue
        print(f"verifying {op}={impl.label} ...", flush=True)
        mine = verify_op(impl, args.full, args.timeout, args.match)
        rows += mine
        if any(r.note.startswith(("hang", "not run")) for r in mine):
            rows.append(Row(op, impl.name, "golden + frames", None, None, False, "not run: the implementation hangs"))
        elif not args.no_golden:
            rows += golden_rows(impl, golden, device, args.full)
            rows.append(psnr_row(impl, device))
    print(table(rows))
    failed = [r for r in rows if not r.passed]
    print(f"\n{len(rows) - len(failed)} passed, {len(failed)} failed ({device}, {time.perf_counter() - t0:.1f} s)")
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in rows], indent=1, default=str))
        print(f"wrote {args.json}")
    return 1 if failed else 0


def table(rows) -> str:
    """One line per row: op=impl, case, max error, bound, result."""
    heads = ("op=impl", "case", "max error", "bound", "result")
    cells = [(f"{r.op}={r.impl}", r.case, _fmt(r.max_error, r.unit), _fmt(r.bound, r.unit), r.verdict) for r in rows]
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, h in enumerate(heads[:-1])]
    lines = ["  ".join(h.ljust(w) for h, w in zip(heads, widths)) + "  " + heads[-1]]
    lines += ["  ".join(c.ljust(w) for c, w in zip(cell, widths)) + "  " + cell[-1] for cell in cells]
    return "\n".join(lines)
