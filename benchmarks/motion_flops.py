"""FLOPs of the motion path (audio encoder + sampler) per committed frame, `exact` vs `low` latency.

    python benchmarks/motion_flops.py [--preset liveportrait|tiny] [--steps 10]

Counts with `torch.utils.flop_counter.FlopCounterMode` (matmuls and convolutions) one window of the audio
encoder and one window's whole sampling loop (DPM-Solver++(2M), guidance batched: 2 rows per model call),
on seeded weights (FLOPs do not depend on the values). A window costs the same in both modes; `exact`
commits W frames per window, `low` commits k (`flashtalk.runtime.windows.LOW_COMMIT`). The renderer's
~1.23 TFLOP per 512² frame (docs/architecture.md) is printed beside it for scale.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flashtalk.models.hubert import joyvasa_audio_features
from flashtalk.models.joyvasa.pipeline import sample_window
from flashtalk.runtime.backends.network import sampler_config
from flashtalk.runtime.windows import LOW_COMMIT, LOW_LOOKAHEAD
from flashtalk.weights.bundle import seeded_networks

RENDERER_TFLOP = 1.23  # per 512² frame, docs/architecture.md (warping ≈ 342 GFLOP + SPADE decoder ≈ 892 GFLOP)


@torch.no_grad()
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="liveportrait", choices=("liveportrait", "tiny"))
    ap.add_argument("--steps", type=int, default=10)
    args = ap.parse_args()
    nets = seeded_networks(args.preset)
    cfg, model = nets.motion.cfg, nets.motion
    window = 0.1 * torch.randn(1, cfg.window_samples, generator=torch.Generator().manual_seed(0))
    with FlopCounterMode(display=False) as enc:
        feats = joyvasa_audio_features(nets.audio, window, cfg.n_motions)
    audio = model.audio_feature_map(feats)
    prev_motion, prev_audio = model.start_context(1)
    x_T = torch.randn(1, cfg.n_motions, cfg.motion_feat_dim)
    with FlopCounterMode(display=False) as smp:
        sample_window(model, sampler_config("dpmpp", args.steps), audio, prev_motion, prev_audio, x_T)
    e, s = enc.get_total_flops() / 1e9, smp.get_total_flops() / 1e9
    print(
        f"preset {args.preset}: one window ({cfg.n_motions} frames) = audio encoder {e:.2f} GFLOP + "
        f"sampler ({args.steps} steps, CFG batched) {s:.2f} GFLOP = {e + s:.2f} GFLOP"
    )
    for mode, k in (("exact", cfg.n_motions), (f"low (k={LOW_COMMIT}, r={LOW_LOOKAHEAD})", LOW_COMMIT)):
        per = (e + s) / k
        print(
            f"  {mode}: {per:.3f} GFLOP per committed frame = {100 * per / (RENDERER_TFLOP * 1e3):.2f}% of the "
            f"renderer's {RENDERER_TFLOP} TFLOP"
        )


if __name__ == "__main__":
    main()
