"""Renderer benchmark (warping + SPADE decoder + stitching, per frame) and the precision-fidelity study.

    python benchmarks/bench_renderer.py                          # GPU: latency at batch 1, throughput 8/32/64
    python benchmarks/bench_renderer.py --out renderer.json      # + JSON rows
    python benchmarks/bench_renderer.py --smoke                  # CPU: tiny preset, 16x16 volume, no GPU claims
    python benchmarks/bench_renderer.py --fidelity report.md --golden ../shared/golden/liveportrait

Providers, same run, same inputs: eager fp32 (the reference Renderer, PyTorch ops only), eager bf16 (the
same modules cast to bf16), torch.compile (default mode: max-autotune alone takes minutes) of the bf16 modules, and FlashTalk bf16 +
CUDA graphs (`GraphedRenderer`: folded norms, fused SPADE decoder, channels-last, graph buckets = the batch
sizes). Timing: `flashtalk.profiling.timing.measure` (CUDA events, median and p20/p80); TFLOP/s from the
FLOP count of one eager frame; % of the device's dense bf16 peak from `flashtalk.profiling.devices`.

Fidelity: PSNR and max abs error of rendered frames against the fp32 reference, per precision, on the
golden inputs (decoder alone on golden φ; warping + decoder on golden f_s / keypoints) and on the bundled
portrait photo encoded by the same (seeded) networks; also NaN count and black / saturated 8x8 blocks.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import math
import platform
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from flashtalk.kernels import use_kernels  # noqa: E402
from flashtalk.models.liveportrait.optimized import PRECISIONS, optimize_renderer, render_frames  # noqa: E402
from flashtalk.models.liveportrait.renderer import Renderer, SourceState  # noqa: E402
from flashtalk.profiling import devices  # noqa: E402
from flashtalk.profiling.timing import measure  # noqa: E402
from flashtalk.runtime.graphed_renderer import GraphedRenderer  # noqa: E402
from flashtalk.weights.liveportrait import seeded_renderer  # noqa: E402


def _commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        return "unknown"


def plain_cast(renderer: Renderer, dtype: torch.dtype) -> Renderer:
    """The reference modules cast to `dtype` (warping + decoder), no rewrites: the eager baseline. As in
    `optimize_renderer`, the warping module stays fp32 on the CPU (no bf16 avg_pool3d there)."""
    r = copy.deepcopy(renderer)
    r.warping_dtype = dtype if next(renderer.parameters()).device.type != "cpu" else torch.float32
    r.warping_module.to(r.warping_dtype)
    r.spade_generator.to(dtype)
    r.precision = next(k for k, v in PRECISIONS.items() if v == dtype)
    return r


def count_flops(fn) -> float | None:
    try:
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as counter, torch.no_grad():
            fn()
        return float(counter.get_total_flops())
    except Exception:
        return None


def setup(preset: str, device: str, small_volume: bool) -> tuple[Renderer, SourceState]:
    r = seeded_renderer(preset).to(device)
    image = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(0)).to(device)
    src = r.encode_source(image)
    if small_volume:
        src = SourceState(**{**src.__dict__, "f_s": src.f_s[..., :16, :16].contiguous()})
    return r, src


def providers(r: Renderer, src: SourceState, batch: int, compile_: bool) -> dict:
    fp32, bf16 = plain_cast(r, torch.float32), plain_cast(r, torch.bfloat16)

    def eager(model):
        return lambda x_d: render_frames(model, src.f_s, src.x_s, x_d)

    provs = {"eager-fp32": eager(fp32), "eager-bf16": eager(bf16)}
    if compile_:
        comp = plain_cast(r, torch.bfloat16)
        comp.warping_module = torch.compile(comp.warping_module)
        comp.spade_generator = torch.compile(comp.spade_generator)
        provs["compile-bf16"] = eager(comp)
    fast = GraphedRenderer(r, "bf16", buckets=(batch,))
    provs["flashtalk-bf16-graphs"] = lambda x_d: fast.render(src, x_d)
    return provs


def bench(args) -> list[dict]:
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    preset = args.preset or ("liveportrait" if cuda else "tiny")
    r, src = setup(preset, device, small_volume=not cuda)
    peak = devices.current() if cuda else None
    rows = []
    for batch in args.batches:
        g = torch.Generator(device=device).manual_seed(batch)
        sets = [
            src.x_s.expand(batch, -1, -1) + 0.03 * torch.randn(batch, r.num_kp, 3, device=device, generator=g)
            for _ in range(3)
        ]
        fp32 = plain_cast(r, torch.float32)
        flops = count_flops(lambda: render_frames(fp32, src.f_s, src.x_s, sets[0]))
        for name, fn in providers(r, src, batch, args.compile and cuda).items():
            mode = "auto" if name.startswith("flashtalk") else "reference"
            with use_kernels(mode), torch.no_grad():
                t = measure(lambda i: fn(sets[i % len(sets)]), warmup=args.warmup, iters=args.iters, device=device)
            fps = batch / (t.median_ms / 1e3)
            tflops = flops / (t.median_ms / 1e3) / 1e12 if flops else None
            rows.append(
                {
                    "provider": name,
                    "batch": batch,
                    "median_ms": t.median_ms,
                    "p20_ms": t.p20_ms,
                    "p80_ms": t.p80_ms,
                    "ms_per_frame": t.median_ms / batch,
                    "fps": fps,
                    "tflops": tflops,
                    "pct_peak_bf16": 100 * tflops / peak.bf16_tflops if (tflops and peak) else None,
                    "device": torch.cuda.get_device_name() if cuda else platform.processor() or "cpu",
                    "preset": preset,
                    "torch": torch.__version__,
                    "commit": _commit(),
                    "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                    "command": " ".join(sys.argv),
                }
            )
            row = rows[-1]
            pct = f"{row['pct_peak_bf16']:.1f}%" if row["pct_peak_bf16"] is not None else "-"
            print(
                f"{name:24s} B={batch:3d}  {t.median_ms:9.2f} ms [{t.p20_ms:.2f}, {t.p80_ms:.2f}]  "
                f"{row['ms_per_frame']:8.2f} ms/frame  {fps:8.1f} FPS  "
                f"{(tflops or float('nan')):7.2f} TFLOP/s  {pct} of bf16 peak",
                flush=True,
            )
    return rows


# ------------------------------------------------------------------------------------------- fidelity


def frame_stats(frames: torch.Tensor, ref: torch.Tensor) -> dict:
    d = frames.double() - ref.double()
    mse = d.pow(2).mean().item()
    blocks = torch.nn.functional.avg_pool2d(frames.float().nan_to_num(0.0), 8)
    return {
        "psnr_db": math.inf if mse == 0 else 10 * math.log10(1.0 / mse),
        "max_abs": d.abs().max().item(),
        "nan": int(torch.isnan(frames).sum()),
        "black_blocks": int((blocks < 0.01).sum()),
        "saturated_blocks": int((blocks > 0.99).sum()),
    }


@torch.no_grad()
def fidelity(args) -> str:
    import numpy as np

    golden = Path(args.golden) if args.golden else None
    r = seeded_renderer("liveportrait")
    results: list[tuple[str, str, dict]] = []
    precisions = [p for p in ("bf16", "fp16") if p in args.precisions]
    fast = {p: optimize_renderer(r, p) for p in precisions}

    def decoders(feature: torch.Tensor, case: str) -> None:
        ref = r.spade_generator(feature)
        for p in precisions:
            out = fast[p].spade_generator(feature.to(PRECISIONS[p])).float()
            results.append((case, p, frame_stats(out, ref)))
            print(case, p, results[-1][2], flush=True)

    if golden is not None:
        with np.load(golden / "spade_generator.npz") as npz:
            decoders(torch.from_numpy(npz["in_feature"]).float(), "golden φ -> decoder (G)")
        with np.load(golden / "warping_module.npz") as npz:
            f, ks, kd = (torch.from_numpy(npz[k]).float() for k in ("in_feature_3d", "in_kp_source", "in_kp_driving"))
        decoders(r.warping_module(f, kd, ks, return_deformation=False)["out"], "golden f_s, x_s, x_d -> W -> G")
    from PIL import Image

    image = Image.open(ROOT / "flashtalk" / "assets" / "portrait.jpg").convert("RGB")
    side = min(image.size)
    image = image.crop(
        ((image.width - side) // 2, (image.height - side) // 2, (image.width + side) // 2, (image.height + side) // 2)
    ).resize((256, 256))
    t = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)[None].float() / 255
    src = r.encode_source(t)
    x_d = src.x_s + 0.02 * torch.randn(1, r.num_kp, 3, generator=torch.Generator().manual_seed(5))
    ref = r.render(src, x_d)
    for p in precisions:
        out = render_frames(fast[p], src.f_s, src.x_s, x_d)
        results.append(("portrait.jpg -> F, M -> stitch -> W -> G", p, frame_stats(out, ref)))
        print(results[-1], flush=True)
    lines = [
        "| input | precision | PSNR vs fp32 (dB) | max abs err | NaN | black 8x8 blocks | saturated 8x8 blocks |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for case, p, s in results:
        lines.append(
            f"| {case} | {p} | {s['psnr_db']:.2f} | {s['max_abs']:.2e} | {s['nan']} | {s['black_blocks']} | "
            f"{s['saturated_blocks']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batches", type=int, nargs="+", default=None)
    p.add_argument("--preset", choices=("liveportrait", "tiny"), default=None)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--no-compile", dest="compile", action="store_false")
    p.add_argument("--smoke", action="store_true", help="on the CPU: tiny preset, batches 1 2, 2 iterations")
    p.add_argument("--out", type=Path, help="write the rows as JSON")
    p.add_argument("--fidelity", type=Path, help="write the precision-fidelity table (Markdown) here")
    p.add_argument("--golden", help="golden folder (liveportrait) for --fidelity")
    p.add_argument("--precisions", nargs="+", default=["bf16", "fp16"])
    args = p.parse_args(argv)
    if args.fidelity:
        table = fidelity(args)
        args.fidelity.write_text(table + "\n")
        print(table)
        return 0
    if not torch.cuda.is_available():
        print("no CUDA device: renderer GPU numbers need a GPU (CPU figures are not GPU figures).")
        if not args.smoke:
            return 0
        args.batches, args.iters, args.warmup = args.batches or [1, 2], 2, 1
    args.batches = args.batches or [1, 8, 32, 64]
    rows = bench(args)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
