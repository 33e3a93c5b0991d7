"""Warping-stage benchmark: the fused Triton ops (dense_motion_input, deform_warp) vs the reference sequence
in eager PyTorch vs torch.compile of the reference, at the real LivePortrait size (C=32 -> 4 compressed
channels, 21 keypoints, volume 16x64x64) and B in {1, 8, 32}. GPU only.

    python benchmarks/bench_warp.py                    # fp32 (the network's dtype at these ops)
    python benchmarks/bench_warp.py --dtype bf16 --out benchmarks/results/warp.json

Timing: `triton.testing.do_bench` (median, p20/p80). GB/s counts the unavoidable traffic only (inputs read
once, outputs written once); % of the device's HBM peak from `flashtalk.profiling.devices`. On a machine
without CUDA it says so and exits 0: CPU figures are not GPU figures.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import subprocess
import sys

import torch

from flashtalk.bench.warp_cases import C_COMP, C_FEAT, CASES, DTYPES, SIZE, Case, K


def make_inputs(case: Case, dtype: torch.dtype) -> tuple:
    g = torch.Generator(device="cuda").manual_seed(0)
    xs = (torch.rand(case.B, K, 3, device="cuda", generator=g) * 2 - 1) * 0.8
    xd = xs + (torch.rand(case.B, K, 3, device="cuda", generator=g) * 2 - 1) * 0.15
    if case.op == "dense_motion_input":
        return (torch.randn(case.B, C_COMP, *SIZE, device="cuda", generator=g).to(dtype), xs, xd)
    logits = torch.randn(case.B, K + 1, *SIZE, device="cuda", generator=g).to(dtype)
    return (logits, xs, xd, torch.randn(case.B, C_FEAT, *SIZE, device="cuda", generator=g).to(dtype))


def providers(case: Case) -> dict:
    from flashtalk.kernels import use_kernels
    from flashtalk.kernels.deform_warp import deform_warp, deform_warp_ref
    from flashtalk.kernels.dense_motion_input import dense_motion_input, dense_motion_input_ref

    op, ref = (
        (dense_motion_input, dense_motion_input_ref)
        if case.op == "dense_motion_input"
        else (deform_warp, deform_warp_ref)
    )

    def fused(*args):
        with use_kernels("triton"):
            return op(*args)

    return {"fused": fused, "eager-ref": ref, "compile-ref": torch.compile(ref)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    parser.add_argument("--out", help="write the result rows to this JSON file")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_warp: needs a CUDA GPU (none found); CPU timings are not reported")
        return 0
    import triton
    from triton.testing import do_bench

    from flashtalk.profiling.devices import current

    dtype = DTYPES[args.dtype]
    peak = current()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    meta = {
        "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "commit": commit,
        "date": datetime.date.today().isoformat(),
        "command": " ".join(sys.argv),
        "host": platform.node(),
        "dtype": args.dtype,
    }
    print(json.dumps(meta))
    print(f"{'case':28s} {'provider':12s} {'median ms':>10s} {'p20':>8s} {'p80':>8s} {'GB/s':>8s} {'% HBM':>6s}")
    rows = []
    for case in CASES:
        inputs = make_inputs(case, dtype)
        for name, fn in providers(case).items():
            try:
                med, p20, p80 = do_bench(lambda fn=fn, inputs=inputs: fn(*inputs), quantiles=[0.5, 0.2, 0.8])
            except torch.cuda.OutOfMemoryError:
                print(f"{case.name:28s} {name:12s} out of memory")
                torch.cuda.empty_cache()
                continue
            gbps = case.bytes(torch.tensor([], dtype=dtype).element_size()) / med / 1e6
            pct = 100 * gbps / peak.mem_gbps if peak else float("nan")
            print(f"{case.name:28s} {name:12s} {med:10.3f} {p20:8.3f} {p80:8.3f} {gbps:8.0f} {pct:6.1f}")
            rows.append(
                {
                    "case": case.name,
                    "provider": name,
                    "median_ms": med,
                    "p20_ms": p20,
                    "p80_ms": p80,
                    "gbps": gbps,
                    "pct_hbm": pct,
                }
            )
        del inputs
        torch.cuda.empty_cache()
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
