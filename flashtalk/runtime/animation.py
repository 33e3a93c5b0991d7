"""Offline clips as one-stream drivers of the backend interface (`flashtalk.runtime.backends.Backend`).

`SpeechAnimation` makes an audio-driven clip with the calls the scheduler makes for live sessions (`open`,
`motion`, `render`), whatever the backend: the audio is offered as a session offers it, a window's worth at
a time as the frames are consumed (memory does not grow with the clip's length), the end of the clip due.
`batches` and `select_rows` regroup chunks of frames (motion or driving keypoints) into render batches;
the video-driven clip (`flashtalk.runtime.driving.DrivingAnimation`) uses them too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from flashtalk.constants import HOP
from flashtalk.errors import FlashTalkError
from flashtalk.runtime.backends import Backend, MotionChunk

if TYPE_CHECKING:
    import torch

OFFER_FRAMES = 128  # frames of audio offered per motion call: at least one whole window of any backend


class SpeechAnimation:
    """One audio-driven clip over an encoded portrait: `num_frames()` frames, made in order by `frames`
    (or only some of them by `frames_at`), batch by batch."""

    def __init__(self, backend: Backend, portrait: Any, audio: np.ndarray, seed: int, controls: Any) -> None:
        self.backend, self.portrait, self.seed, self.controls = backend, portrait, seed, controls
        self.audio = np.asarray(audio, dtype=np.float32)
        self.stream: Any = None  # the open stream while `motion` runs

    def num_frames(self) -> int:
        return self.backend.clip_frames(len(self.audio))

    def motion(self) -> Iterator[MotionChunk]:
        """The clip's motion in order: the audio zero-padded to whole frames; each call offers up to
        OFFER_FRAMES frames of it and the backend makes what it can (a backend with a look-ahead holds the
        rest back, and it is offered again); the last offer is all due."""
        n = self.num_frames()
        audio = np.zeros(n * HOP, np.float32)
        audio[: min(len(self.audio), n * HOP)] = self.audio[: n * HOP]
        self.stream = stream = self.backend.open(self.portrait, seed=self.seed)
        done = 0
        while done < n:
            offer = min(n - done, OFFER_FRAMES)
            due = offer if done + offer == n else 0
            (m,) = self.backend.motion([(stream, audio[done * HOP : (done + offer) * HOP], self.controls, due)])
            if len(m) == 0:
                raise FlashTalkError(f"the {self.backend.name} backend made no frame of {offer} offered")
            done += len(m)
            yield m

    def _render(self, m: MotionChunk) -> torch.Tensor:
        return self.backend.render([(self.stream, [m])], len(m))

    def frames(self, batch_size: int) -> Iterator[torch.Tensor]:
        """[N <= batch_size, 3, 512, 512] float frames in [0, 1], num_frames() in total."""
        return batches(self.motion(), batch_size, self._render)

    def frames_at(self, indices: list[int], batch_size: int) -> Iterator[torch.Tensor]:
        """Only the frames `indices` (sorted, repeats allowed), rendered in batches."""
        return batches(select_rows(self.motion(), indices), batch_size, self._render)


def _cat(chunks: list[Any]) -> Any:
    import torch

    return torch.cat(chunks) if torch.is_tensor(chunks[0]) else type(chunks[0]).concat(chunks)


def _rows(x: Any, a: int, b: int) -> Any:
    import torch

    return x[a:b] if torch.is_tensor(x) else x.slice(a, b)


def batches(chunks: Iterator[Any], batch_size: int, render: Callable[[Any], torch.Tensor]) -> Iterator[torch.Tensor]:
    """Regroup a stream of frame chunks (tensors, or motion chunks with len, `slice` and `concat`) into
    `render` calls of batch_size frames (the last may be shorter)."""
    if not isinstance(batch_size, int) or batch_size < 1:
        raise FlashTalkError(f"batch_size must be a positive integer; got {batch_size!r}")
    pending: list[Any] = []
    held = 0
    for chunk in chunks:
        pending.append(chunk)
        held += len(chunk)
        while held >= batch_size:
            flat = _cat(pending)
            yield render(_rows(flat, 0, batch_size))
            rest = _rows(flat, batch_size, held)
            pending, held = ([rest] if len(rest) else []), len(rest)
    if held:
        yield render(_cat(pending))


def select_rows(chunks: Iterator[Any], indices: list[int]) -> Iterator[Any]:
    """The rows `indices` (sorted, repeats allowed) of the concatenation of `chunks`, chunk by chunk."""
    import torch

    if any(b < a for a, b in zip(indices, indices[1:])):
        raise FlashTalkError("frames_at: indices must be sorted")
    offset, k = 0, 0
    for chunk in chunks:
        end = offset + len(chunk)
        take = []
        while k < len(indices) and indices[k] < end:
            take.append(indices[k] - offset)
            k += 1
        if take:
            yield chunk[torch.tensor(take, device=chunk.device)] if torch.is_tensor(chunk) else chunk.select(take)
        offset = end
        if k == len(indices):
            return
