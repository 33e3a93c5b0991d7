"""`flashtalk emotion save PHOTO -o happy.json` (formerly `flashtalk preset`, still accepted): an expression preset (emotion offset) from a reference photo.

The photo's expression is read with the renderer's motion extractor (needs --weights, or --seeded-weights
for tests) and stored relative to a neutral photo (--neutral), or on its own with keypoint 5's x / y
zeroed. Apply it with `flashtalk animate ... --emotion happy.json --emotion-weight 0.7`.
`flashtalk emotion show happy.json` prints its largest components."""

from __future__ import annotations

import argparse
from pathlib import Path

from flashtalk.constants import PRESETS
from flashtalk.errors import FlashTalkError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=("save", "show"), help="save: photo -> preset file; show: print a preset")
    p.add_argument("path", help="save: the reference photo; show: the preset file")
    p.add_argument("-o", "--output", help="preset file to write (.json or .safetensors)")
    p.add_argument("--neutral", metavar="PHOTO", help="neutral photo of the same face (the offset's zero)")
    p.add_argument("--name", help="preset name (default: the output file's stem)")
    p.add_argument("--weights", metavar="DIR_OR_BUNDLE", help="network weights (for the motion extractor)")
    p.add_argument("--seeded-weights", action="store_true", help="deterministic seeded weights (tests only)")
    p.add_argument("--preset", choices=PRESETS, help="network size with --seeded-weights")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")


def run(args: argparse.Namespace) -> int:
    from flashtalk.controls.emotion import load_preset, save_preset

    if args.action == "show":
        name, offset = load_preset(args.path)
        flat = offset.reshape(-1)
        order = flat.abs().argsort(descending=True)[:10].tolist()
        print(f"preset {name!r}: |offset| max {float(flat.abs().max()):.4g}; largest (keypoint, axis) x1000:")
        for i in order:
            print(f"  ({i // 3:2d}, {'xyz'[i % 3]}) {1000 * float(flat[i]):+.3f}")
        return 0
    if not args.output:
        raise FlashTalkError("preset save needs -o OUT.json (or .safetensors)")
    out = Path(args.output)
    if out.suffix.lower() not in (".json", ".safetensors"):
        raise FlashTalkError(f"preset {out}: use a .json or .safetensors file name")
    if out.exists() and not args.overwrite:
        raise FlashTalkError(f"{out} already exists (pass --overwrite to replace it)")
    if not (args.weights or args.seeded_weights):
        raise FlashTalkError("reading a photo's expression needs the network: pass --weights (or --seeded-weights)")
    from flashtalk.controls.emotion import expression_offset
    from flashtalk.runtime.engine import Engine

    backend = Engine.from_weights(
        args.weights, seeded=args.seeded_weights, preset=args.preset, device=args.device
    ).backend
    ref = backend.expression_offset(args.path)  # the photo's own expression (kp 5 x/y zeroed)
    if args.neutral:
        neutral = backend.expression_offset(args.neutral)
        ref = expression_offset(ref, neutral)  # kp 5 x/y is zero in both: the difference is the offset
    save_preset(
        out,
        ref,
        args.name or out.stem,
        note=f"from {Path(args.path).name}" + (f" relative to {Path(args.neutral).name}" if args.neutral else ""),
    )
    print(f"wrote {out}")
    return 0
