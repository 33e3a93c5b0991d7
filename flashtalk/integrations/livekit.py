"""FlashTalk as a LiveKit Agents avatar (`pip install 'flashtalk[livekit]'`; written against livekit-agents 1.8).

`FlashTalkVideoGenerator` implements LiveKit's `VideoGenerator`: `push_audio(rtc.AudioFrame | AudioSegmentEnd)`,
`clear_buffer()`, and async iteration yielding `rtc.VideoFrame` (RGBA at the options' size), then the
`rtc.AudioFrame` that frame shows (at the options' rate and channels), and `AudioSegmentEnd` after an
utterance's last frame. The agent's audio (24 / 48 kHz, any rate) is resampled to 16 kHz for FlashTalk; the
audio handed back is the agent's own, cut at the frame boundaries, so LiveKit's `AVSynchronizer` plays them
in sync at 25 FPS. It runs on an in-process FlashTalk session (`.local(...)`) or a FlashTalk server
(`.remote(...)`, through `flashtalk.client`).

The two LiveKit patterns:

    # 1. in process: the agent's audio output is a queue that feeds an AvatarRunner in this process
    gen = FlashTalkVideoGenerator.local("face.jpg")
    runner = await start_in_process_avatar(agent_session, ctx.room, gen)

    # 2. remote avatar worker: the agent sends its audio over a LiveKit data stream ...
    send_agent_audio_to_avatar(agent_session, ctx.room, avatar_identity="flashtalk-avatar")
    # ... to a worker that joined the room as "flashtalk-avatar" and publishes the synced tracks
    gen = FlashTalkVideoGenerator.remote("ws://gpu-box:8000/ws", token=T, portrait="face.jpg")
    runner = await run_avatar_worker(avatar_room, gen)
"""

from __future__ import annotations

import collections
from pathlib import Path
from typing import Any

import numpy as np

try:
    from livekit import rtc
    from livekit.agents.voice.avatar import (
        AudioSegmentEnd,
        AvatarOptions,
        AvatarRunner,
        DataStreamAudioOutput,
        DataStreamAudioReceiver,
        QueueAudioOutput,
        VideoGenerator,
    )
except ModuleNotFoundError as exc:
    if (exc.name or "").split(".")[0] != "livekit":
        raise
    raise ImportError("flashtalk.integrations.livekit needs livekit-agents: pip install 'flashtalk[livekit]'") from None

from flashtalk.errors import FlashTalkError
from flashtalk.integrations.avatar import FPS, AudioTail, AvatarFrame, AvatarStream, SegmentEnd
from flashtalk.integrations.engines import LocalEngine, RemoteEngine

DEFAULT_OPTIONS = AvatarOptions(
    video_width=512, video_height=512, video_fps=FPS, audio_sample_rate=48000, audio_channels=1
)


class FlashTalkVideoGenerator(VideoGenerator):
    """LiveKit `VideoGenerator` over a FlashTalk engine (see the module docstring)."""

    def __init__(self, engine: LocalEngine | RemoteEngine, options: AvatarOptions = DEFAULT_OPTIONS) -> None:
        if options.video_fps != FPS:
            raise FlashTalkError(
                f"AvatarOptions.video_fps must be {FPS} (FlashTalk's frame rate); got {options.video_fps}"
            )
        if options.audio_channels not in (1, 2):
            raise FlashTalkError(f"AvatarOptions.audio_channels must be 1 or 2; got {options.audio_channels}")
        self.options = options
        self.stream = AvatarStream(
            engine, width=options.video_width, height=options.video_height, audio_rate=options.audio_sample_rate
        )
        self._pending: collections.deque = collections.deque()

    @classmethod
    def local(cls, portrait: Any, options: AvatarOptions = DEFAULT_OPTIONS, **engine: Any) -> "FlashTalkVideoGenerator":
        """In-process FlashTalk; `engine` goes to `LocalEngine` (backend, device, scheduler, seed, controls,
        idle, latency, watermark)."""
        return cls(LocalEngine(portrait, **engine), options)

    @classmethod
    def remote(
        cls,
        url: str,
        options: AvatarOptions = DEFAULT_OPTIONS,
        *,
        token: str | None = None,
        portrait: str | Path | bytes | None = None,
        portrait_id: str | None = None,
        **engine: Any,
    ) -> "FlashTalkVideoGenerator":
        """A FlashTalk server; `engine` goes to `RemoteEngine` (seed, controls, idle, latency, video, pace,
        options)."""
        return cls(RemoteEngine(url, token=token, portrait=portrait, portrait_id=portrait_id, **engine), options)

    async def start(self) -> None:
        """Open the session now (otherwise the first push_audio or iteration does)."""
        await self.stream.start()

    async def push_audio(self, frame: rtc.AudioFrame | AudioSegmentEnd) -> None:
        if isinstance(frame, AudioSegmentEnd):
            await self.stream.end()
            return
        pcm = np.frombuffer(frame.data, np.int16)
        if frame.num_channels > 1:
            pcm = pcm.reshape(-1, frame.num_channels).astype(np.float32).mean(axis=1) / 32768.0
        await self.stream.push(pcm, frame.sample_rate)

    async def clear_buffer(self) -> None:
        """Barge-in: drop the speech now; the next frames are idle."""
        self._pending.clear()
        await self.stream.clear()

    def __aiter__(self) -> "FlashTalkVideoGenerator":
        return self

    async def __anext__(self) -> rtc.VideoFrame | rtc.AudioFrame | AudioSegmentEnd:
        while not self._pending:
            self._pending.extend(self._convert(await self.stream.__anext__()))
        return self._pending.popleft()

    async def aclose(self) -> None:
        self._pending.clear()
        await self.stream.aclose()

    def _convert(self, item: AvatarFrame | AudioTail | SegmentEnd) -> list:
        if isinstance(item, SegmentEnd):
            return [AudioSegmentEnd()]
        out = []
        if isinstance(item, AvatarFrame):
            h, w = item.image.shape[:2]
            rgba = np.empty((h, w, 4), np.uint8)
            rgba[..., :3] = item.image
            rgba[..., 3] = 255
            out.append(rtc.VideoFrame(w, h, rtc.VideoBufferType.RGBA, rgba.tobytes()))
        if len(item.audio):
            audio = item.audio if self.options.audio_channels == 1 else np.repeat(item.audio, 2)
            out.append(
                rtc.AudioFrame(
                    data=audio.tobytes(),
                    sample_rate=item.audio_rate,
                    num_channels=self.options.audio_channels,
                    samples_per_channel=len(item.audio),
                )
            )
        return out


def _route_agent_audio(agent_session: Any, sink: Any) -> None:
    """Make `sink` the agent's audio output, keeping wrappers such as the transcript synchroniser."""
    output = agent_session.output
    if hasattr(output, "replace_audio_tail"):
        output.replace_audio_tail(sink)
    else:
        output.audio = sink


async def start_in_process_avatar(
    agent_session: Any, room: rtc.Room, video_gen: FlashTalkVideoGenerator, **runner: Any
) -> AvatarRunner:
    """In-process pattern: the agent's audio output becomes a `QueueAudioOutput` that an `AvatarRunner` in
    this process reads; the runner publishes the avatar's audio and video tracks as this participant.
    Call before `agent_session.start(...)`; `aclose()` the runner at the end of the job."""
    audio = QueueAudioOutput(sample_rate=video_gen.options.audio_sample_rate)
    _route_agent_audio(agent_session, audio)
    avatar = AvatarRunner(room, audio_recv=audio, video_gen=video_gen, options=video_gen.options, **runner)
    await video_gen.start()
    await avatar.start()
    return avatar


def send_agent_audio_to_avatar(
    agent_session: Any, room: rtc.Room, avatar_identity: str, *, sample_rate: int | None = None, **output: Any
) -> DataStreamAudioOutput:
    """Agent side of the remote pattern: the agent's audio goes over a LiveKit data stream to the avatar
    worker participant `avatar_identity` (waiting until it publishes its video track)."""
    sink = DataStreamAudioOutput(
        room,
        destination_identity=avatar_identity,
        sample_rate=sample_rate,
        wait_remote_track=output.pop("wait_remote_track", rtc.TrackKind.KIND_VIDEO),
        **output,
    )
    _route_agent_audio(agent_session, sink)
    return sink


async def run_avatar_worker(
    room: rtc.Room, video_gen: FlashTalkVideoGenerator, *, sender_identity: str | None = None, **runner: Any
) -> AvatarRunner:
    """Avatar-worker side of the remote pattern, in a room this worker joined as its own participant: a
    `DataStreamAudioReceiver` takes the agent's audio (from `sender_identity`, or the first agent
    participant) into an `AvatarRunner` that publishes the synced tracks. Wait on
    `runner.wait_for_complete()`; `aclose()` it at the end."""
    receiver = DataStreamAudioReceiver(room, sender_identity=sender_identity)
    avatar = AvatarRunner(room, audio_recv=receiver, video_gen=video_gen, options=video_gen.options, **runner)
    await video_gen.start()
    await avatar.start()
    return avatar


def avatar_options(
    width: int = 512, height: int = 512, audio_sample_rate: int = 48000, audio_channels: int = 1
) -> AvatarOptions:
    """`AvatarOptions` at FlashTalk's 25 FPS."""
    return AvatarOptions(
        video_width=width,
        video_height=height,
        video_fps=FPS,
        audio_sample_rate=audio_sample_rate,
        audio_channels=audio_channels,
    )


__all__ = [
    "FlashTalkVideoGenerator",
    "avatar_options",
    "run_avatar_worker",
    "send_agent_audio_to_avatar",
    "start_in_process_avatar",
]
