"""Test helpers: one tolerance table per dtype, and a verbose mismatch report instead of a bare allclose."""

from __future__ import annotations

import torch

from flashtalk.kernels.tolerance import TOLERANCES  # noqa: F401  the one table, shared with `kernels verify`

# The same computation batched or laid out differently (a CUDA-graph bucket padding 3 frames to 4, channels-last
# vs NCHW): rows are independent, but the backend may pick another algorithm per shape and round differently.
# Rule: at most REBATCH_FACTOR x the difference the reference itself shows between the two batchings / layouts,
# plus REBATCH_FLOOR_ULPS ulps of the output's magnitude (for a reference that happens to agree exactly).
REBATCH_FACTOR, REBATCH_FLOOR_ULPS = 2.0, 4

# Whole-network gates of the low-precision motion path (audio encoder, motion transformer) against the same
# network in fp32 on golden inputs. Rule: relative Frobenius error <= 8 unit roundoffs of the dtype
# (bf16 u = 2^-8, fp16 u = 2^-11); norms, softmax statistics and accumulation stay fp32, so the error is a
# few roundoffs of the stored activations, not a growth with depth.
NETWORK_REL_TOLERANCES: dict[torch.dtype, float] = {torch.bfloat16: 8 * 2.0**-8, torch.float16: 8 * 2.0**-11}
# Sampled motion (normalised motion space): RMS(low precision - fp32) from the same x_T must not exceed the
# sampler's own seed-to-seed spread, RMS(fp32 seed a - fp32 seed b), times this factor.
MOTION_SEED_SPREAD_FACTOR = 1.0


def mismatch_report(
    actual: torch.Tensor, expected: torch.Tensor, atol: float, rtol: float, limit: int = 5
) -> str | None:
    """None if every element satisfies |a - e| <= atol + rtol·|e| (NaN/inf must match); else a report
    with the count, the first offending indices and values, and NaN/inf counts."""
    if actual.shape != expected.shape:
        return f"shape {tuple(actual.shape)} != expected {tuple(expected.shape)}"
    a, e = actual.detach().double().cpu(), expected.detach().double().cpu()
    nan_a, nan_e = torch.isnan(a), torch.isnan(e)
    inf_a, inf_e = torch.isinf(a), torch.isinf(e)
    bad = (nan_a != nan_e) | (inf_a != inf_e) | ((inf_a & inf_e) & (a != e))
    finite = ~(nan_a | nan_e | inf_a | inf_e)
    diff = (a - e).abs()
    bad |= finite & (diff > atol + rtol * e.abs())
    if not bad.any():
        return None
    idx = bad.nonzero()[:limit].tolist()
    lines = [
        f"{int(bad.sum())} / {bad.numel()} elements differ (atol={atol:g}, rtol={rtol:g}); "
        f"max abs err {diff[finite].max().item() if finite.any() else float('nan'):.3e}; "
        f"NaN actual/expected {int(nan_a.sum())}/{int(nan_e.sum())}, inf {int(inf_a.sum())}/{int(inf_e.sum())}"
    ]
    for i in idx:
        lines.append(f"  at {tuple(i)}: actual {a[tuple(i)].item():.6g}, expected {e[tuple(i)].item():.6g}")
    return "\n".join(lines)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, atol: float, rtol: float = 0.0) -> None:
    report = mismatch_report(actual, expected, atol, rtol)
    assert report is None, report


def max_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return (actual.double() - expected.double()).abs().max().item()


def rebatch_atol(reference_a: torch.Tensor, reference_b: torch.Tensor) -> float:
    """The REBATCH rule's absolute tolerance from the reference computed both ways (same values expected)."""
    ulp = torch.finfo(reference_a.dtype).eps * reference_a.abs().max().item()
    return REBATCH_FACTOR * max_err(reference_a, reference_b) + REBATCH_FLOOR_ULPS * ulp


def speech_keypoints(animation) -> "torch.Tensor":
    """Driving keypoints [n, 21, 3] (before stitching) of an audio-driven clip on the network backend, window by
    window through the clip's one-stream driver (`flashtalk.runtime.animation.SpeechAnimation`)."""
    import torch

    backend = animation.backend
    return torch.cat([backend.driving_keypoints(animation.stream, m) for m in animation.motion()])


def speech_excerpts(folder, lengths: dict[str, float]) -> dict:
    """16-kHz WAV excerpts of the bundled speech (name -> seconds), from different offsets inside it."""
    from pathlib import Path

    import soundfile as sf

    from flashtalk.cli.animate import demo_assets
    from flashtalk.io.audio import load_audio

    speech = load_audio(demo_assets()[1]).samples
    out = {}
    for k, (name, seconds) in enumerate(lengths.items()):
        start = int((0.8 + 0.5 * k) * 16000) % (len(speech) - int(seconds * 16000))
        out[name] = Path(folder) / f"{name}.wav"
        sf.write(out[name], speech[start : start + int(seconds * 16000)], 16000)
    return out


def decode_video(path) -> tuple:
    """(RGB frames [N, H, W, 3] uint8, audio seconds or None) of a video file."""
    import av
    import numpy as np

    with av.open(str(path)) as c:
        audio = c.streams.audio[0] if c.streams.audio else None
        seconds = float(audio.duration * audio.time_base) if audio is not None and audio.duration else None
        frames = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
    return frames, seconds
