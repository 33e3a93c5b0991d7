"""The Pipecat video service inside a real Pipecat pipeline (source -> FlashTalkVideoService -> sink, run by
PipelineWorker / WorkerRunner): TTS audio in, image frames and the re-cut TTS audio out in order and in
number, interruptions, unrelated frames passed through; in process and against a real `flashtalk serve`.
Clips are a few frames long (the CPU preview takes ~0.1-0.3 s a frame)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

pytest.importorskip("pipecat", reason="the Pipecat integration needs pipecat-ai (the 'pipecat' extra)")

from pipecat.frames.frames import (
    EndFrame,
    InterruptionFrame,
    OutputImageRawFrame,
    StartFrame,
    TextFrame,
    TTSAudioRawFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
    UserStartedSpeakingFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.workers.runner import WorkerRunner

from flashtalk.integrations.pipecat import FlashTalkVideoService
from flashtalk.runtime.backends import encode_portrait
from flashtalk.runtime.backends.preview import PreviewBackend
from tests.serve_process import ASSETS, flashtalk_serve

WAIT_S = 60.0


@pytest.fixture(scope="module")
def preview():
    backend = PreviewBackend("cpu")
    return backend, encode_portrait(backend, ASSETS / "portrait.jpg")


def speech(samples: int, rate: int) -> np.ndarray:
    t = np.arange(samples) / rate
    return (9000 * np.sin(2 * np.pi * 260 * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))).astype(np.int16)


def tts_frames(pcm: np.ndarray, rate: int, ms: int = 20) -> list[TTSAudioRawFrame]:
    n = rate * ms // 1000
    return [
        TTSAudioRawFrame(audio=pcm[i : i + n].tobytes(), sample_rate=rate, num_channels=1)
        for i in range(0, len(pcm), n)
    ]


class Source(FrameProcessor):
    """The head of the test pipeline: passes every frame on."""

    async def process_frame(self, frame, direction):
        await super().process_frame(frame, direction)
        await self.push_frame(frame, direction)


class Sink(FrameProcessor):
    """The end of the test pipeline: records every downstream frame, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.frames: list = []
        self.changed = asyncio.Event()

    async def process_frame(self, frame, direction):
        await super().process_frame(frame, direction)
        if direction == FrameDirection.DOWNSTREAM and not isinstance(frame, StartFrame):
            self.frames.append(frame)
            self.changed.set()
        await self.push_frame(frame, direction)

    async def wait_for(self, predicate) -> None:
        for _ in range(10000):
            if predicate(self.frames):
                return
            self.changed.clear()
            await asyncio.wait_for(self.changed.wait(), WAIT_S)
        raise AssertionError("condition never met")


def count(frames, kind) -> int:
    return sum(isinstance(f, kind) for f in frames)


async def run_pipeline(service, script) -> list:
    """Source -> service -> sink; `script(send, sink)` feeds frames and waits on what comes out."""
    source, sink = Source(), Sink()
    worker = PipelineWorker(
        Pipeline([source, service, sink]), cancel_on_idle_timeout=False, enable_rtvi=False, params=PipelineParams()
    )
    started = asyncio.Event()

    @worker.event_handler("on_pipeline_started")
    async def _started(worker, frame):
        started.set()

    async def drive():
        await asyncio.wait_for(started.wait(), WAIT_S)

        async def send(*frames):
            for f in frames:
                await worker.queue_frame(f)

        await script(send, sink)
        await worker.queue_frame(EndFrame())

    runner = WorkerRunner()
    await runner.add_workers(worker)
    await asyncio.wait_for(asyncio.gather(runner.run(), drive()), 4 * WAIT_S)
    return sink.frames


def check_utterance(frames: list, pcm: np.ndarray, rate: int, n_frames: int, size: tuple[int, int]) -> None:
    """n_frames images, each followed by its audio; the audio is the TTS audio, sample for sample."""
    kinds = [type(f) for f in frames]
    assert kinds == [OutputImageRawFrame, TTSAudioRawFrame] * n_frames, [k.__name__ for k in kinds]
    images, audio = frames[0::2], frames[1::2]
    assert all(i.size == size and i.format == "RGB" and len(i.image) == size[0] * size[1] * 3 for i in images)
    assert all(i.sync_with_audio for i in images)
    assert all(a.sample_rate == rate and a.num_channels == 1 for a in audio)
    np.testing.assert_array_equal(np.concatenate([np.frombuffer(a.audio, np.int16) for a in audio]), pcm)
    first, last = (np.frombuffer(images[k].image, np.uint8).astype(int) for k in (0, -1))
    assert np.abs(first - last).mean() > 0.2  # the head moved


def test_tts_audio_in_images_and_retimed_audio_out(preview):
    backend, portrait = preview
    pcm = speech(4800, 24000)  # 0.2 s -> 5 frames of 960 samples at 24 kHz
    service = FlashTalkVideoService.local(portrait, width=256, height=224, backend=backend, idle=False)

    async def script(send, sink):
        await send(
            TTSStartedFrame(),
            *tts_frames(pcm[:2400], 24000),
            TextFrame("unrelated"),
            *tts_frames(pcm[2400:], 24000),
            TTSStoppedFrame(),
        )
        await sink.wait_for(lambda fs: count(fs, TTSStoppedFrame))

    frames = asyncio.run(run_pipeline(service, script))
    assert isinstance(frames[0], TTSStartedFrame) and isinstance(frames[1], TextFrame)  # passed straight on
    assert frames[1].text == "unrelated"
    assert isinstance(frames[-1], EndFrame) and isinstance(frames[-2], TTSStoppedFrame)  # after the last audio
    check_utterance(frames[2:-2], pcm, 24000, 5, (256, 224))


@pytest.mark.parametrize("barge_in", [InterruptionFrame, UserStartedSpeakingFrame])
def test_interruption_drops_the_speech_and_the_next_turn_plays(preview, barge_in):
    backend, portrait = preview
    long, short = speech(48000, 24000), speech(1920, 24000)  # 2 s (50 frames), then 0.08 s (2 frames)
    service = FlashTalkVideoService.local(portrait, backend=backend, idle=False)

    async def script(send, sink):
        await send(*tts_frames(long, 24000))
        await sink.wait_for(lambda fs: count(fs, OutputImageRawFrame) >= 2)
        await send(barge_in())
        await sink.wait_for(lambda fs: count(fs, barge_in))
        await send(*tts_frames(short, 24000), TTSStoppedFrame())
        await sink.wait_for(lambda fs: count(fs, TTSStoppedFrame))

    frames = asyncio.run(run_pipeline(service, script))
    cut = next(i for i, f in enumerate(frames) if isinstance(f, barge_in))
    before, after = frames[:cut], frames[cut + 1 : -2]
    assert 2 <= count(before, OutputImageRawFrame) < 50
    # at most one frame of the old speech was already on its way; then only the new turn, in full
    stale = len(after) - 4
    assert stale in (0, 2), [type(f).__name__ for f in after]
    check_utterance(after[stale:], short, 24000, 2, (512, 512))


def test_remote_engine_through_flashtalk_serve():
    pcm = speech(2880, 48000)  # 0.06 s -> 2 frames: 1920 + 960 samples at 48 kHz
    with flashtalk_serve() as srv:
        service = FlashTalkVideoService.remote(srv.url, portrait_id="demo", idle=False, video="raw")

        async def script(send, sink):
            await send(*tts_frames(pcm, 48000, ms=10), TTSStoppedFrame())
            await sink.wait_for(lambda fs: count(fs, TTSStoppedFrame))

        frames = asyncio.run(run_pipeline(service, script))
    assert isinstance(frames[-2], TTSStoppedFrame)
    check_utterance(frames[:-2], pcm, 48000, 2, (512, 512))
    assert [len(f.audio) // 2 for f in frames[1:-2:2]] == [1920, 960]
