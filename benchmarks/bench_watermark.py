"""Watermark: embed cost on the GPU (fused Triton kernel vs the PyTorch reference), and the robustness table.

    python benchmarks/bench_watermark.py                 # GPU timing, 512x512 frames, batch 1 / 16 / 64
    python benchmarks/bench_watermark.py --robustness    # CPU: detection after attacks -> markdown table
    python benchmarks/bench_watermark.py --robustness --clips 4 --out benchmarks/results/watermark_robustness.md

Timing uses `triton.testing.do_bench` (median, p20/p80) and reports ms per 512x512 frame and GB/s (a uint8
frame read + written once). Without CUDA the timing mode says it needs a GPU and exits 0: CPU figures are
not GPU figures.

The synthetic clips (`make_clip`) are shared with tests/provenance/test_watermark.py: procedural portrait-like
images, natural textures, gradients and photo-like scenes, each drifting slightly over time with sensor
noise, so that H.264 has real motion to code.
"""

from __future__ import annotations

import argparse
import datetime
import io
import math
import platform
import subprocess
import sys
import time

import numpy as np

KINDS = ("portrait", "texture", "gradient", "photo")


# ------------------------------------------------------------------------------------ synthetic content


def smooth_field(rng: np.random.Generator, h: int, w: int, scale: float, octaves: int = 4) -> np.ndarray:
    """[h, w] fp32 fractal noise: bicubic-upsampled Gaussian noise, octaves halving the scale and amplitude."""
    import torch
    import torch.nn.functional as F

    out = np.zeros((h, w), np.float32)
    amp = 1.0
    for o in range(octaves):
        s = max(2, int(scale / 2**o))
        g = torch.from_numpy(rng.standard_normal((1, 1, h // s + 3, w // s + 3)).astype(np.float32))
        up = F.interpolate(g, size=(h + 3 * s, w + 3 * s), mode="bicubic", align_corners=False)
        out += amp * up[0, 0, s : s + h, s : s + w].numpy()
        amp *= 0.5
    return out


def _portrait(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    tint = rng.uniform(0.6, 1.2, 3)
    img = (40 + rng.uniform(20, 80) * (yy / h))[..., None] + 12 * smooth_field(rng, h, w, 64)[..., None] * tint
    cx, cy = w * rng.uniform(0.45, 0.55), h * rng.uniform(0.42, 0.5)
    rx, ry = w * rng.uniform(0.18, 0.25), h * rng.uniform(0.25, 0.32)
    face = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2
    skin = rng.uniform(150, 225) * np.array([1.0, 0.78, 0.66]) * (1 - 0.25 * ((xx - cx) / rx)[..., None])
    skin = skin + 5 * smooth_field(rng, h, w, 6)[..., None]
    m = np.clip((1 - face) * 8, 0, 1)[..., None]
    img = img * (1 - m) + skin * m
    for ex in (-0.4, 0.4):
        eye = ((xx - cx - ex * rx) / (0.15 * rx)) ** 2 + ((yy - cy + 0.2 * ry) / (0.07 * ry)) ** 2
        img = np.where((eye < 1)[..., None], np.array([40.0, 30, 30]), img)
    mouth = ((xx - cx) / (0.35 * rx)) ** 2 + ((yy - cy - 0.45 * ry) / (0.08 * ry)) ** 2
    img = np.where((mouth < 1)[..., None], np.array([150.0, 60, 60]), img)
    hair = ((yy < cy - 0.7 * ry) & (np.abs(xx - cx) < rx * 1.2)) | ((face > 1) & (face < 1.5) & (yy < cy))
    return np.where(hair[..., None], np.array([50.0, 35, 25]) + 15 * smooth_field(rng, h, w, 4)[..., None], img)


def _texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Fabric / foliage / wall-like fractal texture of moderate contrast."""
    return rng.uniform(70, 180, 3) + rng.uniform(6, 14) * smooth_field(rng, h, w, rng.uniform(8, 32), 5)[
        ..., None
    ] * rng.uniform(0.6, 1.4, 3)


def _gradient(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    a, b = rng.uniform(-1, 1, 2)
    g = a * xx / w + b * yy / h
    t = ((g - g.min()) / (g.max() - g.min() + 1e-6))[..., None]
    return rng.uniform(20, 235, 3) * (1 - t) + rng.uniform(20, 235, 3) * t


def _photo(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    img = 128 + 50 * smooth_field(rng, h, w, 96, 6)[..., None] * rng.uniform(0.6, 1.4, 3)
    yy, xx = np.mgrid[0:h, 0:w]
    for _ in range(int(rng.integers(2, 6))):
        cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(10, w / 3)
        inside = ((xx - cx) ** 2 + (yy - cy) ** 2 < r * r)[..., None]
        img = np.where(inside, rng.uniform(0, 255, 3) + 10 * smooth_field(rng, h, w, 12, 2)[..., None], img)
    return img


_MAKERS = {"portrait": _portrait, "texture": _texture, "gradient": _gradient, "photo": _photo}


def make_image(kind: str, seed: int, h: int = 512, w: int = 512) -> np.ndarray:
    """[h, w, 3] float image of `kind` (one of KINDS), deterministic in `seed`."""
    return _MAKERS[kind](np.random.default_rng(seed), h, w)


def make_clip(kind: str, seed: int, frames: int = 50, h: int = 512, w: int = 512) -> np.ndarray:
    """[frames, h, w, 3] uint8: one image of `kind` drifting a few pixels, with sensor noise (σ = 1)."""
    rng = np.random.default_rng(seed + 1_000_003)
    base = make_image(kind, seed, h + 16, w + 16)
    out = np.empty((frames, h, w, 3), np.uint8)
    for i in range(frames):
        dx, dy = round(8 + 4 * math.sin(i / 7)), round(8 + 4 * math.cos(i / 9))
        out[i] = np.clip(base[dy : dy + h, dx : dx + w] + rng.normal(0, 1.0, (h, w, 3)), 0, 255).round()
    return out


# ------------------------------------------------------------------------------------------ attacks


def h264(frames: np.ndarray, crf: int = 28, fps: int = 25) -> np.ndarray:
    """Encode RGB frames with libx264 (yuv420p, preset medium) at `crf` and decode them back (PyAV)."""
    import av

    h, w = frames.shape[1] & ~1, frames.shape[2] & ~1
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"crf": str(crf)}
        for f in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f[:h, :w]), format="rgb24")))
        container.mux(stream.encode())
    buf.seek(0)
    with av.open(buf) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def rescale(frames: np.ndarray, factor: float) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
    size = (round(frames.shape[1] * factor), round(frames.shape[2] * factor))
    y = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=factor < 1)
    return y.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def rescale_xy(frames: np.ndarray, fx: float, fy: float) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
    y = F.interpolate(
        x,
        size=(round(frames.shape[1] * fy), round(frames.shape[2] * fx)),
        mode="bilinear",
        align_corners=False,
        antialias=True,
    )
    return y.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def crop(frames: np.ndarray, fraction: float) -> np.ndarray:
    """Cut `fraction` of the width and of the height, unevenly (2/3 from the left/top, 1/3 from the right/bottom)."""
    h, w = frames.shape[1:3]
    ch, cw = round(h * fraction), round(w * fraction)
    return frames[:, 2 * ch // 3 : h - ch // 3, 2 * cw // 3 : w - cw // 3]


def tone(frames: np.ndarray, gain: float, offset: float) -> np.ndarray:
    return np.clip(frames.astype(np.float32) * gain + offset, 0, 255).round().astype(np.uint8)


# name -> attack on marked frames; every one ends in an H.264 encode, as a distributed video would
ATTACKS = {
    "none (lossless)": lambda f: f,
    "H.264 CRF 18": lambda f: h264(f, 18),
    "H.264 CRF 23": lambda f: h264(f, 23),
    "H.264 CRF 28": lambda f: h264(f, 28),
    "H.264 CRF 30": lambda f: h264(f, 30),
    "H.264 CRF 23, twice (re-encode)": lambda f: h264(h264(f, 23), 23),
    "scale 50% + CRF 23": lambda f: h264(rescale(f, 0.5), 23),
    "scale 75% + CRF 23": lambda f: h264(rescale(f, 0.75), 23),
    "scale 150% + CRF 23": lambda f: h264(rescale(f, 1.5), 23),
    "scale 200% + CRF 23": lambda f: h264(rescale(f, 2.0), 23),
    "crop 10% + CRF 23": lambda f: h264(crop(f, 0.1), 23),
    "crop 20% + CRF 23": lambda f: h264(crop(f, 0.2), 23),
    "brightness +30 + CRF 23": lambda f: h264(tone(f, 1.0, 30), 23),
    "contrast x0.7 + CRF 23": lambda f: h264(tone(f, 0.7, 20), 23),
    "contrast x1.3 + CRF 23": lambda f: h264(tone(f, 1.3, -35), 23),
    "H.264 CRF 35": lambda f: h264(f, 35),
    "scale 50% + CRF 28": lambda f: h264(rescale(f, 0.5), 28),
    "crop 20% + scale 75% + CRF 28": lambda f: h264(rescale(crop(f, 0.2), 0.75), 28),
    "scale 110% x, 90% y (aspect change) + CRF 23": lambda f: h264(rescale_xy(f, 1.1, 0.9), 23),
}


def robustness(clips: int, frames: int, out: str | None) -> None:
    import torch

    from flashtalk.provenance.watermark import detect_frames, embed, payload_id

    torch.manual_seed(0)
    torch.set_num_threads(1)  # many small ops: intra-op threads only spin on a shared CPU
    key, payload = "bench-key", "FlashTalk robustness"
    want = payload_id(payload)
    marked, psnrs = [], []
    for kind in KINDS:
        for c in range(clips):
            raw = make_clip(kind, 100 + c, frames)
            m = embed(torch.from_numpy(raw), key=key, payload=payload).numpy()
            mse = ((m.astype(np.float64) - raw) ** 2).mean()
            psnrs.append(10 * math.log10(255**2 / mse))
            marked.append((kind, raw, m))
    rows = []
    for name, attack in ATTACKS.items():
        found = {k: 0 for k in KINDS}
        false = 0
        t0 = time.perf_counter()
        for kind, raw, m in marked:
            d = detect_frames(attack(m)[:: max(1, frames // 16)], key=key)
            found[kind] += d.found and d.payload == want
            false += detect_frames(attack(raw)[:: max(1, frames // 16)], key=key).found
        rows.append((name, found, false, time.perf_counter() - t0))
        print(name, found, false, flush=True)
    n = clips * len(KINDS)
    lines = [
        "# Watermark robustness (measured)",
        "",
        f"{clips} clip(s) per content kind x {len(KINDS)} kinds = {n} marked clips of {frames} frames (512x512, "
        f"{frames / 25:.0f} s at 25 FPS), and the same {n} clips unmarked. Detection looks at 16 evenly spaced frames. "
        f"A clip counts as detected only with the exact 32-bit payload. PSNR of marked vs unmarked frames: "
        f"min {min(psnrs):.2f} dB, mean {np.mean(psnrs):.2f} dB. Each attack is followed by an H.264 encode "
        "(libx264 preset medium, yuv420p) as a distributed video would be.",
        "",
        "| attack | "
        + " | ".join(f"{k} (of {clips})" for k in KINDS)
        + f" | detected (of {n}) | false positives on unmarked (of {n}) |",
        "| --- | " + " | ".join("---" for _ in KINDS) + " | --- | --- |",
    ]
    for name, found, false, _ in rows:
        cells = " | ".join(str(found[k]) for k in KINDS)
        lines.append(f"| {name} | {cells} | {sum(found.values())} | {false} |")
    lines += [
        "",
        f"Command: `python benchmarks/bench_watermark.py --robustness --clips {clips} --frames {frames}`; "
        f"{_provenance()}.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if out:
        with open(out, "w") as fh:
            fh.write(text)


def _provenance() -> str:
    import torch

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = "?"
    return (
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, commit {commit}, "
        f"{datetime.date.today().isoformat()}"
    )


# ------------------------------------------------------------------------------------------- timing


def timing(batches: list[int]) -> None:
    import torch

    if not torch.cuda.is_available():
        print(
            "bench_watermark: timing needs a CUDA GPU (none found); nothing measured. `--robustness` runs on the CPU."
        )
        return
    import triton
    from triton.testing import do_bench

    from flashtalk.kernels import use_kernels
    from flashtalk.provenance.watermark import embed

    print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}, {_provenance()}")
    print("| provider | batch | ms / frame (p50) | p20 | p80 | GB/s |")
    print("| --- | --- | --- | --- | --- | --- |")
    for B in batches:
        frames = torch.randint(0, 256, (B, 512, 512, 3), dtype=torch.uint8, device="cuda")
        for provider, m in (("triton (fused)", "triton"), ("pytorch reference", "reference")):
            with use_kernels(m):
                fn = lambda: embed(frames, key="bench", payload="FlashTalk bench")  # noqa: E731
                fn()
                p50, p20, p80 = do_bench(fn, quantiles=[0.5, 0.2, 0.8])
            gbs = 2 * frames.numel() / (p50 * 1e-3) / 1e9
            print(f"| {provider} | {B} | {p50 / B:.4f} | {p20 / B:.4f} | {p80 / B:.4f} | {gbs:.0f} |")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--robustness", action="store_true", help="measure detection after attacks (CPU)")
    p.add_argument("--clips", type=int, default=3, help="clips per content kind (robustness)")
    p.add_argument("--frames", type=int, default=50, help="frames per clip (robustness)")
    p.add_argument("--out", help="write the robustness table (markdown) here")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 16, 64], help="batch sizes (timing)")
    args = p.parse_args(argv)
    if args.robustness:
        robustness(args.clips, args.frames, args.out)
    else:
        timing(args.batch)
    return 0


if __name__ == "__main__":
    sys.exit(main())
