"""A Pipecat/LiveKit-style adapter: PCM audio frames in, timestamped video frames out, in-process.

Voice-agent frameworks hand a video "avatar" processor raw PCM (16-bit, some rate, some chunk size) as the
bot speaks, and expect RGB frames with timestamps back. `TalkingHeadProcessor` does that over the FlashTalk
runtime (Session + Scheduler, weights-free preview backend) with no dependency beyond FlashTalk:

    avatar = TalkingHeadProcessor("face.jpg", sample_rate=24000)
    await avatar.push_audio(pcm_bytes)          # as TTS audio arrives
    await avatar.end_of_speech()                # bot finished its turn
    await avatar.interrupt()                    # user barged in
    async for frame in avatar.frames():         # Frame: .image uint8 [512, 512, 3], .pts seconds, .audio
        publish(frame)                          # e.g. to a LiveKit VideoSource / Pipecat OutputImageRawFrame

Run it: `python examples/pcm_adapter.py` streams the bundled speech and prints frame timing.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import AsyncIterator

from flashtalk.runtime.scheduler import Scheduler
from flashtalk.runtime.session import Event, Frame, PreviewStreamingBackend, Session, encode_portrait


class TalkingHeadProcessor:
    def __init__(self, portrait, *, sample_rate: int = 16000, device: str | None = None, seed: int = 0) -> None:
        backend = PreviewStreamingBackend(device)
        self._scheduler = Scheduler(backend, max_sessions=1)
        self._ready = asyncio.Event()
        loop = asyncio.get_running_loop()
        self.session = Session(backend, encode_portrait(backend, portrait), sample_rate=sample_rate, seed=seed,
                               on_output=lambda: loop.call_soon_threadsafe(self._ready.set))
        self._scheduler.admit(self.session)
        self._scheduler.start()

    async def push_audio(self, pcm: bytes) -> None:
        self.session.push_audio(pcm)  # 16-bit little-endian mono at sample_rate
        self._scheduler.wake()

    async def end_of_speech(self) -> None:
        self.session.end_speech()
        self._scheduler.wake()

    async def interrupt(self) -> None:
        self.session.interrupt()
        self._scheduler.wake()

    async def frames(self) -> AsyncIterator[Frame | Event]:
        while not self.session.closed:
            await self._ready.wait()
            self._ready.clear()
            for item in self.session.poll():
                yield item

    def close(self) -> None:
        self._scheduler.release(self.session)
        self._scheduler.stop()


async def _demo() -> None:
    from flashtalk.audio import load_audio

    assets = Path(__file__).resolve().parents[1] / "flashtalk" / "assets"
    clip = load_audio(assets / "speech.ogg", target_rate=16000)
    pcm = (clip.samples[:16000 * 2] * 32767).astype("<i2").tobytes()
    avatar = TalkingHeadProcessor(assets / "portrait.jpg")
    for i in range(0, len(pcm), 1280):  # 40-ms chunks, as a TTS stream would send them
        await avatar.push_audio(pcm[i:i + 1280])
    await avatar.end_of_speech()
    async for item in avatar.frames():
        if isinstance(item, Event):
            print(f"{item.kind}: {item.frames} frames")
            break
        if item.index % 10 == 0:
            print(f"frame {item.index} pts {item.pts:.2f} s, latency {item.latency_s * 1000:.0f} ms")
    avatar.close()


if __name__ == "__main__":
    asyncio.run(_demo())
