"""`flashtalk detect VIDEO_OR_IMAGE [--key K] [--json]`: is FlashTalk's watermark in this file?

Exit status: 0 when the watermark is found, 1 when it is not, 2 on an error (unreadable file, bad key).
"""

from __future__ import annotations

import argparse
import json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="a video (MP4, MKV, WebM, ...) or an image (PNG, JPEG, WebP, ...)")
    p.add_argument("--key", help="watermark key (default: the engine's default key)")
    p.add_argument(
        "--frames", type=int, default=None, metavar="N", help="video frames to look at, evenly spaced (default 16)"
    )
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")


def run(args: argparse.Namespace) -> int:
    from flashtalk.provenance.watermark import DEFAULT_KEY, MAX_FRAMES, detect_file

    key = DEFAULT_KEY if args.key is None else args.key
    result = detect_file(args.file, key=key, max_frames=MAX_FRAMES if args.frames is None else args.frames)
    if args.json:
        print(json.dumps({"file": str(args.file), **result.to_dict()}))
    elif result.found:
        print(
            f"{args.file}: FlashTalk watermark FOUND - payload {result.payload_label()}, "
            f"confidence {result.confidence:.6f} (score {result.score:.1f}, {result.frames} frame(s))"
        )
    else:
        print(
            f"{args.file}: no FlashTalk watermark found for this key "
            f"(score {result.score:.1f}, {result.frames} frame(s))"
        )
    return 0 if result.found else 1
