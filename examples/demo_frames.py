"""Make docs/demo_frames.png: the source crop and a few frames of `flashtalk animate --demo` (weights-free
preview), with their times, so the README shows what the default command produces."""

from __future__ import annotations

import argparse

import numpy as np
from PIL import Image, ImageDraw

from flashtalk.cli.animate import demo_assets
from flashtalk.runtime.engine import Engine


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("-o", "--output", default="docs/demo_frames.png")
    p.add_argument("--times", default="0.0,0.9,1.6,2.4,3.3", help="seconds of the frames to show")
    p.add_argument("--size", type=int, default=224, help="thumbnail side in pixels")
    args = p.parse_args()

    portrait, audio = demo_assets()
    clip = Engine.preview(device="cpu").prepare(str(portrait), str(audio), watermark=False)
    wanted = sorted({min(clip.num_frames - 1, round(float(t) * float(clip.fps))) for t in args.times.split(",")})
    frames, seen = {}, 0
    for batch in clip.batches(16):
        for i in range(len(batch)):
            if seen + i in wanted:
                frames[seen + i] = batch[i]
        seen += len(batch)
        if seen > wanted[-1]:
            break
    tiles = [("source crop", clip.crop.image)] + [(f"t = {i / float(clip.fps):.2f} s", frames[i]) for i in wanted]
    s, pad = args.size, 22
    sheet = Image.new("RGB", (len(tiles) * s, s + pad), "white")
    draw = ImageDraw.Draw(sheet)
    for j, (label, img) in enumerate(tiles):
        sheet.paste(Image.fromarray(np.asarray(img)).resize((s, s), Image.LANCZOS), (j * s, pad))
        draw.text((j * s + 6, 5), label, fill="black")
    sheet.save(args.output, optimize=True)
    print(f"wrote {args.output} ({len(tiles) - 1} frames)")


if __name__ == "__main__":
    main()
