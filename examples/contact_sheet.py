"""Contact sheet of a few user controls on the weights-free preview: docs/controls_contact_sheet.png.

    .venv/bin/python examples/contact_sheet.py [-o docs/controls_contact_sheet.png]

Each tile is the bundled portrait with one control set through `flashtalk.models.preview.controls.apply_preview_controls`
(the preview's share of the controls: pose offsets, head distance, mouth open, blink). The network path
applies the full set (gaze, emotion, brows, ...) in keypoint space; its tests live in tests/controls/.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from flashtalk.cli.animate import demo_assets
from flashtalk.faces.portrait_crop import face_crop
from flashtalk.io.media import load_image
from flashtalk.models.preview import FaceLayout, PreviewMotion, PreviewRenderer
from flashtalk.models.preview.controls import apply_preview_controls

TILES = [
    ("no controls", {}),
    ("yaw +20", {"yaw": 20.0}),
    ("pitch -15", {"pitch": -15.0}),
    ("roll +12", {"roll": 12.0}),
    ("head distance 1.25", {"head_distance": 1.25}),
    ("head distance 0.8", {"head_distance": 0.8}),
    ("mouth open 90", {"mouth_open": 90.0}),
    ("blink -20", {"blink": -20.0}),
]
TILE = 176


def main() -> None:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-o", "--output", default="docs/controls_contact_sheet.png")
    args = ap.parse_args()
    fc = face_crop(load_image(demo_assets()[0]), "auto")
    crop = torch.from_numpy(fc.image).permute(2, 0, 1).float().div(255)
    layout = None
    if fc.landmarks is not None:
        layout = FaceLayout(fc.landmarks.left_eye, fc.landmarks.right_eye, fc.landmarks.mouth)
    renderer = PreviewRenderer(crop, layout=layout)
    cols = 4
    sheet = Image.new("RGB", (cols * TILE, (len(TILES) + cols - 1) // cols * (TILE + 18)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (label, values) in enumerate(TILES):
        motion = apply_preview_controls(PreviewMotion.still(1), values)
        frame = renderer.render(motion)[0].permute(1, 2, 0).clamp(0, 1).mul(255).round().byte().numpy()
        tile = Image.fromarray(np.ascontiguousarray(frame)).resize((TILE, TILE), Image.LANCZOS)
        x, y = i % cols * TILE, i // cols * (TILE + 18)
        sheet.paste(tile, (x, y + 18))
        draw.text((x + 4, y + 3), label, fill="black")
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    sheet.save(args.output, optimize=True)
    print(f"wrote {args.output} ({Path(args.output).stat().st_size // 1024} KB)")


if __name__ == "__main__":
    main()
