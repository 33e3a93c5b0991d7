"""A talking head for a voice agent, framework-free: agent audio (any rate) in; frames, each with the agent's
own audio that drove it, out. The LiveKit and Pipecat adapters are thin layers over this.

    stream = AvatarStream(LocalEngine("face.jpg"), width=512, height=512, audio_rate=48000)
    await stream.start()
    await stream.push(pcm_int16, 24000)      # as TTS audio arrives (resampled to 16 kHz for the engine)
    await stream.end()                        # end of the utterance: its last frame, then SegmentEnd
    await stream.clear()                      # barge-in: drop the utterance now, back to idle
    async for item in stream:                 # AvatarFrame | AudioTail | SegmentEnd
        ...

Audio and video stay in sync by construction: frame i of an utterance shows its audio time [i, i + 1) / 25 s,
and `AvatarFrame.audio` is exactly that span of the pushed audio (resampled to `audio_rate` when that is set
and differs). The audio handed out over an utterance is all of the pushed audio, sample for sample when no
resampling is needed; a resampler's last few samples, if they come after the last frame, follow as an
`AudioTail`. An utterance of n samples at 16 kHz gives ceil(n / 640) frames (the protocol's contract); the
engine's "end" event settles an utterance whose frames were dropped. Idle frames carry no audio.
"""

from __future__ import annotations

import asyncio
import collections
import math
from dataclasses import dataclass

import numpy as np

from flashtalk.constants import FPS, HOP, MODEL_RATE
from flashtalk.errors import FlashTalkError
from flashtalk.integrations.engines import EngineEvent, EngineFrame

# push() waits while more than this much pushed audio has not yet come out as frames: below the engine's
# own bounds (a Session keeps at most 250 unread frames = 10 s, and refuses more than 30 s of queued audio)
MAX_AHEAD_S = 8.0
STALL_S = 60.0  # push() gives up when no frame came out for this long


@dataclass(frozen=True)
class AvatarFrame:
    index: int  # engine timeline index
    pts: float  # seconds on the engine timeline
    image: np.ndarray  # [height, width, 3] uint8 RGB
    audio: np.ndarray  # int16 mono at audio_rate: the audio this frame shows (empty for idle frames)
    audio_rate: int
    idle: bool


@dataclass(frozen=True)
class AudioTail:
    audio: np.ndarray  # int16: the end of an utterance's audio that came after its last frame
    audio_rate: int


@dataclass
class AvatarStats:
    speech_frames: int = 0
    idle_frames: int = 0
    stale: int = 0  # frames and events dropped because they were on their way before a clear()
    unmatched: int = 0  # speech frames with no utterance left to belong to (shown without audio)
    dropped: int = 0  # speech frames the engine dropped (their audio went out with the next frame)


@dataclass(frozen=True)
class SegmentEnd:
    frames: int  # frames the utterance gave


def _resampler(src: int, dst: int):
    from flashtalk.io.audio import StreamingResampler

    return StreamingResampler(src, dst) if src != dst else None


class _Segment:
    """One utterance: its audio at the output rate not yet handed out, and its frame bookkeeping."""

    def __init__(self, out_rate: int | None) -> None:
        self.out_rate = out_rate
        self.in_rate: int | None = None
        self.to16 = self.to_out = None
        self.out = np.zeros(0, np.float32)
        self.out_taken = 0  # output samples handed out (absolute position of out[0])
        self.n16 = 0  # 16-kHz samples sent to the engine
        self.frames = 0  # speech frames handed out
        self.ended = False

    @property
    def total(self) -> int:
        return -(-self.n16 // HOP)

    @property
    def complete(self) -> bool:
        return self.ended and self.frames >= self.total

    def feed(self, x: np.ndarray, rate: int) -> np.ndarray:
        """Take pushed audio; returns the 16-kHz samples for the engine."""
        tail16 = np.zeros(0, np.float32)
        if rate != self.in_rate:
            if self.in_rate is not None:
                tail16 = self.flush()
            self.in_rate, self.out_rate = rate, self.out_rate or rate
            self.to16, self.to_out = _resampler(rate, MODEL_RATE), _resampler(rate, self.out_rate)
        y16 = self.to16.push(x) if self.to16 is not None else x
        self.out = np.concatenate([self.out, self.to_out.push(x) if self.to_out is not None else x])
        return np.concatenate([tail16, y16]) if len(tail16) else y16

    def flush(self) -> np.ndarray:
        tail16 = self.to16.flush() if self.to16 is not None else np.zeros(0, np.float32)
        if self.to_out is not None:
            self.out = np.concatenate([self.out, self.to_out.flush()])
        self.to16 = self.to_out = None
        self.in_rate = None
        return tail16

    def take(self, stop: int | None) -> np.ndarray:
        """Hand out the output audio up to absolute position `stop` (None: all there is)."""
        n = len(self.out) if stop is None else max(0, min(len(self.out), stop - self.out_taken))
        part, self.out = self.out[:n], self.out[n:]
        self.out_taken += n
        return (np.clip(part, -1.0, 32767 / 32768) * 32768.0).round().astype(np.int16)


def to_float(samples: np.ndarray) -> np.ndarray:
    if not isinstance(samples, np.ndarray) or samples.ndim != 1:
        raise FlashTalkError(f"audio must be a 1-D mono numpy array; got {getattr(samples, 'shape', type(samples))}")
    if samples.dtype == np.int16:
        return samples.astype(np.float32) / 32768.0
    if samples.dtype in (np.float32, np.float64):
        if samples.size and not np.isfinite(samples).all():
            raise FlashTalkError("audio contains NaN or infinite samples")
        return samples.astype(np.float32)
    raise FlashTalkError(f"audio dtype must be int16, float32 or float64; got {samples.dtype}")


class AvatarStream:
    """See the module docstring. `audio_rate` None: each utterance's audio comes out at the rate it came in."""

    def __init__(
        self,
        engine,
        *,
        width: int = 512,
        height: int = 512,
        audio_rate: int | None = None,
        max_ahead_s: float = MAX_AHEAD_S,
    ) -> None:
        for name, value in (("width", width), ("height", height)):
            if isinstance(value, bool) or not isinstance(value, int) or not 16 <= value <= 4096:
                raise FlashTalkError(f"video {name} must be an integer in [16, 4096] pixels; got {value!r}")
        if audio_rate is not None:
            _check_rate(audio_rate, "audio_rate")
        self.engine, self.width, self.height, self.audio_rate = engine, width, height, audio_rate
        self._max_ahead = int(max_ahead_s * FPS)
        self._segments: collections.deque[_Segment] = collections.deque()
        self._awaiting_end: collections.deque[_Segment] = collections.deque()  # ended, engine "end" not seen
        self._out: collections.deque = collections.deque()
        self._wakeup = asyncio.Event()  # output appended outside the engine (end(), clear())
        self._drained = asyncio.Event()  # frames came out (push() may be waiting)
        self._next: asyncio.Future | None = None
        self.stats = AvatarStats()
        self._last_index: int | None = None  # engine index of the latest frame
        self._started = False
        self._start_lock = asyncio.Lock()
        self.closed = False

    async def start(self) -> None:
        async with self._start_lock:
            if not self._started:
                await self.engine.start()
                self._started = True

    # ---- audio in -----------------------------------------------------------------------------
    async def push(self, samples: np.ndarray, rate: int) -> None:
        """Audio of the current utterance (a new one starts after end() or clear())."""
        _check_rate(rate, "sample rate")
        x = to_float(samples)
        await self.start()
        seg = self._open_segment()
        y16 = seg.feed(x, rate)
        for _ in range(int(STALL_S / 0.5)):  # wait while the engine is far behind
            if self.closed or self._ahead() <= self._max_ahead:
                break
            self._drained.clear()
            try:
                await asyncio.wait_for(self._drained.wait(), 0.5)
            except asyncio.TimeoutError:
                pass
        else:
            raise FlashTalkError(
                f"no frame came out for {STALL_S:g} s while {self._ahead() / FPS:.1f} s of audio "
                "waited: is the stream being iterated?"
            )
        if self.closed or seg not in self._segments:
            return  # closed, or cleared while waiting
        if len(y16):
            seg.n16 += len(y16)
            await self.engine.push(y16)

    async def end(self) -> None:
        """End of the utterance: its last partial frame is rendered, then SegmentEnd comes out."""
        await self.start()
        seg = self._open_segment()
        tail16 = seg.flush()
        seg.n16 += len(tail16)
        seg.ended = True
        self._awaiting_end.append(seg)
        if len(tail16):
            await self.engine.push(tail16)
        await self.engine.end()
        self._settle()

    async def clear(self) -> None:
        """Drop the current utterance and everything queued: the next frame out is idle (or new speech)."""
        self._segments.clear()
        self._awaiting_end.clear()
        self._out.clear()
        self._drained.set()
        if self._started:
            await self.engine.interrupt()
        self._wakeup.set()

    @property
    def pending(self) -> bool:
        """Speech pushed whose frames (or SegmentEnd) have not all been handed out yet."""
        return bool(self._segments or self._out)

    def _open_segment(self) -> _Segment:
        if not self._segments or self._segments[-1].ended:
            self._segments.append(_Segment(self.audio_rate))
        return self._segments[-1]

    def _ahead(self) -> int:
        return sum(-(-s.n16 // HOP) - s.frames for s in self._segments)

    # ---- frames out ---------------------------------------------------------------------------
    def __aiter__(self) -> "AvatarStream":
        return self

    async def __anext__(self) -> AvatarFrame | AudioTail | SegmentEnd:
        await self.start()
        while True:
            if self._out:
                return self._out.popleft()
            if self.closed:
                raise StopAsyncIteration
            if self._next is None:
                self._next = asyncio.ensure_future(self.engine.next())
            waiter = asyncio.ensure_future(self._wakeup.wait())
            try:
                done, _ = await asyncio.wait({self._next, waiter}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiter.cancel()
            self._wakeup.clear()
            if self._next in done:
                future, self._next = self._next, None
                item = future.result()
                if item is None:
                    self.closed = True
                else:
                    self._take(item)

    def _take(self, item: EngineFrame | EngineEvent) -> None:
        if item.epoch < self.engine.epoch:
            self.stats.stale += 1
            return  # on its way before the last clear()
        if isinstance(item, EngineEvent):
            if item.kind == "end" and self._awaiting_end:
                seg = self._awaiting_end.popleft()
                if seg in self._segments and not seg.complete:  # frames of it were dropped on the way
                    seg.frames = seg.total
                    self._settle()
            return
        image = self._resize(item.image)
        gap = 0 if self._last_index is None else item.index - self._last_index - 1  # frames that never came
        self._last_index = item.index
        seg = next((s for s in self._segments if not s.ended or s.frames < s.total), None)
        if item.idle or seg is None:
            self.stats.idle_frames += item.idle
            self.stats.unmatched += not item.idle
            self._out.append(
                AvatarFrame(item.index, item.pts, image, np.zeros(0, np.int16), self._rate(seg), item.idle)
            )
            return
        if gap > 0 and seg.frames > 0:
            # frames of this utterance were dropped on the way (a late or backlogged engine): their audio
            # goes out with this frame, so the audio stays whole and in step with the video
            skip = max(0, min(gap, (seg.total if seg.ended else seg.n16 // HOP) - seg.frames - 1))
            seg.frames += skip
            self.stats.dropped += skip
        j = seg.frames
        last = seg.ended and j + 1 >= seg.total
        audio = seg.take(None if last else int(math.floor((j + 1) * seg.out_rate / FPS + 0.5)))
        seg.frames += 1
        self.stats.speech_frames += 1
        self._out.append(AvatarFrame(item.index, item.pts, image, audio, seg.out_rate, False))
        self._drained.set()
        self._settle()

    def _settle(self) -> None:
        """Utterances whose frames are all out: their leftover audio, then SegmentEnd."""
        while self._segments and self._segments[0].complete:
            seg = self._segments.popleft()
            if len(seg.out):
                self._out.append(AudioTail(seg.take(None), seg.out_rate))
            self._out.append(SegmentEnd(seg.frames))
            self._wakeup.set()

    def _rate(self, seg: _Segment | None) -> int:
        return self.audio_rate or (seg.out_rate if seg is not None and seg.out_rate else MODEL_RATE)

    def _resize(self, image: np.ndarray) -> np.ndarray:
        if image.shape[:2] == (self.height, self.width):
            return image
        from PIL import Image

        return np.asarray(Image.fromarray(image).resize((self.width, self.height), Image.BILINEAR))

    async def aclose(self) -> None:
        self.closed = True
        self._drained.set()
        self._wakeup.set()
        if self._next is not None:
            self._next.cancel()
            self._next = None
        if self._started:
            await self.engine.aclose()


def _check_rate(rate: int, name: str) -> None:
    if isinstance(rate, bool) or not isinstance(rate, int) or not 4000 <= rate <= 192000:
        raise FlashTalkError(f"{name} must be an integer in [4000, 192000] Hz; got {rate!r}")


__all__ = ["AudioTail", "AvatarFrame", "AvatarStats", "AvatarStream", "SegmentEnd"]
