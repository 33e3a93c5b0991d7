"""Motion of the `low` latency schedule against `exact`: continuity at commit boundaries and RMS difference.

    python benchmarks/low_latency_motion.py [--preset tiny|liveportrait] [--frames 100] [--weights DIR]

One stream's motion for the same speech and seed in both modes (all audio given at once, so the schedule
alone differs). Reports (1) the mean frame-to-frame change of the low mode's motion across commit
boundaries over the mean inside committed spans (issue 17 bound: <= 1.5), and (2) the RMS difference of
low vs exact motion in JoyVASA's normalised motion space (expression by the template's mean / std; scale
and translation by the template's min / max). With seeded weights this checks the schedule's conditioning,
not lip-sync: judge that with the released weights (`--weights DIR`), and by ear / eye through
`flashtalk serve --weights DIR` with `"latency":"low"` against `"exact"`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flashtalk.constants import HOP
from flashtalk.runtime.backends.network import NetworkBackend
from flashtalk.runtime.windows import LOW_COMMIT, LOW_LOOKAHEAD
from flashtalk.weights.bundle import load_networks, seeded_networks


def speech(frames: int) -> np.ndarray:
    rng = np.random.default_rng(9)
    t = np.arange(frames * HOP) / 16000
    return (0.3 * np.sin(2 * np.pi * 180 * t) * np.sin(2 * np.pi * 3 * t) + 0.05 * rng.standard_normal(t.shape)).astype(
        np.float32
    )


def normalised(backend: NetworkBackend, latency: str, audio: np.ndarray) -> torch.Tensor:
    stream = backend.open(None, seed=11, latency=latency)
    n = len(audio) // HOP
    (m,) = backend.motion([(stream, audio, {}, n)])
    tpl = backend.template
    nz = lambda x: torch.where(x.abs() > 1e-12, x, torch.ones_like(x))  # noqa: E731 - degenerate template rows
    exp = (m.motion.exp.flatten(1) - tpl.mean_exp) / nz(tpl.std_exp)
    scale = (m.motion.scale - tpl.min_scale) / nz(tpl.max_scale - tpl.min_scale)
    t = (m.motion.t - tpl.min_t) / nz(tpl.max_t - tpl.min_t)
    return torch.cat([exp, scale, t], dim=1).double()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="tiny", choices=("liveportrait", "tiny"))
    ap.add_argument("--weights", help="released weights instead of seeded ones")
    ap.add_argument("--frames", type=int, default=100)
    args = ap.parse_args()
    nets = load_networks(args.weights) if args.weights else seeded_networks(args.preset)
    backend = NetworkBackend(nets, "cpu", seeded=not args.weights)
    audio = speech(args.frames)
    low, exact = normalised(backend, "low", audio), normalised(backend, "exact", audio)
    step = (low[1:] - low[:-1]).norm(dim=1)
    k, first = LOW_COMMIT, LOW_COMMIT - 2  # the first window commits k - 2 (2 leading silent frames)
    boundary = [i for i in range(len(step)) if i + 1 >= first and (i + 1 - first) % k == 0]
    inside = [i for i in range(len(step)) if i not in set(boundary)]
    ratio = (step[boundary].mean() / step[inside].mean()).item()
    rms = (low - exact).pow(2).mean().sqrt().item()
    scale = exact.pow(2).mean().sqrt().item()
    what = args.weights or f"seeded {args.preset}"
    print(
        f"{what}, {args.frames} frames, low k={k} r={LOW_LOOKAHEAD}: boundary / inside frame-to-frame change "
        f"= {ratio:.3f} (bound 1.5); RMS(low - exact) = {rms:.4f} in normalised motion space "
        f"(RMS of exact itself {scale:.4f})"
    )


if __name__ == "__main__":
    main()
