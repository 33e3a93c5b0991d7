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


def _decode(path: Path):
    import av

    with av.open(str(path)) as c:
        meta = dict(c.metadata)
        a = c.streams.audio[0]
        audio_seconds = float(a.duration * a.time_base)
        frames = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
    return meta, frames, audio_seconds


class _GreyBackend:
    """12 grey frames; with fail=True it raises on the third batch (a crash in the middle of a clip)."""

    name, fps, device = "grey", 25, torch.device("cpu")

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail

    def prepare(self, crop, audio16k, *, seed, controls, landmarks):
        fail = self.fail

        class _Animation:
            def num_frames(self):
                return 12

            def frames(self, batch_size):
                for i in range(0, 12, batch_size):
                    if fail and i >= 2 * batch_size:
                        raise RuntimeError("renderer exploded")
                    yield torch.full((min(batch_size, 12 - i), 3, 512, 512), 0.5)

        return _Animation()


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
