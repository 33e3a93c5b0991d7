"""FlashTalk as a Pipecat video service (`pip install 'flashtalk[pipecat]'`; written against pipecat-ai 1.14).

Place `FlashTalkVideoService` after the TTS service, before the output transport:

    avatar = FlashTalkVideoService.local("face.jpg")                        # in process
    avatar = FlashTalkVideoService.remote("ws://gpu-box:8000/ws", token=T, portrait="face.jpg")
    pipeline = Pipeline([transport.input(), stt, user_agg, llm, tts, avatar, transport.output(), bot_agg])

It consumes `TTSAudioRawFrame`s and emits, per video frame, an `OutputImageRawFrame` (RGB at the size asked
for, `sync_with_audio` set so the transport shows it when its audio starts) followed by the TTS audio that
frame shows, re-cut at the frame boundaries as `TTSAudioRawFrame`s at the TTS rate. A `TTSStoppedFrame`
ends the utterance (its last partial frame is rendered) and is passed on after that utterance's last
audio. `InterruptionFrame` and `UserStartedSpeakingFrame` drop the current speech at once (the avatar
goes idle) and are passed on. Every other frame passes through unchanged. `EndFrame` waits (bounded) for
the speech already queued to come out; `CancelFrame` does not.
"""

from __future__ import annotations

import asyncio
import collections
from pathlib import Path
from typing import Any

import numpy as np

try:
    from pipecat.frames.frames import (
        CancelFrame,
        EndFrame,
        Frame,
        InterruptionFrame,
        OutputImageRawFrame,
        StartFrame,
        TTSAudioRawFrame,
        TTSStoppedFrame,
        UserStartedSpeakingFrame,
    )
    from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
except ModuleNotFoundError as exc:
    if (exc.name or "").split(".")[0] != "pipecat":
        raise
    raise ImportError("flashtalk.integrations.pipecat needs pipecat-ai: pip install 'flashtalk[pipecat]'") from None

from flashtalk.errors import FlashTalkError
from flashtalk.integrations.avatar import AudioTail, AvatarFrame, AvatarStream, SegmentEnd
from flashtalk.integrations.engines import LocalEngine, RemoteEngine

END_DRAIN_S = 30.0  # most an EndFrame waits for queued speech to come out


class FlashTalkVideoService(FrameProcessor):
    """Pipecat frame processor over a FlashTalk engine (see the module docstring)."""

    def __init__(
        self,
        engine: LocalEngine | RemoteEngine,
        *,
        width: int = 512,
        height: int = 512,
        audio_rate: int | None = None,
        end_drain_s: float = END_DRAIN_S,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.stream = AvatarStream(engine, width=width, height=height, audio_rate=audio_rate)
        self._end_drain_s = end_drain_s
        self._stops: collections.deque[TTSStoppedFrame] = collections.deque()  # passed on at SegmentEnd
        self._pump: asyncio.Task | None = None

    @classmethod
    def local(
        cls, portrait: Any, *, width: int = 512, height: int = 512, audio_rate: int | None = None, **engine: Any
    ) -> "FlashTalkVideoService":
        """In-process FlashTalk; `engine` goes to `LocalEngine` (backend, device, scheduler, seed, controls,
        idle, latency, watermark)."""
        return cls(LocalEngine(portrait, **engine), width=width, height=height, audio_rate=audio_rate)

    @classmethod
    def remote(
        cls,
        url: str,
        *,
        token: str | None = None,
        portrait: str | Path | bytes | None = None,
        portrait_id: str | None = None,
        width: int = 512,
        height: int = 512,
        audio_rate: int | None = None,
        **engine: Any,
    ) -> "FlashTalkVideoService":
        """A FlashTalk server; `engine` goes to `RemoteEngine` (seed, controls, idle, latency, video, pace)."""
        return cls(
            RemoteEngine(url, token=token, portrait=portrait, portrait_id=portrait_id, **engine),
            width=width,
            height=height,
            audio_rate=audio_rate,
        )

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, StartFrame):
            await self.stream.start()
            self._pump = self.create_task(self._pump_frames())
        elif isinstance(frame, TTSAudioRawFrame) and direction == FrameDirection.DOWNSTREAM:
            pcm = np.frombuffer(frame.audio, np.int16)
            if frame.num_channels > 1:
                pcm = pcm.reshape(-1, frame.num_channels).astype(np.float32).mean(axis=1) / 32768.0
            await self.stream.push(pcm, frame.sample_rate)
            return  # consumed: it comes out again, re-cut, with its video frames
        elif isinstance(frame, TTSStoppedFrame) and direction == FrameDirection.DOWNSTREAM:
            self._stops.append(frame)
            await self.stream.end()
            return  # passed on after the utterance's last frame
        elif isinstance(frame, (InterruptionFrame, UserStartedSpeakingFrame)):
            self._stops.clear()
            await self.stream.clear()
        elif isinstance(frame, EndFrame):
            await self._drain()
            await self._stop()
        elif isinstance(frame, CancelFrame):
            await self._stop()
        await self.push_frame(frame, direction)

    async def _pump_frames(self) -> None:
        try:
            await self._forward()
        except FlashTalkError as exc:  # e.g. the server went away: say so upstream, once
            await self.push_error(error_msg=f"FlashTalk: {exc}", exception=exc)

    async def _forward(self) -> None:
        async for item in self.stream:
            if isinstance(item, AvatarFrame):
                h, w = item.image.shape[:2]
                image = OutputImageRawFrame(image=item.image.tobytes(), size=(w, h), format="RGB")
                image.sync_with_audio = True
                await self.push_frame(image)
            if isinstance(item, (AvatarFrame, AudioTail)) and len(item.audio):
                await self.push_frame(
                    TTSAudioRawFrame(audio=item.audio.tobytes(), sample_rate=item.audio_rate, num_channels=1)
                )
            elif isinstance(item, SegmentEnd) and self._stops:
                await self.push_frame(self._stops.popleft())

    async def _drain(self) -> None:
        for _ in range(int(self._end_drain_s / 0.02)):
            if not self.stream.pending and not self._stops:
                return
            await asyncio.sleep(0.02)

    async def _stop(self) -> None:
        await self.stream.aclose()
        if self._pump is not None:
            await self.cancel_task(self._pump)
            self._pump = None

    async def cleanup(self) -> None:
        await super().cleanup()
        await self._stop()


__all__ = ["FlashTalkVideoService"]
