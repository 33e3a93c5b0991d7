"""The model-level half of `flashtalk kernels verify`: the golden networks with an implementation swapped in
(the `verify-golden` rows whose networks call the op), and the PSNR of a few rendered frames against ours.

Golden rows by op (default: what CI affords on 2 cores; `full`: every file of the family):

* attention: JoyVASA's audio encoder and denoiser forward (full: + the pipeline and samplers);
* dense_motion_input, deform_warp: LivePortrait's warping module as published;
* warp_tail: the warping module on the renderer's fast path with the fused tail (`@fast+fused-tail` rows);
* spade_norm, warp2d, paste_back, watermark_embed: no golden network calls them (frames only).

Frames: a few frames of the bundled portrait and speech, rendered with the implementation and with ours,
compared by PSNR (pass: at least `MIN_PSNR_DB`): the seeded network (tiny preset on the CPU, LivePortrait's on
CUDA) for the network's ops, the weights-free preview (paste-back and watermark on) for the frame ops.
"""

from __future__ import annotations

import math
from pathlib import Path

from flashtalk.kernels.conformance import Row, _one_line
from flashtalk.kernels.registry import Impl, use_impl

MIN_PSNR_DB = 40.0
FRAMES = 3
GOLDEN_FILES: dict[str, tuple[str, list[str], list[str] | None]] = {  # op: (family, default files, full files)
    "attention": ("joyvasa", ["audio_encoder", "denoiser_forward"], None),
    "dense_motion_input": ("liveportrait", ["warping_module"], None),
    "deform_warp": ("liveportrait", ["warping_module"], None),
    "warp_tail": ("liveportrait", ["warping_module"], None),
}
PREVIEW_OPS = ("warp2d", "paste_back", "watermark_embed")
NETWORK_OPS = ("attention", "dense_motion_input", "deform_warp")


def golden_rows(impl: Impl, golden: Path, device: str, full: bool = False) -> list[Row]:
    from flashtalk.golden.verify import verify

    if impl.op not in GOLDEN_FILES:
        return [Row(impl.op, impl.name, "golden", None, None, True, "skipped: no golden network calls this op")]
    family, files, full_files = GOLDEN_FILES[impl.op]
    folder = Path(golden) / family
    if not (folder / "golden.json").is_file():
        return [Row(impl.op, impl.name, f"golden {family}", None, None, True, f"skipped: no golden folder at {folder}")]
    calls = impl.calls
    try:
        with use_impl(impl.op, impl.name):
            results = verify(
                folder,
                "fp32",
                "reference",
                device,
                None if full else (full_files or files),
                published_only=impl.op != "warp_tail",
            )
    except Exception as exc:  # the implementation failed inside a network: one row, named
        return [Row(impl.op, impl.name, f"golden {family}", None, None, False, f"raised {_one_line(exc)}")]
    if impl.op == "warp_tail":
        results = [r for r in results if "@" in r.array]  # only the fast path calls the fused tail
    rows = [
        Row(impl.op, impl.name, f"golden {r.file}:{r.array}", r.max_abs, r.limit, r.passed, r.note) for r in results
    ]
    if impl.name != "flashtalk" and impl.calls == calls:
        rows.append(
            Row(impl.op, impl.name, f"golden {family}", None, None, False, "the implementation was never called")
        )
    return rows


def _frames(op: str, device: str):
    import numpy as np

    from flashtalk.io.audio import AudioClip, load_audio
    from flashtalk.runtime.engine import Engine

    assets = Path(__file__).resolve().parents[1] / "assets"
    if op in PREVIEW_OPS:
        engine, kwargs = Engine.preview(device), dict(paste_back=True)
    else:
        import torch

        from flashtalk.runtime.backends.network import NetworkBackend
        from flashtalk.weights.bundle import seeded_networks

        nets = seeded_networks("liveportrait" if device.startswith("cuda") else "tiny")
        engine, kwargs = Engine(NetworkBackend(nets.to(torch.device(device)), torch.device(device), seeded=True)), {}
    speech = load_audio(assets / "speech.ogg", target_rate=16000)
    n = FRAMES * 640 + 640
    speech = AudioClip(np.ascontiguousarray(speech.samples[:n]), 16000, n / 16000, speech.source)
    clip = engine.prepare(assets / "portrait.jpg", speech, crop="center", seed=0, **kwargs)
    return np.concatenate(list(clip.batches(FRAMES)))[:FRAMES]


def psnr_row(impl: Impl, device: str) -> Row:
    """PSNR of a few frames rendered with `impl` against the same frames with ours."""
    import numpy as np

    case = f"frames x{FRAMES} PSNR vs ours"
    if impl.op not in PREVIEW_OPS + NETWORK_OPS:
        return Row(
            impl.op,
            impl.name,
            case,
            None,
            None,
            True,
            "skipped: the CPU frame path does not call this op (the fast renderer on CUDA does)",
        )
    calls = impl.calls
    try:
        ours = _frames(impl.op, device)
        with use_impl(impl.op, impl.name):
            theirs = _frames(impl.op, device)
    except Exception as exc:
        return Row(impl.op, impl.name, case, None, None, False, f"raised {_one_line(exc)}")
    if impl.name != "flashtalk" and impl.calls == calls:
        return Row(impl.op, impl.name, case, None, None, False, "the implementation was never called")
    mse = float(((ours.astype(np.float64) - theirs.astype(np.float64)) ** 2).mean())
    db = math.inf if mse == 0 else 10 * math.log10(255**2 / mse)
    note = "" if db >= MIN_PSNR_DB else f"PSNR {db:.1f} dB < {MIN_PSNR_DB:g} dB"
    return Row(impl.op, impl.name, case, db, MIN_PSNR_DB, db >= MIN_PSNR_DB, note, unit="dB")
