"""Inputs and stand-ins shared by tests in several folders: a random picture, hostile files (a WAV header with another
rate, PNG chunks), an MP4 decoder, and a backend of grey frames."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from flashtalk.constants import HOP


def _decode(path: Path):
    import av

    with av.open(str(path)) as c:
        meta = dict(c.metadata)
        a = c.streams.audio[0]
        audio_seconds = float(a.duration * a.time_base)
        frames = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
    return meta, frames, audio_seconds


class _Frames:
    """Motion of n frames for `_GreyBackend` (a motion chunk: len, slice, select, concat)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def slice(self, start: int, stop: int) -> "_Frames":
        return _Frames(len(range(self.n)[start:stop]))

    def select(self, rows: list[int]) -> "_Frames":
        return _Frames(len(rows))

    @staticmethod
    def concat(chunks: list["_Frames"]) -> "_Frames":
        return _Frames(sum(len(c) for c in chunks))


class _GreyBackend:
    """A backend (`flashtalk.runtime.backends.Backend`) of 12 grey frames a clip; with fail=True its third
    render call raises (a crash in the middle of a clip)."""

    name, fps, device, controls = "grey", 25, torch.device("cpu"), ()

    def __init__(self, fail: bool = False) -> None:
        self.fail, self.renders = fail, 0

    def encode(self, crop, landmarks):
        return None

    def open(self, portrait, *, seed, **_):
        return None

    def check_controls(self, controls):
        return dict(controls)

    def clip_controls(self, portrait, controls):
        return dict(controls)

    def clip_frames(self, samples):
        return 12

    def lookahead_samples(self, stream=None):
        return 0

    def motion(self, items):
        return [_Frames(len(audio) // HOP) for _, audio, _, _ in items]

    def render(self, items, bucket):
        self.renders += 1
        if self.fail and self.renders >= 3:
            raise RuntimeError("renderer exploded")
        return torch.full((sum(len(c) for _, chunks in items for c in chunks), 3, 512, 512), 0.5)


def _wav_with_rate(path: Path, rate_field: int) -> Path:
    buf = io.BytesIO()
    sf.write(buf, 0.3 * np.sin(np.arange(8000) * 0.1), 16000, format="WAV", subtype="PCM_16")
    b = bytearray(buf.getvalue())
    b[24:28] = struct.pack("<I", rate_field)
    path.write_bytes(bytes(b))
    return path


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _pattern(h: int, w: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
