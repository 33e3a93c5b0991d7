"""`flashtalk profile`: a torch-profiler trace of a few rendered frames of the full network (seeded weights).

    flashtalk profile --frames 8 --out trace.json      # open in chrome://tracing or https://ui.perfetto.dev
    flashtalk profile --preset tiny --device cpu --frames 2

The clip is the bundled portrait and speech; warm-up frames run first, outside the trace. The trace covers
motion generation, rendering, conversion to uint8 and the watermark of `--frames` frames (no video encode),
and the command prints the operators that took the most time.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from flashtalk.constants import PRESETS
from flashtalk.errors import FlashTalkError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="flashtalk-trace.json", help="Chrome trace file to write")
    parser.add_argument("--frames", type=int, default=8, help="frames inside the trace (default 8)")
    parser.add_argument("--warmup", type=int, default=2, help="frames rendered before the trace starts")
    parser.add_argument(
        "--preset", choices=PRESETS, help="network preset (default: liveportrait on CUDA, tiny on the CPU)"
    )
    parser.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--batch", type=int, default=8, help="frames per renderer call")
    parser.add_argument("--kernels", choices=["auto", "triton", "reference"], default="auto")
    parser.add_argument("--top", type=int, default=15, help="rows of the operator table")


def run(args: argparse.Namespace) -> int:
    import torch
    from torch.profiler import ProfilerActivity, profile, record_function

    from flashtalk.cli.animate import demo_assets
    from flashtalk.kernels import use_kernels
    from flashtalk.runtime.engine import Engine

    for name in ("frames", "batch", "top"):
        if getattr(args, name) < 1:
            raise FlashTalkError(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.warmup < 0:
        raise FlashTalkError(f"--warmup must be >= 0, got {args.warmup}")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    cuda = device.startswith("cuda")
    preset = args.preset or ("liveportrait" if cuda else "tiny")
    out = Path(args.out)
    if not out.parent.is_dir():
        raise FlashTalkError(f"--out {out}: folder {out.parent} does not exist")
    engine = Engine.from_weights(None, seeded=True, preset=preset, device=device)
    clip = engine.prepare(*demo_assets(), crop="center")
    if clip.num_frames < args.warmup + args.frames:
        raise FlashTalkError(f"the bundled clip has {clip.num_frames} frames; --warmup + --frames must not exceed it")
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with use_kernels(args.kernels), torch.no_grad():
        batches = clip.batches(args.batch)
        done = 0
        while done < args.warmup:
            done += len(next(batches))
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        traced = 0
        with profile(activities=activities, record_shapes=True) as prof:
            while traced < args.frames:
                with record_function(f"frames {done + traced}.."):
                    traced += len(next(batches))
            if cuda:
                torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
    prof.export_chrome_trace(str(out))
    sort = "cuda_time_total" if cuda else "cpu_time_total"
    print(prof.key_averages().table(sort_by=sort, row_limit=args.top))
    print(
        f"{traced} frames traced in {seconds:.2f} s ({preset} preset, seeded weights, {device}, kernels "
        f"{args.kernels}, batch {args.batch}; profiler overhead included); wrote {out}"
    )
    return 0
