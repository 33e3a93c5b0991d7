"""The one backend interface of the engine (`Backend`), and the encoded portrait it works on.

A backend (the weights-free preview in `preview`, the full network in `network`) encodes a portrait once
(`encode`), opens a stream over it (`open`), and makes frames with two batched calls: `motion` (whole frames
of 16-kHz audio of many streams -> per-frame motion) and `render` (motion frames of many streams -> images in
one call). The scheduler calls them once per tick for every live session (`flashtalk.runtime.scheduler`);
offline `animate` drives the same calls for one stream (`flashtalk.runtime.animation.SpeechAnimation`).
Both finish the images the same way (`flashtalk.runtime.finish`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:
    import torch


class MotionChunk(Protocol):
    """Per-frame motion of one stream, as a backend produces it: sliceable along frames."""

    def __len__(self) -> int: ...

    def slice(self, start: int, stop: int) -> "MotionChunk": ...

    def select(self, rows: list[int]) -> "MotionChunk":
        """The frames `rows` (sorted, repeats allowed)."""
        ...

    @staticmethod
    def concat(chunks: Sequence["MotionChunk"]) -> "MotionChunk": ...


class Backend(Protocol):
    name: str
    fps: int
    device: "torch.device"
    controls: tuple[str, ...]  # control names `check_controls` accepts

    def encode(self, crop: "torch.Tensor", landmarks: Any) -> Any:
        """Per-portrait state from a [3, 512, 512] float crop in [0, 1] (done once per portrait)."""
        ...

    def open(
        self,
        portrait: Any,
        *,
        seed: int,
        latency: str = "exact",
        commit_frames: int | None = None,
        lookahead_frames: int | None = None,
    ) -> Any:
        """Per-stream state (motion history, random state) over an encoded portrait; the latency settings
        choose the window schedule of a backend with a look-ahead (`flashtalk.runtime.windows`)."""
        ...

    def check_controls(self, controls: Mapping[str, Any]) -> dict[str, Any]:
        """Validated controls, or FlashTalkError naming the bad key / value."""
        ...

    def clip_controls(self, portrait: Any, controls: Mapping[str, Any]) -> Any:
        """The controls of an offline clip over `portrait` (they may hold keyframe tracks and files), checked
        and in the form `motion` takes; FlashTalkError naming the bad key / value."""
        ...

    def clip_frames(self, samples: int) -> int:
        """Frames an offline clip of `samples` 16-kHz samples makes."""
        ...

    def lookahead_samples(self, stream: Any = None) -> int:
        """16-kHz samples past the end of a frame's own audio needed before that frame can be made."""
        ...

    def motion(self, items: Sequence[tuple[Any, np.ndarray, Mapping[str, Any], int]]) -> list[MotionChunk]:
        """One call for many streams: (state, whole frames of 16-kHz float32 audio, controls, due) ->
        motion of the first k frames of each, in order, due <= k <= len(audio) // HOP: a backend with a
        look-ahead may hold back frames (the session offers their audio again next tick) but must make the
        first `due` now (end of speech, idle silence, stalled audio). The audio may be empty (controls only)."""
        ...

    def render(self, items: Sequence[tuple[Any, list[MotionChunk]]], bucket: int) -> "torch.Tensor":
        """One call for many streams: [sum of frames, 3, 512, 512] float in [0, 1], items in order.
        `bucket` (>= the frame count) is the padded batch size a graph-replaying backend runs at."""
        ...


@dataclass
class EncodedPortrait:
    """A portrait cropped and encoded once by one backend; sessions over it share the encoding."""

    backend_name: str
    state: Any
    crop: np.ndarray  # [512, 512, 3] uint8, the face crop


def encode_portrait(backend: Backend, image: Any, *, crop: Any = "auto", faces: Any = None) -> EncodedPortrait:
    """Load `image` (path, PIL image or RGB uint8 array), crop the face and encode it with `backend`.
    `faces`: LivePortrait's face models (flashtalk.faces); with them `auto` is LivePortrait's crop."""
    import torch

    from flashtalk.faces.portrait_crop import face_crop
    from flashtalk.io.media import load_image

    photo = load_image(image)
    fc = face_crop(photo, crop, faces=faces)
    tensor = torch.from_numpy(fc.image).to(backend.device).permute(2, 0, 1).float().div_(255)
    return EncodedPortrait(backend.name, backend.encode(tensor, fc.landmarks), fc.image)
