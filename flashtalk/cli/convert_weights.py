"""`flashtalk convert-weights`: a published LivePortrait + JoyVASA (+ HuBERT) weights folder -> one safetensors
bundle that loads without unpickling (`flashtalk.weights.bundle`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from flashtalk.errors import FlashTalkError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("folder", help="published weights folder (LivePortrait + JoyVASA [+ HuBERT])")
    p.add_argument("-o", "--output", required=True, help="output .safetensors bundle")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")


def run(args: argparse.Namespace) -> int:
    out = Path(args.output)
    if out.suffix != ".safetensors":
        raise FlashTalkError(f"output {out} must end in .safetensors")
    if out.is_dir():  # checked before the slow load, --overwrite or not: a folder is never replaced
        raise FlashTalkError(f"output {out} is a folder; give a file name ending in .safetensors")
    if not out.parent.is_dir():
        raise FlashTalkError(f"output folder {out.parent} does not exist")
    if out.exists() and not args.overwrite:
        raise FlashTalkError(f"output {out} already exists (pass --overwrite to replace it)")
    from flashtalk.weights.bundle import load_folder, write_bundle

    write_bundle(load_folder(args.folder), out, overwrite=args.overwrite)  # a temporary beside it, renamed
    print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB)", file=sys.stderr)
    return 0
