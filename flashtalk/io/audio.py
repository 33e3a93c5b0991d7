"""Audio input: decode any common file to mono float32, and resample it to the model rate.

Decoding: WAV/FLAC/OGG (and whatever libsndfile knows) through soundfile; everything else (MP3, M4A/AAC,
OPUS, video containers...) through PyAV. Multichannel audio is downmixed by averaging the channels.

Resampling: our own polyphase windowed-sinc filter (Kaiser window). Rates must lie in
[MIN_RATE, MAX_RATE] = [4 kHz, 384 kHz]. The ratio is exact when its reduced form up/down has both terms
<= MAX_PHASES (16384): every common rate (8k, 11.025k, 22.05k, 44.1k, 48k, 96k, 192k, ...). An odd rate
whose exact ratio needs more terms (e.g. 44,099 Hz -> 16 kHz is 16000/44099) uses the closest ratio with
terms <= MAX_PHASES instead: relative rate error <= 3.1e-5 (measured over every integer rate 4k..384k to
16 kHz; 18 ms over a 600 s clip, under half a 25-FPS frame). So a filter bank holds at most about
72 x MAX_PHASES float64 taps (<= 10 MiB) and builds in well under a second; built banks are cached up to
BANK_CACHE_BYTES in all. Output sample n sits at input time n * src / dst (zero phase, no delay); the signal is taken
as zero outside the clip; a clip of N samples gives ceil(N * dst / src) samples. `StreamingResampler`
runs the same filter on chunks and keeps its state, so chunked and one-shot results agree to float
round-off; `resample` is the one-shot form of it.

Bad input raises `FlashTalkError` naming the file and what is wrong with it.
"""

from __future__ import annotations

import io
import math
import os
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import BinaryIO

import numpy as np

from flashtalk.errors import FlashTalkError

MIN_RATE = 4000  # below this no speech band is left; also catches rates mistaken for something else
MAX_RATE = 384_000  # highest rate accepted anywhere (hi-res audio tops out at 384 kHz)
MAX_PHASES = 16384  # largest up / down term of a resampling ratio; larger exact ratios are approximated
BANK_CACHE_BYTES = 64 << 20  # total size of the cached filter banks
GATHER_BELOW = 8  # under this many outputs per phase, gather them all at once (a loop over phases is slower)
SILENCE_LEVEL = 1e-4  # |x| below this everywhere = silent clip
DEFAULT_MAX_SECONDS = 600.0

# Resampler design: the low-pass cutoff is ROLLOFF x the lower Nyquist rate, the filter spans ZEROS
# zero crossings of the sinc on each side, Kaiser window of shape KAISER_BETA. Measured (44.1k/48k ->
# 16k): flat within 0.01 dB to 0.8 x the new Nyquist rate, -0.23 dB at 0.85 x, and >= 90 dB
# attenuation of tones above the new Nyquist rate (tests/io/test_audio.py gates 0.01 dB and 80 dB).
ROLLOFF = 0.9
ZEROS = 32
KAISER_BETA = 9.0

AudioSource = str | os.PathLike | bytes | bytearray | BinaryIO


@dataclass
class AudioClip:
    samples: np.ndarray  # float32, mono, 1-D
    rate: int  # samples per second
    duration: float  # seconds
    source: str  # file path, or "<bytes>" / "<stream>"


# --------------------------------------------------------------------------------------------- resampling


def _check_rate_value(rate, what: str) -> int:
    if (
        isinstance(rate, bool)
        or not isinstance(rate, (int, np.integer, float))
        or not math.isfinite(rate)
        or int(rate) != rate
        or not MIN_RATE <= rate <= MAX_RATE
    ):
        raise FlashTalkError(f"{what} sample rate must be an integer in [{MIN_RATE}, {MAX_RATE}] Hz, got {rate!r}")
    return int(rate)


def _ratio(src_rate: int, dst_rate: int) -> tuple[int, int]:
    """(up, down): the exact reduced ratio dst/src, or its closest approximation with terms <= MAX_PHASES."""
    src = _check_rate_value(src_rate, "source")
    dst = _check_rate_value(dst_rate, "target")
    g = math.gcd(src, dst)
    up, down = dst // g, src // g
    if max(up, down) <= MAX_PHASES:
        return up, down
    r = Fraction(down, up)  # down/up ~ src/dst; bound the denominator so that the numerator fits too
    q = MAX_PHASES if r <= 1 else max(1, int(MAX_PHASES / r))
    f = r.limit_denominator(q)
    while max(f.numerator, f.denominator) > MAX_PHASES:
        q -= 1
        f = r.limit_denominator(q)
    return f.denominator, f.numerator


def _build_bank(up: int, down: int) -> tuple[np.ndarray, int]:
    """Taps per output phase: bank[p, j] weights input sample b_n - K + 1 + j for outputs n = p mod up,
    where b_n = floor(n * down / up). Returns (bank [up, 2K] float64, K)."""
    fc = 0.5 * min(1.0, up / down) * ROLLOFF  # cutoff in cycles per input sample
    half = ZEROS / (2.0 * fc)  # filter half-length in input samples
    K = int(math.ceil(half))
    p = np.arange(up)
    frac = (p * down % up) / up  # t_n - b_n, in [0, 1)
    x = np.arange(-K + 1, K + 1)[None, :] - frac[:, None]  # tap position relative to t_n, [up, 2K]
    inside = np.abs(x) < half
    window = np.where(inside, np.i0(KAISER_BETA * np.sqrt(np.clip(1.0 - (x / half) ** 2, 0.0, None))), 0.0)
    bank = 2.0 * fc * np.sinc(2.0 * fc * x) * window / np.i0(KAISER_BETA)
    bank.setflags(write=False)
    return bank, K


_banks: OrderedDict[tuple[int, int], tuple[np.ndarray, int]] = OrderedDict()
_banks_lock = threading.Lock()


def _filter_bank(up: int, down: int) -> tuple[np.ndarray, int]:
    """`_build_bank`, cached (least recently used first out) up to BANK_CACHE_BYTES in all; thread-safe."""
    key = (up, down)
    with _banks_lock:
        if key in _banks:
            _banks.move_to_end(key)
            return _banks[key]
    entry = _build_bank(up, down)  # outside the lock: two threads may build the same bank once each
    with _banks_lock:
        _banks[key] = entry
        _banks.move_to_end(key)
        while len(_banks) > 1 and sum(b.nbytes for b, _ in _banks.values()) > BANK_CACHE_BYTES:
            _banks.popitem(last=False)
    return entry


class StreamingResampler:
    """Resample a stream chunk by chunk: `push(chunk)` returns every output sample that the input so far
    determines; `flush()` ends the stream (zeros after the last sample) and returns the rest.
    The concatenated outputs equal `resample(whole_input)` up to float round-off."""

    def __init__(self, src_rate: int, dst_rate: int):
        self.up, self.down = _ratio(src_rate, dst_rate)
        self.src_rate, self.dst_rate = int(src_rate), int(dst_rate)
        self.bank, self.K = _filter_bank(self.up, self.down)
        self._buf = np.zeros(self.K - 1)  # input samples from absolute index _buf_start on (zeros before 0)
        self._buf_start = -(self.K - 1)
        self._n_in = 0  # input samples received
        self._n_out = 0  # output samples emitted
        self._done = False

    def push(self, chunk) -> np.ndarray:
        if self._done:
            raise FlashTalkError("StreamingResampler.push after flush(): create a new resampler for a new stream")
        x = np.asarray(chunk, dtype=np.float64)
        if x.ndim != 1:
            raise FlashTalkError(f"resampler expects a 1-D mono chunk, got shape {x.shape}")
        self._buf = np.concatenate([self._buf, x])
        self._n_in += x.shape[0]
        # output n needs inputs up to b_n + K, with b_n = floor(n*down/up); emit all n with b_n + K < n_in
        last_b = self._n_in - 1 - self.K
        n_end = (last_b * self.up) // self.down + 1 if last_b >= 0 else 0
        return self._emit(n_end)

    def flush(self) -> np.ndarray:
        if self._done:
            return np.zeros(0, dtype=np.float32)
        self._buf = np.concatenate([self._buf, np.zeros(self.K)])
        self._done = True
        return self._emit(-(-self._n_in * self.up // self.down))  # ceil(n_in * up / down)

    def _emit(self, n_end: int) -> np.ndarray:
        n0 = self._n_out
        if n_end <= n0:
            return np.zeros(0, dtype=np.float32)
        up, down, K = self.up, self.down, self.K
        out = np.empty(n_end - n0)
        windows = np.lib.stride_tricks.sliding_window_view(self._buf, 2 * K)  # [len - 2K + 1, 2K]
        if n_end - n0 < GATHER_BELOW * up:  # few outputs per phase: gather each output's window and taps at once
            for b0 in range(n0, n_end, 16384):
                n = np.arange(b0, min(b0 + 16384, n_end))
                s = (n * down) // up - K + 1 - self._buf_start
                out[b0 - n0 : b0 - n0 + len(n)] = np.einsum("ij,ij->i", windows[s], self.bank[n % up])
            return self._finish(out, n_end)
        block = up * -(-16384 // up)  # outputs per block: all phases of a block reuse a cache-sized input span
        for b0 in range(n0, n_end, block):
            b1 = min(b0 + block, n_end)
            for p in range(min(up, b1 - b0)):
                n_first = b0 + p  # outputs n_first, n_first + up, ... < b1 share phase n_first % up
                count = (b1 - n_first + up - 1) // up
                s = (n_first * down) // up - K + 1 - self._buf_start  # first window start in the buffer
                out[n_first - n0 : b1 - n0 : up] = (
                    windows[s : s + (count - 1) * down + 1 : down] @ self.bank[n_first % up]
                )
        return self._finish(out, n_end)

    def _finish(self, out: np.ndarray, n_end: int) -> np.ndarray:
        up, down, K = self.up, self.down, self.K
        self._n_out = n_end
        keep_from = (n_end * down) // up - K + 1  # first input the next output needs
        drop = keep_from - self._buf_start
        if drop > 0:
            self._buf = self._buf[drop:]
            self._buf_start = keep_from
        return out.astype(np.float32)


def resample(x, src_rate: int, dst_rate: int) -> np.ndarray:
    """Resample a 1-D signal (numpy or torch, any float dtype) from src_rate to dst_rate -> float32 numpy."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    if x.ndim != 1:
        raise FlashTalkError(f"resample expects 1-D mono samples, got shape {x.shape}")
    if src_rate == dst_rate:
        _ratio(src_rate, dst_rate)
        return x.astype(np.float32)
    r = StreamingResampler(src_rate, dst_rate)
    return np.concatenate([r.push(x), r.flush()])


# --------------------------------------------------------------------------------------------- decoding


def _describe(src: AudioSource) -> str:
    if isinstance(src, (str, os.PathLike)):
        return str(src)
    return "<bytes>" if isinstance(src, (bytes, bytearray)) else "<stream>"


def _open_source(src: AudioSource):
    """A path (checked to exist) or a fresh binary stream for `src`."""
    if isinstance(src, (str, os.PathLike)):
        path = Path(src)
        if not path.exists():
            raise FlashTalkError(f"audio file {path} does not exist")
        if not path.is_file():
            raise FlashTalkError(f"audio path {path} is not a file")
        if path.stat().st_size == 0:
            raise FlashTalkError(f"audio file {path} is empty (0 bytes)")
        return str(path)
    if isinstance(src, (bytes, bytearray)):
        if len(src) == 0:
            raise FlashTalkError("audio bytes are empty (0 bytes)")
        return io.BytesIO(bytes(src))
    if hasattr(src, "read"):
        if hasattr(src, "seek"):
            src.seek(0)
        return src
    raise FlashTalkError(f"audio input must be a path, bytes or a binary file object, not {type(src).__name__}")


def _pcm_to_float(a: np.ndarray) -> np.ndarray:
    if a.dtype.kind == "f":
        return a.astype(np.float32, copy=False)
    if a.dtype == np.uint8:
        return (a.astype(np.float32) - 128.0) / 128.0
    if a.dtype.kind == "i":
        return a.astype(np.float32) / float(2 ** (8 * a.dtype.itemsize - 1))
    raise FlashTalkError(f"unsupported PCM sample type {a.dtype}")


def _sf_blocks(handle, name: str, block_frames: int) -> Iterator[tuple[np.ndarray, int]]:
    import soundfile as sf

    with sf.SoundFile(handle) as f:
        rate = int(f.samplerate)
        _check_rate(rate, name)
        while True:
            block = f.read(block_frames, dtype="float32", always_2d=True)  # [frames, channels]
            if block.shape[0] == 0:
                return
            yield block.mean(axis=1, dtype=np.float32) if block.shape[1] > 1 else block[:, 0], rate


def _av_blocks(handle, name: str) -> Iterator[tuple[np.ndarray, int]]:
    import av

    try:  # tags that are not UTF-8 are decoded with replacement characters instead of failing the open
        container = av.open(handle, mode="r", metadata_errors="replace")
    except (av.error.FFmpegError, ValueError, OSError) as exc:
        raise FlashTalkError(f"could not read audio file {name}: not a decodable audio/video file ({exc})") from None
    with container:
        if not container.streams.audio:
            raise FlashTalkError(f"{name} contains no audio stream")
        stream = container.streams.audio[0]
        rate = _stream_rate(stream)
        if rate == 0:
            raise FlashTalkError(f"{name}: the audio stream declares no sample rate (corrupt container)")
        _check_rate(rate, name)
        try:
            for frame in container.decode(stream):
                if frame.sample_rate and frame.sample_rate != rate:
                    raise FlashTalkError(
                        f"{name}: the audio changes sample rate mid-stream ({rate} -> "
                        f"{frame.sample_rate} Hz); convert it to one rate first"
                    )
                channels = frame.layout.nb_channels
                if channels < 1 or frame.samples == 0:
                    continue
                a = frame.to_ndarray()
                if frame.format.is_planar:  # [channels, samples]
                    a = a.reshape(channels, -1)
                else:  # [1, samples * channels], interleaved
                    a = a.reshape(-1, channels).T
                a = _pcm_to_float(a)
                yield a.mean(axis=0, dtype=np.float32) if channels > 1 else a[0], rate
        except (av.error.FFmpegError, ValueError) as exc:
            if isinstance(exc, FlashTalkError):
                raise
            raise FlashTalkError(f"audio file {name} is corrupt or truncated: decoding failed ({exc})") from None


def _stream_rate(stream) -> int:
    """The stream's sample rate, or 0 when a corrupt container gives none (PyAV then lacks the attribute)."""
    for get in (lambda: stream.rate, lambda: stream.codec_context.sample_rate):
        try:
            rate = int(get() or 0)
        except (AttributeError, TypeError, ValueError, OverflowError):
            continue
        if rate:
            return rate
    return 0


def _decoded_blocks(src: AudioSource, block_frames: int = 1 << 16) -> Iterator[tuple[np.ndarray, int]]:
    """Mono float32 blocks (samples, rate) of `src`: soundfile first, PyAV for what libsndfile cannot read."""
    import soundfile as sf

    name = _describe(src)
    handle = _open_source(src)
    try:
        sf.info(handle)
        soundfile_ok = True
    except (sf.LibsndfileError, RuntimeError, TypeError):
        soundfile_ok = False
    if not isinstance(handle, str):
        handle.seek(0)
    if soundfile_ok:
        try:
            yield from _sf_blocks(handle, name, block_frames)
            return
        except (sf.LibsndfileError, RuntimeError) as exc:
            raise FlashTalkError(f"audio file {name} is corrupt or truncated: {exc}") from None
    yield from _av_blocks(handle, name)


def _check_rate(rate: int, name: str) -> None:
    if rate < MIN_RATE:
        raise FlashTalkError(f"{name}: sample rate {rate} Hz is not supported (need at least {MIN_RATE} Hz for speech)")
    if rate > MAX_RATE:
        raise FlashTalkError(f"{name}: sample rate {rate} Hz is not supported (at most {MAX_RATE} Hz)")


def _check_finite(x: np.ndarray, name: str) -> None:
    if not np.isfinite(x).all():
        n_nan, n_inf = int(np.isnan(x).sum()), int(np.isinf(x).sum())
        raise FlashTalkError(f"{name} contains non-finite samples ({n_nan} NaN, {n_inf} inf)")


def load_audio(src: AudioSource, target_rate: int = 16000, max_seconds: float = DEFAULT_MAX_SECONDS) -> AudioClip:
    """Decode `src` (path, bytes or binary file object) to mono float32 at `target_rate`.

    Raises FlashTalkError for a missing, unreadable or corrupt file, empty audio, all-silent audio,
    NaN/inf samples, a sample rate under 4 kHz, or more than `max_seconds` of audio (stream longer
    inputs with `iter_audio_chunks` instead)."""
    name = _describe(src)
    _ratio(target_rate, target_rate)
    blocks, total, rate = [], 0, None
    for block, rate in _decoded_blocks(src):
        blocks.append(block)
        total += block.shape[0]
        if total > max_seconds * rate:
            raise FlashTalkError(
                f"{name} is longer than max_seconds={max_seconds:g} s; raise max_seconds or stream it "
                "in chunks (flashtalk.io.audio.iter_audio_chunks / the streaming session)"
            )
    if total == 0:
        raise FlashTalkError(f"{name} contains no audio samples (zero-length audio)")
    x = np.concatenate(blocks)
    _check_finite(x, name)
    peak = float(np.abs(x).max())
    if peak < SILENCE_LEVEL:
        raise FlashTalkError(
            f"{name} is silent: every sample is below {SILENCE_LEVEL:g} in magnitude (peak {peak:.2e}); "
            "a talking head needs speech"
        )
    if rate != target_rate:
        x = resample(x, rate, target_rate)
    return AudioClip(samples=x, rate=int(target_rate), duration=x.shape[0] / target_rate, source=name)


def iter_audio_chunks(src: AudioSource, chunk_seconds: float = 10.0, target_rate: int = 16000) -> Iterator[np.ndarray]:
    """Decode and resample `src` incrementally: yields mono float32 chunks of `chunk_seconds` at
    `target_rate` (the last one shorter) without holding the whole file in memory. No length limit."""
    name = _describe(src)
    if not chunk_seconds > 0:
        raise FlashTalkError(f"chunk_seconds must be positive, got {chunk_seconds!r}")
    chunk = max(1, int(round(chunk_seconds * target_rate)))
    resampler, pending, total = None, np.zeros(0, dtype=np.float32), 0
    for block, rate in _decoded_blocks(src):
        _check_finite(block, name)
        if total == 0 and rate != target_rate:
            resampler = StreamingResampler(rate, target_rate)
        total += block.shape[0]
        pending = np.concatenate([pending, block if resampler is None else resampler.push(block)])
        while pending.shape[0] >= chunk:
            yield pending[:chunk]
            pending = pending[chunk:]
    if total == 0:
        raise FlashTalkError(f"{name} contains no audio samples (zero-length audio)")
    if resampler is not None:
        pending = np.concatenate([pending, resampler.flush()])
    while pending.shape[0] > 0:
        yield pending[:chunk]
        pending = pending[chunk:]
