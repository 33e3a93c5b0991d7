"""Procedural, audio-driven motion for the weights-free preview.

Every frame's values are a causal function of the 16-kHz waveform up to the end of that frame, plus a
seeded random state that advances once per frame. Offline (`preview_motion`) and streaming
(`PreviewMotionStream`) share one per-frame step, so the same audio gives the same motion however it is
chunked (the final partial frame is zero-padded in both).

Per frame (fps frames a second, `16000 // fps` samples each), on a Hann window of the frame and the
samples just before it:

* jaw: speech-band (300-3400 Hz) level in dBFS, gated against silence and normalised against a slowly
  decaying running peak, then attack/release smoothed; silence gives 0 (closed);
* lip_width / lip_round: spectral centroid of the voiced band, a crude viseme proxy (bright "ee/s"
  spreads the lips, dark "oo/o" rounds them), scaled by the opening and smoothed;
* yaw / pitch / roll (degrees), tx / ty (fractions of the crop width), scale: sums of slow sinusoids with
  seeded frequencies and phases whose phase speed and amplitude grow with speech energy (prosody), plus
  a pitch nod that follows the smoothed F0 rise (autocorrelation pitch) and a slow breathing sway;
* blink (0 open .. 1 closed): blinks at seeded random intervals, ~150 ms each.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from flashtalk.constants import MODEL_RATE as SAMPLE_RATE
from flashtalk.errors import FlashTalkError

MOTION_FIELDS = ("jaw", "lip_width", "lip_round", "yaw", "pitch", "roll", "tx", "ty", "scale", "blink")


@dataclass(frozen=True)
class PreviewMotionConfig:
    """Constants of the procedural motion (time constants in seconds, levels in dBFS, angles in degrees)."""

    window: int = 1024  # analysis window in samples (the frame plus history before it)
    band_hz: tuple[float, float] = (300.0, 3400.0)  # speech band for the jaw envelope
    silence_db: float = -50.0  # band level at which the jaw is fully closed
    gate_db: float = 6.0  # soft-gate width above silence_db
    dynamic_range_db: float = 30.0  # jaw opening spans this many dB below the running peak
    peak_decay_db_per_s: float = 3.0  # running-peak release
    peak_floor_db: float = -30.0  # running peak never drops below this (quiet speech still opens)
    jaw_attack: float = 0.025
    jaw_release: float = 0.070
    jaw_gamma: float = 0.8  # opening = normalised level ** gamma
    centroid_mid_hz: float = 1400.0  # centroid where lips are neutral
    centroid_span_hz: float = 700.0
    lip_tau: float = 0.06
    pitch_range_hz: tuple[float, float] = (70.0, 400.0)
    voicing_threshold: float = 0.35  # normalised autocorrelation peak counted as voiced
    prosody_tau: float = 0.35  # smoothing of energy / pitch for head motion
    f0_track_tau: float = 2.0  # slow F0 mean the pitch nod is measured against
    idle_deg: tuple[float, float, float] = (1.2, 0.8, 0.5)  # yaw, pitch, roll amplitude in silence
    speech_deg: tuple[float, float, float] = (3.5, 2.5, 1.5)  # extra amplitude at full speech energy
    nod_deg_per_semitone: float = 0.5  # head lifts (negative pitch) as F0 rises
    nod_max_deg: float = 3.0
    idle_shift: float = 0.004  # tx / ty amplitude, fraction of crop width
    speech_shift: float = 0.008
    idle_scale: float = 0.004  # relative scale amplitude
    breath_hz: float = 0.25
    head_hz: tuple[float, float] = (0.08, 0.45)  # range the seeded sinusoid frequencies are drawn from
    head_components: int = 3
    speech_speedup: float = 1.5  # phase speed multiplier at full energy is 1 + speech_speedup
    blink_interval_s: tuple[float, float] = (2.0, 6.0)
    first_blink_s: tuple[float, float] = (0.8, 3.0)
    blink_duration_s: float = 0.15


@dataclass
class PreviewMotion:
    """Per-frame motion arrays (float32, length N each)."""

    jaw: np.ndarray  # mouth opening 0 (closed) .. 1 (wide)
    lip_width: np.ndarray  # -1 narrow .. +1 spread
    lip_round: np.ndarray  # 0 .. 1 rounding / pursing
    yaw: np.ndarray  # degrees, positive turns the face to the viewer's right
    pitch: np.ndarray  # degrees, positive nods the face down
    roll: np.ndarray  # degrees, positive tilts clockwise in the image
    tx: np.ndarray  # fraction of crop width, positive right
    ty: np.ndarray  # fraction of crop height, positive down
    scale: np.ndarray  # relative head scale, 1 = source
    blink: np.ndarray  # 0 open .. 1 closed
    fps: int = field(default=25)

    def __post_init__(self) -> None:
        lengths = {len(getattr(self, name)) for name in MOTION_FIELDS}
        if len(lengths) != 1:
            raise FlashTalkError(f"PreviewMotion arrays differ in length: {sorted(lengths)}")
        for name in MOTION_FIELDS:
            setattr(self, name, np.asarray(getattr(self, name), dtype=np.float32))

    def __len__(self) -> int:
        return len(self.jaw)

    def slice(self, start: int, stop: int) -> "PreviewMotion":
        return PreviewMotion(**{n: getattr(self, n)[start:stop] for n in MOTION_FIELDS}, fps=self.fps)

    def select(self, rows: list[int]) -> "PreviewMotion":
        """The frames `rows` (any order, repeats allowed)."""
        return PreviewMotion(**{n: getattr(self, n)[rows] for n in MOTION_FIELDS}, fps=self.fps)

    @staticmethod
    def concat(parts: list["PreviewMotion"], fps: int = 25) -> "PreviewMotion":
        if parts:
            fps = parts[0].fps
        return PreviewMotion(
            **{
                n: np.concatenate([getattr(p, n) for p in parts]) if parts else np.zeros(0, np.float32)
                for n in MOTION_FIELDS
            },
            fps=fps,
        )

    @staticmethod
    def still(num_frames: int, fps: int = 25) -> "PreviewMotion":
        """No motion at all (the source portrait, repeated)."""
        return PreviewMotion(
            **{n: np.full(num_frames, 1.0 if n == "scale" else 0.0, np.float32) for n in MOTION_FIELDS}, fps=fps
        )


def _alpha(tau: float, dt: float) -> float:
    return 1.0 - math.exp(-dt / tau) if tau > 0 else 1.0


def _check_audio(audio: np.ndarray, what: str) -> np.ndarray:
    arr = np.asarray(audio)
    if arr.ndim != 1:
        raise FlashTalkError(f"{what} must be mono 1-D 16-kHz samples, got shape {tuple(arr.shape)}")
    if not np.issubdtype(arr.dtype, np.floating):
        raise FlashTalkError(f"{what} must be float samples in [-1, 1], got dtype {arr.dtype}")
    arr = arr.astype(np.float64)
    if arr.size and not np.isfinite(arr).all():
        raise FlashTalkError(f"{what} contains NaN or infinite samples")
    return arr


def _samples_per_frame(fps: int) -> int:
    if not isinstance(fps, int) or fps <= 0 or SAMPLE_RATE % fps:
        raise FlashTalkError(f"fps must be a positive integer dividing {SAMPLE_RATE}, got {fps!r}")
    return SAMPLE_RATE // fps


class PreviewMotionStream:
    """Incremental motion: `push(chunk)` returns the frames completed so far, `flush()` the last,
    zero-padded partial frame. Chunk sizes do not change the result."""

    def __init__(self, fps: int = 25, seed: int = 0, config: PreviewMotionConfig | None = None) -> None:
        self.fps = fps
        self.hop = _samples_per_frame(fps)
        self.cfg = cfg = config or PreviewMotionConfig()
        if cfg.window < self.hop:
            raise FlashTalkError(f"analysis window {cfg.window} is shorter than a frame ({self.hop} samples)")
        self.dt = 1.0 / fps
        self._history = np.zeros(cfg.window - self.hop)
        self._pending = np.zeros(0)
        self._frame = 0
        self._closed = False

        n = cfg.window
        self._hann = np.hanning(n + 2)[1:-1]
        freqs = np.fft.rfftfreq(n, 1.0 / SAMPLE_RATE)
        self._band = (freqs >= cfg.band_hz[0]) & (freqs <= cfg.band_hz[1])
        self._freqs = freqs
        self._lag_lo = int(SAMPLE_RATE / cfg.pitch_range_hz[1])
        self._lag_hi = int(SAMPLE_RATE / cfg.pitch_range_hz[0])
        # Hann window normalisation: band level of a full-scale sine reads ~ -3 dBFS like its RMS
        self._power_norm = 2.0 / (self._hann**2).sum() / n

        rng = np.random.default_rng(seed)
        k = cfg.head_components
        self._head_freq = rng.uniform(cfg.head_hz[0], cfg.head_hz[1], size=(6, k))
        self._head_phase = rng.uniform(0.0, 2 * math.pi, size=(6, k))
        self._head_weight = rng.uniform(0.5, 1.0, size=(6, k))
        self._head_weight /= self._head_weight.sum(axis=1, keepdims=True)
        self._breath_phase = rng.uniform(0.0, 2 * math.pi)
        self._blink_rng = np.random.default_rng(rng.integers(2**63))
        self._next_blink = self._blink_rng.uniform(*cfg.first_blink_s)

        # filter states
        self._peak = cfg.peak_floor_db
        self._jaw = 0.0
        self._width = 0.0
        self._round = 0.0
        self._energy = 0.0
        self._f0_fast = 0.0  # semitones relative to 100 Hz, smoothed while voiced
        self._f0_slow = 0.0
        self._f0_seen = False

    def push(self, chunk: np.ndarray) -> PreviewMotion:
        if self._closed:
            raise FlashTalkError("PreviewMotionStream.push after flush(): start a new stream")
        samples = _check_audio(chunk, "audio chunk")
        self._pending = np.concatenate([self._pending, samples])
        count = len(self._pending) // self.hop
        rows = [self._step(self._pending[i * self.hop : (i + 1) * self.hop]) for i in range(count)]
        self._pending = self._pending[count * self.hop :]
        return self._pack(rows)

    def flush(self) -> PreviewMotion:
        """Finish the stream: the buffered partial frame (if any) is zero-padded to a whole frame."""
        if self._closed:
            raise FlashTalkError("PreviewMotionStream.flush called twice")
        self._closed = True
        rows = []
        if len(self._pending):
            rows.append(self._step(np.pad(self._pending, (0, self.hop - len(self._pending)))))
            self._pending = np.zeros(0)
        return self._pack(rows)

    def _pack(self, rows: list[tuple[float, ...]]) -> PreviewMotion:
        table = np.asarray(rows, dtype=np.float32).reshape(len(rows), len(MOTION_FIELDS))
        return PreviewMotion(**{n: table[:, i] for i, n in enumerate(MOTION_FIELDS)}, fps=self.fps)

    def _analyse(self, frame: np.ndarray) -> tuple[float, float, float, float]:
        """(band level dBFS, spectral centroid Hz, voicing 0..1, F0 in semitones re 100 Hz) of one frame."""
        cfg = self.cfg
        x = np.concatenate([self._history, frame])
        self._history = x[self.hop :]
        spec = np.fft.rfft(x * self._hann)
        power = spec.real**2 + spec.imag**2
        band = power[self._band]
        band_power = band.sum() * self._power_norm
        level = 10.0 * math.log10(band_power + 1e-12)
        total = band.sum()
        centroid = float((band * self._freqs[self._band]).sum() / total) if total > 0 else cfg.centroid_mid_hz
        # autocorrelation of the windowed frame (zero-padded FFT), normalised by lag-0 energy
        full = np.fft.rfft(x * self._hann, 2 * cfg.window)
        ac = np.fft.irfft(full.real**2 + full.imag**2)[: self._lag_hi + 1]
        voicing, f0 = 0.0, 0.0
        if ac[0] > 1e-9:
            seg = ac[self._lag_lo : self._lag_hi + 1] / ac[0]
            lag = int(np.argmax(seg))
            voicing = float(max(seg[lag], 0.0))
            f0 = 12.0 * math.log2(SAMPLE_RATE / (lag + self._lag_lo) / 100.0)
        return level, centroid, voicing, f0

    def _step(self, frame: np.ndarray) -> tuple[float, ...]:
        cfg, dt = self.cfg, self.dt
        t = self._frame * dt
        self._frame += 1
        level, centroid, voicing, f0 = self._analyse(frame)

        # jaw: gated, peak-normalised, attack/release smoothed
        self._peak = max(level, self._peak - cfg.peak_decay_db_per_s * dt, cfg.peak_floor_db)
        gate = min(max((level - cfg.silence_db) / cfg.gate_db, 0.0), 1.0)
        norm = min(max((level - (self._peak - cfg.dynamic_range_db)) / cfg.dynamic_range_db, 0.0), 1.0)
        target = gate * norm**cfg.jaw_gamma
        a = _alpha(cfg.jaw_attack if target > self._jaw else cfg.jaw_release, dt)
        self._jaw += a * (target - self._jaw)

        # lips: spectral centroid as a viseme proxy, only while the mouth is open
        shape = math.tanh((centroid - cfg.centroid_mid_hz) / cfg.centroid_span_hz) * gate
        a = _alpha(cfg.lip_tau, dt)
        self._width += a * (max(shape, -1.0) * min(1.0, 2.0 * target) - self._width)
        self._round += a * (max(-shape, 0.0) * min(1.0, 2.0 * target) - self._round)

        # prosody: smoothed energy and F0 (semitones) against a slow F0 mean
        a = _alpha(cfg.prosody_tau, dt)
        self._energy += a * (target - self._energy)
        if voicing >= cfg.voicing_threshold and gate > 0.5:
            if not self._f0_seen:
                self._f0_fast = self._f0_slow = f0
                self._f0_seen = True
            self._f0_fast += a * (f0 - self._f0_fast)
            self._f0_slow += _alpha(cfg.f0_track_tau, dt) * (f0 - self._f0_slow)
        else:  # unvoiced or silent: let the nod relax back to the mean
            self._f0_fast += a * (self._f0_slow - self._f0_fast)
        rise = self._f0_fast - self._f0_slow

        # head: seeded sinusoids, faster and larger with energy; phases advance per frame (causal)
        speed = 1.0 + cfg.speech_speedup * self._energy
        self._head_phase += 2 * math.pi * self._head_freq * dt * speed
        wave = (self._head_weight * np.sin(self._head_phase)).sum(axis=1) * math.sqrt(cfg.head_components)
        amp = [i + s * self._energy for i, s in zip(cfg.idle_deg, cfg.speech_deg)]
        nod = max(-cfg.nod_max_deg, min(cfg.nod_max_deg, -cfg.nod_deg_per_semitone * rise))
        breath = math.sin(2 * math.pi * cfg.breath_hz * t + self._breath_phase)
        yaw = amp[0] * wave[0]
        pitch = amp[1] * wave[1] + nod + 0.3 * breath
        roll = amp[2] * wave[2]
        shift = cfg.idle_shift + cfg.speech_shift * self._energy
        tx = shift * wave[3]
        ty = shift * wave[4] + 0.5 * cfg.idle_shift * breath
        scale = 1.0 + cfg.idle_scale * (wave[5] + 0.5 * breath)

        # blink: raised-cosine closure, next one at a seeded random interval
        blink = 0.0
        frame_mid = t + 0.5 * dt
        while frame_mid > self._next_blink + cfg.blink_duration_s:
            self._next_blink += self._blink_rng.uniform(*cfg.blink_interval_s)
        u = (frame_mid - self._next_blink) / cfg.blink_duration_s
        if 0.0 <= u <= 1.0:
            blink = math.sin(math.pi * u) ** 0.7

        return (self._jaw, self._width, self._round, yaw, pitch, roll, tx, ty, scale, blink)


def preview_motion(
    audio_16k: np.ndarray, fps: int = 25, seed: int = 0, config: PreviewMotionConfig | None = None
) -> PreviewMotion:
    """Per-frame procedural motion for a whole 16-kHz mono clip: ceil(len / (16000 / fps)) frames."""
    samples = _check_audio(audio_16k, "audio")
    if samples.size == 0:
        raise FlashTalkError("audio is empty: no samples to animate")
    stream = PreviewMotionStream(fps=fps, seed=seed, config=config)
    return PreviewMotion.concat([stream.push(samples), stream.flush()], fps=fps)


__all__ = [
    "MOTION_FIELDS",
    "PreviewMotion",
    "PreviewMotionConfig",
    "PreviewMotionStream",
    "preview_motion",
    "SAMPLE_RATE",
]
