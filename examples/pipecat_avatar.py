"""A FlashTalk avatar in a Pipecat pipeline (`pip install 'flashtalk[pipecat]'`).

In a voice agent, put the avatar right after the TTS service:

    avatar = FlashTalkVideoService.local("face.jpg")          # or .remote("ws://gpu-box:8000/ws", token=T, ...)
    pipeline = Pipeline([transport.input(), stt, user_aggregator, llm, tts, avatar, transport.output(),
                         assistant_aggregator])
    # with the transport's video out on: TransportParams(video_out_enabled=True, video_out_is_live=True,
    #                                                    video_out_width=512, video_out_height=512)

Run as is, it needs no services: the bundled speech plays the part of the TTS, and a sink counts what
comes out (and, with --frames-dir, saves the images):

    python examples/pipecat_avatar.py [--url ws://127.0.0.1:8000/ws --token T] [--seconds 2] [--frames-dir out/]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path

import numpy as np
from pipecat.frames.frames import EndFrame, OutputImageRawFrame, TTSAudioRawFrame, TTSStartedFrame, TTSStoppedFrame
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.frame_processor import FrameProcessor
from pipecat.workers.runner import WorkerRunner

from flashtalk.integrations.pipecat import FlashTalkVideoService

ASSETS = Path(__file__).resolve().parents[1] / "flashtalk" / "assets"


class SpeechSource(FrameProcessor):
    """Stands in for a TTS service: passes frames on (the script below queues the speech)."""

    async def process_frame(self, frame, direction):
        await super().process_frame(frame, direction)
        await self.push_frame(frame, direction)


class Counter(FrameProcessor):
    """Stands in for the output transport: counts images and audio, optionally saves the images."""

    def __init__(self, frames_dir: Path | None) -> None:
        super().__init__()
        self.frames_dir, self.images, self.audio_s, self.t0 = frames_dir, 0, 0.0, time.monotonic()
        self.done = asyncio.Event()

    async def process_frame(self, frame, direction):
        await super().process_frame(frame, direction)
        if isinstance(frame, OutputImageRawFrame):
            if self.frames_dir is not None:
                from PIL import Image

                Image.frombytes("RGB", frame.size, frame.image).save(self.frames_dir / f"{self.images:05d}.png")
            self.images += 1
        elif isinstance(frame, TTSAudioRawFrame):
            self.audio_s += frame.num_frames / frame.sample_rate
        elif isinstance(frame, TTSStoppedFrame):
            print(f"{self.images} images and {self.audio_s:.2f} s of audio in {time.monotonic() - self.t0:.1f} s")
            self.done.set()
        await self.push_frame(frame, direction)


async def main(args) -> None:
    from flashtalk.io.audio import load_audio

    if args.url:
        avatar = FlashTalkVideoService.remote(args.url, token=args.token, portrait=ASSETS / "portrait.jpg")
    else:
        avatar = FlashTalkVideoService.local(ASSETS / "portrait.jpg")
    if args.frames_dir:
        Path(args.frames_dir).mkdir(parents=True, exist_ok=True)
    sink = Counter(Path(args.frames_dir) if args.frames_dir else None)
    worker = PipelineWorker(
        Pipeline([SpeechSource(), avatar, sink]),
        params=PipelineParams(),
        cancel_on_idle_timeout=False,
        enable_rtvi=False,
    )
    clip = load_audio(ASSETS / "speech.ogg", target_rate=24000)
    pcm = (clip.samples[: int(24000 * args.seconds)] * 32767).astype(np.int16)

    @worker.event_handler("on_pipeline_started")
    async def speak(worker, frame):
        await worker.queue_frame(TTSStartedFrame())
        for i in range(0, len(pcm), 480):  # 20-ms chunks, as a TTS service sends them
            await worker.queue_frame(
                TTSAudioRawFrame(audio=pcm[i : i + 480].tobytes(), sample_rate=24000, num_channels=1)
            )
        await worker.queue_frame(TTSStoppedFrame())

    async def finish():
        await asyncio.wait_for(sink.done.wait(), 600)
        await worker.queue_frame(EndFrame())

    runner = WorkerRunner()
    await runner.add_workers(worker)
    await asyncio.gather(runner.run(), finish())


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="the bundled speech through a FlashTalk avatar in Pipecat")
    parser.add_argument("--url", help="a FlashTalk server (default: in process, preview backend)")
    parser.add_argument("--token")
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--frames-dir", help="save the images here as PNG")
    asyncio.run(main(parser.parse_args()))
