"""The LiveKit Agents avatar, driven with the real `livekit.rtc` frame types and livekit-agents' own
QueueAudioOutput / AvatarRunner / AVSynchronizer (weights-free preview, CPU), in process and once over a
real `flashtalk serve` on loopback.

Boundary: nothing here connects to a LiveKit server. The generator is tested directly; the in-process
pattern runs the real AgentSession output chain, AvatarRunner, AVSynchronizer, AudioSource and VideoSource
with a stand-in `Room` that only records the tracks AvatarRunner publishes (publishing into a real room,
and the data-stream transport of the remote-worker pattern, need a LiveKit server and are not run here).
Clips are a few frames long: the CPU preview takes ~0.1-0.3 s a frame."""

from __future__ import annotations

import asyncio
import dataclasses

import numpy as np
import pytest

pytest.importorskip("livekit.agents", reason="the LiveKit integration needs livekit-agents (the 'livekit' extra)")

from livekit import rtc
from livekit.agents import AgentSession
from livekit.agents.voice.avatar import AudioSegmentEnd

from flashtalk.integrations.livekit import FlashTalkVideoGenerator, avatar_options, start_in_process_avatar
from flashtalk.runtime.backends import encode_portrait
from flashtalk.runtime.backends.preview import PreviewBackend
from tests.serve_process import ASSETS

WAIT_S = 60.0


@pytest.fixture(scope="module")
def preview():
    backend = PreviewBackend("cpu")
    return backend, encode_portrait(backend, ASSETS / "portrait.jpg")


def speech(samples: int, rate: int, freq: float = 300.0) -> np.ndarray:
    t = np.arange(samples) / rate
    return (9000 * np.sin(2 * np.pi * freq * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))).astype(np.int16)


def audio_frames(pcm: np.ndarray, rate: int, ms: int = 10) -> list[rtc.AudioFrame]:
    n = rate * ms // 1000
    return [
        rtc.AudioFrame(
            data=pcm[i : i + n].tobytes(), sample_rate=rate, num_channels=1, samples_per_channel=len(pcm[i : i + n])
        )
        for i in range(0, len(pcm), n)
    ]


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 4 * WAIT_S))


async def until_segment_end(gen) -> list:
    out = []
    for _ in range(1000):
        item = await asyncio.wait_for(gen.__anext__(), WAIT_S)
        out.append(item)
        if isinstance(item, AudioSegmentEnd):
            return out
    raise AssertionError("no AudioSegmentEnd")


def test_48khz_in_frames_at_size_and_the_same_audio_out(preview):
    backend, portrait = preview
    pcm = speech(10080, 48000)  # 0.21 s: 3360 samples at 16 kHz -> 5 whole frames and a partial 6th

    async def main():
        gen = FlashTalkVideoGenerator.local(portrait, avatar_options(320, 240, 48000), backend=backend, idle=False)
        try:
            for f in audio_frames(pcm, 48000):
                await gen.push_audio(f)
            await gen.push_audio(AudioSegmentEnd())
            return await until_segment_end(gen)
        finally:
            await gen.aclose()

    items = run(main())
    kinds = [type(x).__name__ for x in items]
    assert kinds == ["VideoFrame", "AudioFrame"] * 6 + ["AudioSegmentEnd"]  # the flush gave the 6th frame
    video, audio = items[0:12:2], items[1:12:2]
    assert all((v.width, v.height, v.type) == (320, 240, rtc.VideoBufferType.RGBA) for v in video)
    assert all((a.sample_rate, a.num_channels) == (48000, 1) for a in audio)
    assert [a.samples_per_channel for a in audio] == [1920] * 5 + [480]  # 40 ms each at 48 kHz, then the rest
    out = np.concatenate([np.frombuffer(a.data, np.int16) for a in audio])
    np.testing.assert_array_equal(out, pcm)  # the agent's own audio, cut at the frame boundaries
    rgba = np.frombuffer(video[2].data, np.uint8).reshape(240, 320, 4)
    assert (rgba[..., 3] == 255).all() and rgba[..., :3].std() > 10  # an opaque picture, not a blank frame
    first = np.frombuffer(video[0].data, np.uint8).astype(int)
    assert np.abs(first - np.frombuffer(video[-1].data, np.uint8)).mean() > 0.2  # the head moved


def test_24khz_agent_audio_is_resampled_for_a_48khz_room(preview):
    backend, portrait = preview
    pcm = speech(3840, 24000, freq=750.0)  # 0.16 s: 4 frames

    async def main():
        gen = FlashTalkVideoGenerator.local(portrait, avatar_options(256, 256, 48000), backend=backend, idle=False)
        try:
            for f in audio_frames(pcm, 24000, ms=20):
                await gen.push_audio(f)
            await gen.push_audio(AudioSegmentEnd())
            return await until_segment_end(gen)
        finally:
            await gen.aclose()

    items = run(main())
    audio = [x for x in items if isinstance(x, rtc.AudioFrame)]
    assert sum(isinstance(x, rtc.VideoFrame) for x in items) == 4
    out = np.concatenate([np.frombuffer(a.data, np.int16) for a in audio]).astype(np.float64)
    assert len(out) == 2 * len(pcm) and all(a.sample_rate == 48000 for a in audio)
    spectrum = np.abs(np.fft.rfft(out))
    assert np.argmax(spectrum) == round(750.0 * len(out) / 48000)  # the same tone, now at 48 kHz


def test_clear_buffer_stops_speech_within_a_frame_and_goes_idle(preview):
    backend, portrait = preview
    pcm = speech(96000, 48000)  # 2 s: far more than plays before the barge-in

    async def main():
        gen = FlashTalkVideoGenerator.local(portrait, avatar_options(256, 256, 48000), backend=backend, idle=True)
        try:
            for f in audio_frames(pcm, 48000, ms=20):
                await gen.push_audio(f)
            before = []
            while sum(isinstance(x, rtc.AudioFrame) for x in before) < 2:
                before.append(await asyncio.wait_for(gen.__anext__(), WAIT_S))
            await gen.clear_buffer()
            stats = dataclasses.replace(gen.stream.stats)
            after = []
            while sum(isinstance(x, rtc.VideoFrame) for x in after) < 3:
                after.append(await asyncio.wait_for(gen.__anext__(), WAIT_S))
            # back to normal: a new utterance plays in full
            for f in audio_frames(speech(1920, 48000), 48000):
                await gen.push_audio(f)
            await gen.push_audio(AudioSegmentEnd())
            idle_after = gen.stream.stats.idle_frames - stats.idle_frames
            unmatched = gen.stream.stats.unmatched
            again = await until_segment_end(gen)
            return after, idle_after, unmatched, again
        finally:
            await gen.aclose()

    after, idle_after, unmatched, again = run(main())
    speech_after = sum(isinstance(x, rtc.AudioFrame) for x in after)
    assert speech_after <= 1  # at most the frame already on its way
    assert idle_after >= 2 and unmatched == 0  # the engine itself went idle (the old speech is not rendered)
    assert isinstance(after[-1], rtc.VideoFrame) and isinstance(after[-2], rtc.VideoFrame)  # idle: video only
    assert not any(isinstance(x, AudioSegmentEnd) for x in after)  # the cleared utterance is not "finished"
    new_audio = [x for x in again if isinstance(x, rtc.AudioFrame)]
    assert sum(a.samples_per_channel for a in new_audio) == 1920


class _Publication:
    async def wait_for_subscription(self) -> None:
        return None


class _LocalParticipant:
    def __init__(self) -> None:
        self.published: list = []

    async def publish_track(self, track, options):
        self.published.append(track)
        return _Publication()


class StandInRoom:
    """The Room boundary: a connected room that records what AvatarRunner publishes."""

    def __init__(self) -> None:
        self.local_participant = _LocalParticipant()

    def on(self, *_) -> None:
        pass

    def off(self, *_) -> None:
        pass

    def isconnected(self) -> bool:
        return True


def test_in_process_pattern_through_avatar_runner(preview):
    backend, portrait = preview
    pcm = speech(9600, 48000)  # 0.2 s: 5 frames

    async def main():
        room, agent = StandInRoom(), AgentSession()
        gen = FlashTalkVideoGenerator.local(portrait, avatar_options(256, 256, 48000), backend=backend, idle=False)
        runner = await start_in_process_avatar(agent, room, gen)
        pushed = []
        push = runner.av_sync.push

        async def record(frame, timestamp=None):
            pushed.append(frame)
            await push(frame, timestamp)

        runner.av_sync.push = record
        finished = []
        queue = agent.output.audio  # what the agent's TTS audio now goes into
        queue.on("playback_finished", finished.append)
        try:
            for f in audio_frames(pcm, 48000):
                await queue.capture_frame(f)
            queue.flush()
            for _ in range(int(WAIT_S * 10)):
                if finished:
                    break
                await asyncio.sleep(0.1)
            return room, pushed, finished
        finally:
            await runner.aclose()
            await gen.aclose()

    room, pushed, finished = run(main())
    assert [t.name for t in room.local_participant.published] == ["avatar_audio", "avatar_video"]
    assert [type(x).__name__ for x in pushed] == ["VideoFrame", "AudioFrame"] * 5
    out = np.concatenate([np.frombuffer(x.data, np.int16) for x in pushed if isinstance(x, rtc.AudioFrame)])
    np.testing.assert_array_equal(out, pcm)
    assert len(finished) == 1 and not finished[0].interrupted
    assert finished[0].playback_position == pytest.approx(0.2)


def test_options_fps_must_be_25(preview):
    backend, portrait = preview
    from livekit.agents.voice.avatar import AvatarOptions

    from flashtalk.errors import FlashTalkError

    bad = AvatarOptions(video_width=512, video_height=512, video_fps=30, audio_sample_rate=48000, audio_channels=1)
    with pytest.raises(FlashTalkError, match="video_fps must be 25"):
        FlashTalkVideoGenerator.local(portrait, bad, backend=backend)


def test_latency_is_handed_to_the_in_process_session(preview):
    from flashtalk.integrations.engines import LocalEngine

    backend, portrait = preview
    engine = LocalEngine(portrait, backend=backend, latency="bogus")
    with pytest.raises(ValueError, match="latency"):  # refused by the Session (or: this Session has no such option)
        run(engine.start())
    run(engine.aclose())


def test_remote_generator_over_flashtalk_serve():
    from tests.serve_process import flashtalk_serve

    pcm = speech(4800, 48000)  # 0.1 s: 2 whole frames and a partial third

    async def main(url):
        gen = FlashTalkVideoGenerator.remote(url, avatar_options(256, 256, 48000), portrait_id="demo", idle=False)
        try:
            for f in audio_frames(pcm, 48000):
                await gen.push_audio(f)
            await gen.push_audio(AudioSegmentEnd())
            return await until_segment_end(gen)
        finally:
            await gen.aclose()

    with flashtalk_serve() as srv:
        items = run(main(srv.url))
    assert [type(x).__name__ for x in items] == ["VideoFrame", "AudioFrame"] * 3 + ["AudioSegmentEnd"]
    assert all((v.width, v.height) == (256, 256) for v in items[0:6:2])
    audio = [np.frombuffer(a.data, np.int16) for a in items[1:6:2]]
    assert [len(a) for a in audio] == [1920, 1920, 960]
    np.testing.assert_array_equal(np.concatenate(audio), pcm)
