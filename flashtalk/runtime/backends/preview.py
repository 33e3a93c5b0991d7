"""The weights-free preview behind the one backend interface (`flashtalk.runtime.backends.Backend`);
the full network's is `flashtalk.runtime.backends.network.NetworkBackend`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from flashtalk.constants import FPS, HOP
from flashtalk.errors import FlashTalkError
from flashtalk.runtime.backends import MotionChunk

if TYPE_CHECKING:
    import torch


@dataclass
class PreviewStream:
    renderer: Any  # flashtalk.models.preview.PreviewRenderer, shared by the streams of one portrait
    motion: Any  # flashtalk.models.preview.PreviewMotionStream of this stream


class PreviewBackend:
    """The weights-free preview. Controls (`flashtalk.models.preview.controls`): yaw / pitch / roll offsets in
    degrees (within ±30), expression_scale in [0, 2] (scales mouth opening and lip shape), head_distance
    (scale), mouth_open and blink. Its motion is causal: no look-ahead, every frame made at once."""

    name = "preview"
    fps = FPS

    def __init__(self, device: "torch.device | str | None" = None) -> None:
        import torch

        from flashtalk.models.preview.controls import PREVIEW_CONTROLS

        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.controls = PREVIEW_CONTROLS

    def encode(self, crop: "torch.Tensor", landmarks: Any) -> Any:
        from flashtalk.models.preview import FaceLayout, PreviewRenderer

        layout = None
        if landmarks is not None:
            try:
                layout = FaceLayout(landmarks.left_eye, landmarks.right_eye, landmarks.mouth)
            except FlashTalkError:
                layout = None  # landmarks implausible for the preview: keep the canonical layout
        return PreviewRenderer(crop, layout=layout, device=self.device)

    def open(self, portrait: Any, *, seed: int, **_: Any) -> PreviewStream:
        """A stream (latency settings are accepted and moot: the preview has no look-ahead)."""
        from flashtalk.models.preview import PreviewMotionStream

        return PreviewStream(portrait, PreviewMotionStream(fps=self.fps, seed=seed))

    def check_controls(self, controls: Mapping[str, Any]) -> dict[str, float]:
        from flashtalk.models.preview.controls import check_preview_controls

        return check_preview_controls(controls, self.name)

    def clip_controls(self, portrait: Any, controls: Mapping[str, Any]) -> dict[str, float]:
        return self.check_controls(controls)

    def clip_frames(self, samples: int) -> int:
        return -(-samples // HOP)  # the partial last frame is zero-padded

    def lookahead_samples(self, stream: Any = None) -> int:
        return 0  # causal: a frame needs only its own audio and what came before

    def motion(self, items: Sequence[tuple[Any, np.ndarray, Mapping[str, Any], int]]) -> list[MotionChunk]:
        from flashtalk.models.preview.controls import apply_preview_controls

        return [apply_preview_controls(stream.motion.push(audio), controls) for stream, audio, controls, _ in items]

    def render(self, items: Sequence[tuple[Any, list[MotionChunk]]], bucket: int) -> "torch.Tensor":
        # The preview renderer holds one portrait per instance, so each stream's frames are one render
        # call inside this batched call; no padding to `bucket` (no graphs here).
        import torch

        from flashtalk.models.preview import PreviewMotion

        return torch.cat(
            [stream.renderer.render(PreviewMotion.concat(list(chunks), fps=self.fps)) for stream, chunks in items]
        )
