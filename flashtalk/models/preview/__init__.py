"""Weights-free preview: procedural audio-driven motion and a geometric warp of the portrait itself.

It needs no learned weights, so it is what `flashtalk animate` / `flashtalk serve` run when no model
weights are given (they print `NOTICE`). The motion (`motion.py`) comes from the 16-kHz waveform alone;
the renderer (`renderer.py`) warps the 512x512 face crop through `flashtalk.kernels.warp2d`.

    animator = PreviewAnimator(crop)              # crop: [3, 512, 512] float in [0, 1]
    for frames in animator.frames(audio_16k):     # [N, 3, 512, 512] float in [0, 1], 25 fps
        ...
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch

from flashtalk.constants import FPS
from flashtalk.errors import FlashTalkError
from flashtalk.models.preview.motion import (
    MOTION_FIELDS,
    SAMPLE_RATE,
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


class PreviewAnimator:
    """The runtime's entry point: one portrait crop, any number of clips, frames in batches."""

    def __init__(
        self,
        crop: torch.Tensor,
        seed: int = 0,
        device: torch.device | str | None = None,
        layout: FaceLayout | None = None,
    ) -> None:
        self.seed = seed
        self.renderer = PreviewRenderer(crop, layout=layout, device=device)

    @staticmethod
    def num_frames(audio_16k: np.ndarray) -> int:
        """Frames the clip gives at 25 fps: ceil(samples / 640)."""
        return math.ceil(len(audio_16k) / (SAMPLE_RATE // FPS))

    def motion(self, audio_16k: np.ndarray) -> PreviewMotion:
        return preview_motion(audio_16k, fps=FPS, seed=self.seed)

    def frames(self, audio_16k: np.ndarray, batch_size: int = 16) -> Iterator[torch.Tensor]:
        """Yield [N <= batch_size, 3, 512, 512] float frames in [0, 1], num_frames(audio_16k) in total."""
        if not isinstance(batch_size, int) or batch_size < 1:
            raise FlashTalkError(f"batch_size must be a positive integer; got {batch_size!r}")
        motion = self.motion(audio_16k)
        for start in range(0, len(motion), batch_size):
            yield self.renderer.render(motion, start, min(start + batch_size, len(motion)))


__all__ = [
    "CROP_SIZE",
    "FPS",
    "MOTION_FIELDS",
    "NOTICE",
    "FaceLayout",
    "PreviewAnimator",
    "PreviewMotion",
    "PreviewMotionConfig",
    "PreviewMotionStream",
    "PreviewRenderer",
    "preview_motion",
]
