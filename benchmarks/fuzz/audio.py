"""Fuzz family `audio`: speech files, their headers, the resampler, and the MP4 writer.

Inputs: WAV (PCM 8/16/24/32, float), FLAC, OGG, MP3, M4A (AAC) and Matroska files at common and odd
rates, mono and stereo; WAV headers with absurd sample rates, channel counts, bit depths and chunk
sizes; containers with non-UTF-8 tags; byte mutations of all of them; float WAVs with huge samples
(which make the AAC encoder fail: the writer must end cleanly, leaving no partial file); streaming
resamplers at random (also invalid) rates fed random chunk sizes.
Targets: `load_audio` (<= 30 s), the atomic MP4 writer, `StreamingResampler`. Decoded audio that is
accepted must be finite, 16 kHz and about as long as the file says.
"""

from __future__ import annotations

import io
import struct
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.fuzz.core import Case, Mutator, Wrong, run_cases

RATES = (8000, 11025, 16000, 22050, 44100, 48000, 7999, 44099, 96000, 383999)
ODD_RATES = (0, 1, 3999, 4000, 384000, 384001, 1 << 31, -16000, 16000.5, float("nan"), float("inf"), 44099, 192000)


def warm(_: Any) -> str:
    import flashtalk.io.audio
    import flashtalk.io.media  # noqa: F401

    return "warm"


def load(arg: dict) -> str:
    from flashtalk.io.audio import load_audio

    clip = load_audio(arg["path"], max_seconds=30.0)
    x = clip.samples
    if clip.rate != 16000 or x.dtype != np.float32 or x.ndim != 1 or not np.isfinite(x).all():
        raise Wrong(f"decoded {x.dtype} {x.shape} at {clip.rate} Hz")
    if arg.get("seconds") is not None and abs(clip.duration - arg["seconds"]) > 0.1:
        raise Wrong(f"decoded {clip.duration:.3f} s, the file holds {arg['seconds']:.3f} s")
    return f"{clip.duration:.2f}s"


def write(arg: dict) -> str:
    """Decode, then write a 4-frame MP4 with the audio through the atomic writer: a clean error must
    leave the folder empty."""
    from flashtalk.errors import FlashTalkError
    from flashtalk.io.audio import load_audio
    from flashtalk.io.media import VideoWriter, atomic_output

    out = Path(arg["out"])
    clip = load_audio(arg["path"], max_seconds=30.0)
    try:
        with atomic_output(out, overwrite=True) as tmp:
            w = VideoWriter(tmp, width=64, height=64, fps=25, audio=clip, metadata={"synthetic": "true"})
            try:
                w.write(np.zeros((4, 64, 64, 3), np.uint8))
                w.close()
            except BaseException:
                w.abort()
                raise
    except FlashTalkError:
        left = [p.name for p in out.parent.iterdir()]
        if left:
            raise Wrong(f"partial output left after a failed write: {left}") from None
        raise
    out.unlink()
    return "written"


def stream(arg: dict) -> str:
    from flashtalk.io.audio import StreamingResampler

    r = StreamingResampler(arg["src"], 16000)
    rng = np.random.default_rng(arg["seed"])
    total_in, total_out = 0, 0
    for _ in range(8):
        n = int(rng.integers(0, 5000))
        total_in += n
        total_out += r.push(rng.standard_normal(n) * 0.1).shape[0]
    total_out += r.flush().shape[0]
    want = -(-total_in * r.up // r.down)
    if total_out != want:
        raise Wrong(f"{total_out} samples out for {total_in} in, expected {want}")
    return f"{r.up}/{r.down}"


def _tone(rate: int, seconds: float, channels: int) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    x = 0.4 * np.sin(2 * np.pi * 220 * t)
    return np.stack([x] * channels, axis=1) if channels > 1 else x


def base_files() -> list[tuple[str, str, bytes, float]]:
    """(name, suffix, bytes, seconds)."""
    import soundfile as sf

    out = []
    for i, (fmt, subtype, suffix) in enumerate(
        (
            ("WAV", "PCM_16", ".wav"),
            ("WAV", "FLOAT", ".wav"),
            ("WAV", "PCM_U8", ".wav"),
            ("WAV", "PCM_24", ".wav"),
            ("FLAC", "PCM_16", ".flac"),
            ("OGG", "VORBIS", ".ogg"),
        )
    ):
        rate = RATES[i % len(RATES)]
        buf = io.BytesIO()
        sf.write(buf, _tone(rate, 0.5, 1 + i % 2), rate, format=fmt, subtype=subtype)
        out.append((f"{fmt.lower()}-{subtype.lower()}-{rate}", suffix, buf.getvalue(), 0.5))
    for fmt, codec, suffix, rate in (
        ("mp4", "aac", ".m4a", 22050),
        ("mp3", "mp3", ".mp3", 44100),
        ("matroska", "aac", ".mka", 48000),
    ):
        out.append((f"{fmt}-{codec}", suffix, _av_file(fmt, codec, rate, 0.5), 0.5))
    return out


def _av_file(fmt: str, codec: str, rate: int, seconds: float, title: str = "speech") -> bytes:
    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format=fmt) as c:
        c.metadata["title"] = title
        s = c.add_stream(codec, rate=rate)
        s.layout = "mono"
        x = _tone(rate, seconds, 1).astype(np.float32)[None]
        frame = av.AudioFrame.from_ndarray(x, format="fltp", layout="mono")
        frame.sample_rate, frame.pts = rate, 0
        for p in s.encode(frame):
            c.mux(p)
        for p in s.encode(None):
            c.mux(p)
    return buf.getvalue()


def wav_header_cases(m: Mutator, wav: bytes) -> tuple[bytes, str]:
    """The canonical 44-byte header: rate @24, byte rate @28, channels @22, block align @32, bits @34,
    data size @40."""
    field, offset, fmt = m.choice(
        (
            ("rate", 24, "<I"),
            ("byte_rate", 28, "<I"),
            ("channels", 22, "<H"),
            ("block_align", 32, "<H"),
            ("bits", 34, "<H"),
            ("data_size", 40, "<I"),
            ("riff_size", 4, "<I"),
            ("format_tag", 20, "<H"),
        )
    )
    limit = 0xFFFF if fmt == "<H" else 0xFFFFFFFF
    value = m.choice((0, 1, 3, 3999, 4000, 384001, 0x7FFFFFFF, limit, 0x8000, 7, 12, 1000)) & limit
    b = bytearray(wav)
    b[offset : offset + struct.calcsize(fmt)] = struct.pack(fmt, value)
    return bytes(b), f"wav {field}={value}"


def cases(seed: int, n: int, folder: Path) -> Iterator[Case]:
    import soundfile as sf

    m = Mutator(seed)
    bases = base_files()
    pcm16 = bases[0][2]
    for i in range(n):
        kind = i % 8
        arg: dict[str, Any] = {}
        target = "benchmarks.fuzz.audio:load"
        if kind == 0:
            name, suffix, data, seconds = bases[(i // 8) % len(bases)]
            what, arg["seconds"], arg["expect_ok"] = name, seconds, True
        elif kind in (1, 2):
            data, what = wav_header_cases(m, pcm16)
            suffix = ".wav"
        elif kind == 3:  # non-UTF-8 tags, then maybe a byte mutation
            fmt, suffix = m.choice((("mp4", ".m4a"), ("matroska", ".mka")))
            data = _av_file(fmt, "aac", 22050, 0.3, title="QQQQQQQQ")
            at = data.find(b"QQQQQQQQ")
            data = data[:at] + b"\xff\xfe\xc3\x28\x80\x81\xed\xa0" + data[at + 8 :]
            what = f"{fmt} non-UTF-8 tag"
        elif kind == 4:  # huge samples: decode is fine, the AAC encoder is not
            buf = io.BytesIO()
            x = _tone(16000, 0.6, 1).astype(np.float32)
            at = m.choice((0, 3000, 9000))
            x[at : at + 500] = m.choice((1e30, 3e38, 1e6, 1e12, -1e20))
            sf.write(buf, x, 16000, format="WAV", subtype="FLOAT")
            data, suffix = buf.getvalue(), ".wav"
            what = f"float wav peak {x.max():.0e} from sample {at}"
            target = "benchmarks.fuzz.audio:write"
            arg["out"] = str(folder / f"out{i}" / "clip.mp4")
            (folder / f"out{i}").mkdir()
        elif kind == 5:
            src = m.choice(ODD_RATES + RATES) if m.rng.random() < 0.7 else m.rng.randint(1, 1 << 20)
            yield Case(
                f"stream resampler src={src!r}",
                "benchmarks.fuzz.audio:stream",
                {"src": src, "seed": m.rng.randrange(1 << 30)},
                timeout=10.0,
            )
            continue
        else:
            name, suffix, data, _ = m.choice(bases)
            data, how = m.bytes(data)
            what = f"{name} {how}"
        path = folder / f"case{i}{suffix}"
        path.write_bytes(data)
        yield Case(what, target, {**arg, "path": str(path)}, timeout=15.0)
        path.unlink(missing_ok=True)


def campaign(seed: int, n: int, budget_s: float) -> dict:
    with tempfile.TemporaryDirectory(prefix="flashtalk-fuzz-audio-") as tmp:
        return run_cases("audio", cases(seed, n, Path(tmp)), budget_s, warm="benchmarks.fuzz.audio:warm")
