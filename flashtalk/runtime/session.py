"""Live streaming sessions: a portrait encoded once, PCM chunks in, timestamped 512x512 frames out.

    backend = PreviewBackend(device)                         # or flashtalk.runtime.backends.network.NetworkBackend
    portrait = encode_portrait(backend, "face.jpg")          # crop + encode, once; share it across sessions
    session = Session(backend, portrait, sample_rate=48000, sample_format="s16le", latency="low")
    scheduler = Scheduler(backend); scheduler.admit(session)  # flashtalk.runtime.scheduler
    session.push_audio(pcm_bytes)                              # any thread; resampled to 16 kHz here
    scheduler.step()                                           # or scheduler.start() for a worker thread
    for item in session.poll():                                # Frame (uint8 [512, 512, 3] + its audio) or Event
        ...

The backend interface is `flashtalk.runtime.backends.Backend`; a session hands out `Frame`s and `Event`s.

Threading: the client methods (`push_audio`, `end_speech`, `interrupt`, `set_controls`, `close`, `poll`)
may be called from any one client thread; they only queue commands. The scheduler's thread calls the
worker methods (`apply_commands`, `motion_request`, `accept_motion`, `pending_frames`, `next_due`, `room`, `hold`,
`take`, `finish`), which generate motion bookkeeping and hand frames out. Frame i shows audio time
[i, i + 1) / fps of the session's media timeline (pts = i / fps seconds); frames come out in order with
increasing pts. While no audio arrives and `idle` is on, the session fills the timeline with frames
driven by silence once the wall clock runs more than `IDLE_SLACK_S` ahead of it, so the head keeps moving.

Pace and deadlines: a "realtime" session (the default) is a live one: each of its pending frames is due
`budget_s` after the audio that completed it (and its look-ahead) arrived, and the scheduler serves due
frames earliest deadline first; a "fast" session is bulk work that fills the capacity left over.
Backpressure: a session is paused while its client is not reading (`set_paused(True)`, or more than
MAX_OUTPUT_BACKLOG frames not yet polled): the scheduler renders none of its frames then; a realtime
session skips to the present meanwhile (its overdue frames are dropped unrendered and counted in
`stats.skipped_frames`), a fast one resumes where it was.
"""

from __future__ import annotations

import collections
import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from flashtalk.constants import DEFAULT_BUDGET_S, FPS, HOP, LATENCY_MODES, MODEL_RATE
from flashtalk.constants import WATERMARK_KEY as DEFAULT_WATERMARK_KEY
from flashtalk.errors import FlashTalkError
from flashtalk.runtime.backends import Backend, EncodedPortrait, MotionChunk, encode_portrait
from flashtalk.runtime.finish import watermark_mark

SAMPLE_FORMATS = {"s16le": np.dtype("<i2"), "f32le": np.dtype("<f4")}
IDLE_SLACK_S = 0.2  # idle frames start once the wall clock is this far ahead of the media timeline
MAX_IDLE_FRAMES_PER_STEP = 5
STALL_FLUSH_S = 0.5  # audio waiting for a backend's look-ahead is made into frames after this long without more
MAX_QUEUED_AUDIO_S = 30.0  # push_audio refuses audio beyond this much not yet turned into motion
MAX_OUTPUT_BACKLOG = 250  # frames not yet polled: the session is paused (not rendered) at this many
MAX_PAUSED_PENDING = 64  # a paused fast session makes no more motion past this many frames waiting to render
PACES = ("realtime", "fast")


@dataclass(frozen=True)
class Frame:
    index: int  # frame number on the session's media timeline
    pts: float  # seconds, index / fps
    image: np.ndarray  # [512, 512, 3] uint8 RGB, watermarked when the watermark module is installed
    audio: np.ndarray  # the 16-kHz float32 samples that drove this frame (HOP of them; silence when idle)
    epoch: int  # interrupt generation the audio belonged to
    idle: bool  # driven by silence filled in while no audio arrived
    latency_s: float | None  # audio complete -> frame ready (None for idle frames)


@dataclass(frozen=True)
class Event:
    kind: str  # "end" (all frames of the speech ended by end_speech() are out) | "interrupted"
    frames: int  # frames on the timeline so far
    epoch: int


@dataclass
class _Pending:
    """Motion frames waiting for the renderer, with their bookkeeping."""

    motion: MotionChunk
    first: int  # index of motion frame 0
    audio: np.ndarray  # [len * HOP]
    arrival: float | None  # when the audio that completed these frames arrived
    epoch: int
    idle: bool
    due: float  # when they must be rendered: (arrival, or when idle motion was made) + look-ahead + budget
    taken: int = 0


@dataclass
class SessionStats:
    frames_out: int = 0
    idle_frames: int = 0
    dropped_frames: int = 0  # rendered but dropped: output backlog over MAX_OUTPUT_BACKLOG
    skipped_frames: int = 0  # realtime frames skipped unrendered while paused (overdue: skipped to the present)
    paused_frames: int = 0  # frames held back (once each) because the session was paused
    deadline_misses: int = 0  # frames rendered after their due time
    latencies: list[float] = field(default_factory=list)  # seconds, latest last (bounded)


class Session:
    """One live talking head. See the module docstring for the flow and threading rules.

    `latency` ("exact" default, or "low") with `commit_frames` (k) and `lookahead_frames` (r) chooses the
    network backend's window schedule (`flashtalk.runtime.windows`); bad values raise FlashTalkError
    naming the value and its range. The preview has no look-ahead whatever the setting. `pace` ("realtime"
    default, or "fast") and `budget_s` (seconds, > 0) set the frames' deadlines (module docstring)."""

    def __init__(
        self,
        backend: Backend,
        portrait: EncodedPortrait | Any,
        *,
        seed: int = 0,
        sample_rate: int = MODEL_RATE,
        sample_format: str = "s16le",
        controls: Mapping[str, Any] | None = None,
        idle: bool = True,
        watermark: bool = True,
        watermark_key: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        on_output: Callable[[], None] | None = None,
        crop: Any = "auto",
        latency: str = "exact",
        commit_frames: int | None = None,
        lookahead_frames: int | None = None,
        pace: str = "realtime",
        budget_s: float = DEFAULT_BUDGET_S,
    ) -> None:
        from flashtalk.io.audio import StreamingResampler

        if sample_format not in SAMPLE_FORMATS:
            raise FlashTalkError(f"sample_format must be one of {sorted(SAMPLE_FORMATS)}; got {sample_format!r}")
        if isinstance(sample_rate, bool) or not isinstance(sample_rate, int) or not 4000 <= sample_rate <= 192000:
            raise FlashTalkError(f"sample_rate must be an integer in [4000, 192000] Hz; got {sample_rate!r}")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise FlashTalkError(f"seed must be a non-negative integer; got {seed!r}")
        if latency not in LATENCY_MODES:
            raise FlashTalkError(f"latency must be one of {', '.join(LATENCY_MODES)}; got {latency!r}")
        if pace not in PACES:
            raise FlashTalkError(f"pace must be one of {', '.join(PACES)}; got {pace!r}")
        if isinstance(budget_s, bool) or not isinstance(budget_s, (int, float)) or not 0 < budget_s <= 60:
            raise FlashTalkError(f"budget_s must be a number of seconds in (0, 60]; got {budget_s!r}")
        if not isinstance(portrait, EncodedPortrait):
            portrait = encode_portrait(backend, portrait, crop=crop)
        elif portrait.backend_name != backend.name:
            raise FlashTalkError(f"portrait was encoded by the {portrait.backend_name} backend, not {backend.name}")
        self.backend = backend
        self.portrait = portrait
        self.sample_rate, self.sample_format = sample_rate, sample_format
        self._dtype = SAMPLE_FORMATS[sample_format]
        self._resampler_cls = StreamingResampler
        self._resampler = StreamingResampler(sample_rate, MODEL_RATE) if sample_rate != MODEL_RATE else None
        self._controls = backend.check_controls(controls or {})
        self.idle = idle
        self._clock = clock
        self._on_output = on_output
        # the scheduler watermarks a tick's frames
        self.mark = watermark_mark(watermark_key or DEFAULT_WATERMARK_KEY) if watermark else None
        self.watermarked = self.mark is not None
        self.latency = latency
        self.pace, self.budget_s = pace, float(budget_s)
        self.stream = backend.open(
            portrait.state, seed=seed, latency=latency, commit_frames=commit_frames, lookahead_frames=lookahead_frames
        )

        self.epoch = 0  # bumped by interrupt() in the client thread; read by both
        self.closed = False
        self.client_paused = False  # set_paused(): the client is not reading (its send queue is full)
        self._queued = 0  # 16-kHz samples pushed but not yet turned into motion (approximate, both threads)
        self._inbox: collections.deque = collections.deque()
        self._out: collections.deque = collections.deque()
        self._out_lock = threading.Lock()
        self.stats = SessionStats()
        # worker-side state
        self._buf = np.zeros(0, np.float32)  # 16-kHz audio not yet a whole frame
        self._buf_epoch = 0
        self._applied_epoch = 0
        self._pending: collections.deque[_Pending] = collections.deque()
        self._next_index = 0  # frames on the timeline (motion generated)
        self._ends: collections.deque[tuple[int, int]] = collections.deque()  # (frames, epoch) to announce
        self._start: float | None = None
        self._ready: list[tuple[np.ndarray, float | None, int]] = []  # whole-frame audio awaiting motion
        self._controls_sent = False  # the backend has seen the current controls
        self._held = 0  # ready frames the backend held back last time (not offered again until more come)
        self._now = 0.0
        self._last_audio = -math.inf  # when audio last arrived
        self._paused_upto = 0  # frames before this index were counted in stats.paused_frames
        self._wait_s = self.lookahead_s + self.budget_s  # arrival -> due

    # ---- client side ---------------------------------------------------------------------------
    @property
    def lookahead_s(self) -> float:
        """Audio a frame needs beyond its own 40 ms before it can be made: the resampler's filter
        half-length plus the backend's look-ahead (reported separately from compute latency)."""
        extra = 0.0 if self._resampler is None else self._resampler.K / self.sample_rate
        return extra + self.backend.lookahead_samples(self.stream) / MODEL_RATE

    def push_audio(self, pcm: bytes | bytearray | memoryview | np.ndarray) -> None:
        """Queue a chunk: bytes in `sample_format`, or a 1-D int16 / float array, at `sample_rate`."""
        self._check_open()
        samples = self._decode(pcm)
        if self._resampler is not None:
            samples = self._resampler.push(samples)
        if self._queued + len(samples) > MAX_QUEUED_AUDIO_S * MODEL_RATE:
            raise FlashTalkError(
                f"audio queue full: more than {MAX_QUEUED_AUDIO_S:g} s of audio is waiting; "
                "send audio no faster than it can be animated"
            )
        if len(samples):
            self._queued += len(samples)
            self._inbox.append(("audio", self.epoch, self._clock(), samples.astype(np.float32, copy=False)))

    def end_speech(self) -> None:
        """End of an utterance: the partial last frame is padded with silence and rendered, then an
        Event("end") follows its frames. Audio pushed afterwards starts a new utterance."""
        self._check_open()
        if self._resampler is not None:
            tail = self._resampler.flush()
            self._resampler = self._resampler_cls(self.sample_rate, MODEL_RATE)
            if len(tail):
                self._queued += len(tail)
                self._inbox.append(("audio", self.epoch, self._clock(), tail))
        self._inbox.append(("end", self.epoch, self._clock(), None))

    def interrupt(self) -> None:
        """Drop all queued audio and every frame not yet polled; the timeline goes on from there."""
        self._check_open()
        self.epoch += 1
        if self._resampler is not None:
            self._resampler = self._resampler_cls(self.sample_rate, MODEL_RATE)
        self._inbox.append(("interrupt", self.epoch, self._clock(), None))

    def set_controls(self, controls: Mapping[str, Any]) -> None:
        """Change controls from the next motion frame on (merged into the current ones)."""
        self._check_open()
        checked = self.backend.check_controls(controls)
        self._inbox.append(("controls", self.epoch, self._clock(), checked))

    @property
    def realtime(self) -> bool:
        return self.pace == "realtime"

    def set_paused(self, paused: bool) -> None:
        """Backpressure (any thread): while paused, none of this session's frames are rendered."""
        self.client_paused = paused

    def close(self) -> None:
        self.closed = True
        self._inbox.clear()

    def poll(self) -> list[Frame | Event]:
        """Everything ready so far, in order (frames of interrupted audio are left out)."""
        with self._out_lock:
            items = list(self._out)
            self._out.clear()
        epoch = self.epoch
        return [x for x in items if x.epoch >= epoch]

    def _check_open(self) -> None:
        if self.closed:
            raise FlashTalkError("session is closed")

    def _decode(self, pcm) -> np.ndarray:
        if isinstance(pcm, np.ndarray):
            if pcm.ndim != 1:
                raise FlashTalkError(f"PCM chunk must be 1-D mono; got shape {pcm.shape}")
            if pcm.dtype == np.int16:
                x = pcm.astype(np.float32) / 32768.0
            elif pcm.dtype in (np.float32, np.float64):
                x = pcm.astype(np.float32)
            else:
                raise FlashTalkError(f"PCM chunk dtype must be int16, float32 or float64; got {pcm.dtype}")
        elif isinstance(pcm, (bytes, bytearray, memoryview)):
            data = bytes(pcm)
            if len(data) % self._dtype.itemsize:
                raise FlashTalkError(
                    f"PCM chunk of {len(data)} bytes is not a whole number of "
                    f"{self.sample_format} samples ({self._dtype.itemsize} bytes each)"
                )
            raw = np.frombuffer(data, self._dtype)
            x = raw.astype(np.float32) / 32768.0 if self._dtype.kind == "i" else raw.astype(np.float32)
        else:
            raise FlashTalkError(f"PCM chunk must be bytes or a numpy array; got {type(pcm).__name__}")
        if x.size and not np.isfinite(x).all():
            raise FlashTalkError("PCM chunk contains NaN or infinite samples")
        return x

    # ---- worker side (the scheduler's thread) -----------------------------------------------------
    def apply_commands(self, now: float) -> None:
        """Worker: apply queued commands; collect whole frames of audio (and idle silence) for motion."""
        if self._start is None:
            self._start = now
        self._now = now
        while self._inbox:
            kind, epoch, t, payload = self._inbox.popleft()
            if kind == "interrupt":
                self._applied_epoch = epoch
                self._pending.clear()
                self._queued -= sum(len(a) for a, t, _ in self._ready if t is not None)
                self._ready.clear()
                self._held = 0
                self._ends.clear()
                self._queued -= len(self._buf)
                self._buf = np.zeros(0, np.float32)
                self._emit([Event("interrupted", self._next_index, epoch)])
            elif epoch < self._applied_epoch or epoch < self.epoch:
                if kind == "audio":
                    self._queued -= len(payload)
                continue  # audio / ends sent before an interrupt the client already issued
            elif kind == "controls":
                self._controls = {**self._controls, **payload}
                self._controls_sent = False
            elif kind == "audio":
                self._last_audio = t
                self._buf = np.concatenate([self._buf, payload])
                whole = len(self._buf) // HOP * HOP
                if whole:
                    self._ready.append((self._buf[:whole], t, epoch))
                    self._buf = self._buf[whole:]
            elif kind == "end":
                if len(self._buf):
                    self._queued += HOP - len(self._buf)
                    self._ready.append((np.pad(self._buf, (0, HOP - len(self._buf))), t, epoch))
                    self._buf = np.zeros(0, np.float32)
                frames = self._next_index + sum(len(a) // HOP for a, _, _ in self._ready)
                self._ends.append((frames, epoch))
        if self.idle and not self._ready and not self._pending and not len(self._buf):
            behind = (now - self._start) - self._next_index / FPS - IDLE_SLACK_S
            n = min(int(behind * FPS), MAX_IDLE_FRAMES_PER_STEP)
            if n > 0:
                self._ready.append((np.zeros(n * HOP, np.float32), None, self._applied_epoch))
        self._announce_ends()

    def motion_request(self) -> tuple[Any, np.ndarray, Mapping[str, Any], int] | None:
        """Worker: the item for `backend.motion`, or None when nothing is new. (stream, ready audio, controls, due): `due` frames must be made now, the rest may wait for a
        backend's look-ahead: all of them when idle silence is among them or no audio came for
        STALL_FLUSH_S, else those up to the last end of speech."""
        total = sum(len(a) for a, _, _ in self._ready) // HOP
        if any(t is None for _, t, _ in self._ready) or self._now - self._last_audio >= STALL_FLUSH_S:
            due = total
        else:
            due = max(0, min(total, max((frames for frames, _ in self._ends), default=0) - self._next_index))
        if self._controls_sent and not due and total == self._held:
            return None  # nothing new: do not call the backend (the scheduler would spin)
        if total and self.paused and self.pending_frames() >= MAX_PAUSED_PENDING:
            return None  # a client that does not read: its audio waits (and push_audio refuses past a bound)
        self._controls_sent = True
        audio = np.concatenate([a for a, _, _ in self._ready]) if self._ready else np.zeros(0, np.float32)
        return self.stream, audio, dict(self._controls), due

    def accept_motion(self, motion: MotionChunk) -> None:
        """Worker: the backend made motion for the first len(motion) ready frames; the rest wait in `_ready`."""
        made, start = len(motion), 0
        while start < made:
            audio, t, epoch = self._ready[0]
            n = min(len(audio) // HOP, made - start)
            due = (self._now if t is None else t) + self._wait_s
            self._pending.append(
                _Pending(motion.slice(start, start + n), self._next_index, audio[: n * HOP], t, epoch, t is None, due)
            )
            self._next_index += n
            start += n
            if t is not None:
                self._queued -= n * HOP
            if n * HOP == len(audio):
                self._ready.pop(0)
            else:
                self._ready[0] = (audio[n * HOP :], t, epoch)
        self._held = sum(len(a) for a, _, _ in self._ready) // HOP

    def pending_frames(self) -> int:
        """Worker: motion frames waiting to be rendered."""
        return sum(len(p.motion) - p.taken for p in self._pending)

    def next_due(self) -> float:
        """Worker: the due time of the first pending frame (inf: none pending)."""
        return self._pending[0].due if self._pending else math.inf

    @property
    def paused(self) -> bool:
        """Its client is not reading, or MAX_OUTPUT_BACKLOG frames wait to be polled."""
        return self.client_paused or len(self._out) >= MAX_OUTPUT_BACKLOG

    def room(self) -> int:
        """Worker: frames the scheduler may render now (0 while paused)."""
        return 0 if self.client_paused else max(0, MAX_OUTPUT_BACKLOG - len(self._out))

    def hold(self, now: float) -> tuple[int, int]:
        """Worker, while paused: count the frames held back (once each) and, for a realtime session, skip
        to the present (drop pending frames already overdue, unrendered). -> (newly held, skipped)."""
        held = max(0, self._next_index - max(self._paused_upto, self._next_index - self.pending_frames()))
        self._paused_upto = self._next_index
        skipped = 0
        while self.realtime and self._pending and self._pending[0].due < now:
            p = self._pending.popleft()
            skipped += len(p.motion) - p.taken
        self.stats.paused_frames += held
        self.stats.skipped_frames += skipped
        if skipped:
            self._announce_ends()
        return held, skipped

    def take(self, k: int) -> list[tuple[_Pending, int, int]]:
        """Worker: up to k pending motion frames, in order, as (pending, start, stop) slices."""
        out = []
        while k > 0 and self._pending:
            p = self._pending[0]
            n = min(k, len(p.motion) - p.taken)
            out.append((p, p.taken, p.taken + n))
            p.taken += n
            k -= n
            if p.taken == len(p.motion):
                self._pending.popleft()
        return out

    def finish(self, parts: list[tuple[_Pending, int, int]], pixels: np.ndarray, now: float) -> int:
        """Worker: `pixels` [N, 512, 512, 3] uint8 (watermarked: the scheduler converts and marks the frames
        of a whole tick at once, `flashtalk.runtime.finish.finish`) for `parts`: queue as Frames.
        -> how many of them missed their due time."""
        frames, row, missed = [], 0, 0
        for p, a, b in parts:
            missed += (b - a) * (now > p.due)
            for j in range(a, b):
                latency = None if p.arrival is None else now - p.arrival
                frames.append(
                    Frame(
                        p.first + j,
                        (p.first + j) / FPS,
                        pixels[row],
                        p.audio[j * HOP : (j + 1) * HOP],
                        p.epoch,
                        p.idle,
                        latency,
                    )
                )
                row += 1
        for f in frames:
            self.stats.frames_out += 1
            self.stats.idle_frames += f.idle
            if f.latency_s is not None:
                self.stats.latencies.append(f.latency_s)
        del self.stats.latencies[:-1000]
        self.stats.deadline_misses += missed
        self._emit(frames)
        self._announce_ends()
        return missed

    def _announce_ends(self) -> None:
        done = self._next_index - self.pending_frames() - sum(len(a) // HOP for a, _, _ in self._ready)
        events = []
        while self._ends and self._ends[0][0] <= done:
            frames, epoch = self._ends.popleft()
            events.append(Event("end", frames, epoch))
        if events:
            self._emit(events)

    def _emit(self, items: list[Frame | Event]) -> None:
        if not items:
            return
        with self._out_lock:
            self._out.extend(items)
            while len(self._out) > MAX_OUTPUT_BACKLOG:
                dropped = self._out.popleft()
                self.stats.dropped_frames += isinstance(dropped, Frame)
        if self._on_output is not None:
            self._on_output()


__all__ = ["Event", "Frame", "Session"]
