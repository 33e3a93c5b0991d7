"""Weights-free preview: procedural audio-driven motion and a geometric warp of the portrait itself.

It needs no learned weights, so it is what `flashtalk animate` / `flashtalk serve` run when no model
weights are given (they print `NOTICE`). The motion (`motion.py`) comes from the 16-kHz waveform alone;
the renderer (`renderer.py`) warps the 512x512 face crop through `flashtalk.kernels.warp2d`.

    renderer = PreviewRenderer(crop)              # crop: [3, 512, 512] float in [0, 1]
    frames = renderer.render(preview_motion(audio_16k, seed=0))  # [N, 3, 512, 512] float in [0, 1], 25 fps

The runtime drives it through `flashtalk.runtime.backends.preview.PreviewBackend`, offline and live alike.
"""

from __future__ import annotations

from flashtalk.models.preview.motion import (
    MOTION_FIELDS,
    PreviewMotion,
    PreviewMotionConfig,
    PreviewMotionStream,
    preview_motion,
)
from flashtalk.models.preview.renderer import CROP_SIZE, FaceLayout, PreviewRenderer

NOTICE = (
    "no model weights given: running the weights-free preview "
    "(procedural audio-driven motion + geometric warp of the photo; not the neural renderer)"
)


__all__ = [
    "CROP_SIZE",
    "MOTION_FIELDS",
    "NOTICE",
    "FaceLayout",
    "PreviewMotion",
    "PreviewMotionConfig",
    "PreviewMotionStream",
    "PreviewRenderer",
    "preview_motion",
]
