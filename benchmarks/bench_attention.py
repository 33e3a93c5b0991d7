"""Attention benchmark: FlashTalk's Triton kernel vs PyTorch SDPA per backend, xformers, and torch.compile of
the reference, on the shapes FlashTalk runs plus a standard long-sequence grid. GPU only.

    python benchmarks/bench_attention.py                       # every case, fp16
    python benchmarks/bench_attention.py --group motion --dtype bf16
    python benchmarks/bench_attention.py --sweep --group standard   # time the kernel's tile alternatives
    python benchmarks/bench_attention.py --out benchmarks/results/attention.json

Timing: `triton.testing.do_bench` (warm-up, then median and p20/p80 of many runs). FLOPs counted as
4·B·H·Lq·Lk·D (QKᵀ and PV), halved for causal; % of peak against `flashtalk.profiling.devices`.
On a machine without CUDA it says so and exits 0: CPU figures are not GPU figures.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import platform
import subprocess
import sys
from collections.abc import Callable

import torch

from flashtalk.bench.attention_cases import CASES, DTYPES, Case, make_inputs, providers


def time_ms(fn: Callable[[], object]) -> tuple[float, float, float]:
    from triton.testing import do_bench

    median, p20, p80 = do_bench(fn, warmup=25, rep=100, quantiles=[0.5, 0.2, 0.8])
    return median, p20, p80


def environment() -> dict:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = "unknown"
    import triton

    return {
        "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "cuda": torch.version.cuda,
        "commit": commit,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([sys.executable.rsplit("/", 1)[-1], *sys.argv]),
        "host": platform.node(),
    }


def bench_case(case: Case, dtype: torch.dtype, wanted: set[str] | None, peak_tflops: float | None) -> list[dict]:
    from flashtalk.kernels.attention import _variant, attention_ref

    torch.manual_seed(0)
    q, k, v, kpm = make_inputs(case, dtype)
    ref = attention_ref(q, k, v, key_padding_mask=kpm, causal=case.causal)
    rows = []
    for name, fn in providers(case, q, k, v, kpm).items():
        if wanted and name not in wanted:
            continue
        row = {"case": case.name, "provider": name, "dtype": str(dtype).removeprefix("torch.")}
        if isinstance(fn, str):
            row["skipped"] = fn
        else:
            try:
                err = (fn().float() - ref.float()).nan_to_num(0.0).abs().max().item()
                median, p20, p80 = time_ms(fn)
            except (
                Exception
            ) as e:  # a provider that fails on this case (out of memory, unsupported) is a row, not a crash
                row["skipped"] = f"failed: {str(e).splitlines()[0][:100]}"
            else:
                tflops = case.flops() / (median * 1e-3) / 1e12
                row.update(
                    median_ms=median,
                    p20_ms=p20,
                    p80_ms=p80,
                    tflops=tflops,
                    max_err=err,
                    pct_peak=100 * tflops / peak_tflops if peak_tflops else None,
                )
                if name == "flashtalk":
                    row["variant"] = _variant(case.L)
        rows.append(row)
        torch.cuda.empty_cache()
    return rows


def sweep_case(case: Case, dtype: torch.dtype, peak_tflops: float | None) -> list[dict]:
    """Time the kernel alone under each config of the pruned sweep list (shape-chosen variant)."""
    from flashtalk.kernels.attention import _SWEEP, _launch, _variant

    torch.manual_seed(0)
    q, k, v, kpm = make_inputs(case, dtype)
    rows, seen = [], set()
    for cfg in _SWEEP:
        if _variant(case.L) == "short":  # one tile holds every key: BN does not apply
            cfg = {key: val for key, val in cfg.items() if key != "BN"}
        if tuple(sorted(cfg.items())) in seen:
            continue
        seen.add(tuple(sorted(cfg.items())))
        fn = lambda: _launch(q, k, v, None, kpm, case.causal, 1 / math.sqrt(case.D), config=cfg)  # noqa: E731
        median, p20, p80 = time_ms(fn)
        tflops = case.flops() / (median * 1e-3) / 1e12
        rows.append(
            {
                "case": case.name,
                "provider": f"flashtalk-{_variant(case.L)}",
                "config": cfg,
                "median_ms": median,
                "p20_ms": p20,
                "p80_ms": p80,
                "tflops": tflops,
                "pct_peak": 100 * tflops / peak_tflops if peak_tflops else None,
            }
        )
    return rows


def fmt(row: dict) -> str:
    head = f"{row['case']:<36} {row['provider'] + (' ' + str(row.get('config')) if 'config' in row else ''):<24}"
    if "skipped" in row:
        return f"{head} -- {row['skipped']}"
    pct = f"{row['pct_peak']:5.1f}%" if row.get("pct_peak") is not None else "  n/a "
    err = f" err {row['max_err']:.1e}" if "max_err" in row else ""
    return (
        f"{head} {row['median_ms']:9.4f} ms (p20 {row['p20_ms']:.4f}, p80 {row['p80_ms']:.4f}) "
        f"{row['tflops']:7.1f} TFLOP/s {pct}{err}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--group", choices=sorted({c.group for c in CASES}), action="append", help="case group(s) to run (default: all)"
    )
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp16")
    parser.add_argument("--providers", help="comma-separated subset, e.g. flashtalk,sdpa-flash")
    parser.add_argument("--sweep", action="store_true", help="time the kernel's tile alternatives instead")
    parser.add_argument("--out", help="write the rows and the environment as JSON here")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print(
            "bench_attention: needs a CUDA GPU; none is visible, so nothing was measured "
            "(CPU figures are not GPU figures)."
        )
        return 0

    from flashtalk.kernels import use_kernels
    from flashtalk.profiling.devices import current

    env = environment()
    peak = current()
    peak_tflops = peak.tflops("bf16") if peak else None
    print(" | ".join(f"{k}={v}" for k, v in env.items()))
    print(
        f"peak: {peak.name + f' {peak_tflops:.0f} TFLOP/s dense fp16/bf16' if peak else 'unknown device, no % of peak'}"
    )
    dtype = DTYPES[args.dtype]
    wanted = set(args.providers.split(",")) if args.providers else None
    rows = []
    with use_kernels("triton"):
        for case in CASES:
            if args.group and case.group not in args.group:
                continue
            case_rows = (
                sweep_case(case, dtype, peak_tflops) if args.sweep else bench_case(case, dtype, wanted, peak_tflops)
            )
            for row in case_rows:
                print(fmt(row), flush=True)
            rows += case_rows
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"environment": env, "rows": rows}, f, indent=1)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
