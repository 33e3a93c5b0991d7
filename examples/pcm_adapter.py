"""A Pipecat/LiveKit-style adapter over a FlashTalk server: PCM audio frames in, timestamped video frames out.

Voice-agent frameworks hand a video "avatar" processor raw PCM (16-bit, some rate, some chunk size) as the
bot speaks, and expect RGB frames with timestamps back. `TalkingHeadProcessor` does that with
`flashtalk.client` (`pip install 'flashtalk[client]'`) against `flashtalk serve` (for LiveKit and Pipecat
themselves, see `flashtalk.integrations` and the two `*_avatar.py` examples):

    avatar = await TalkingHeadProcessor.open("ws://127.0.0.1:8000/ws", "face.jpg", sample_rate=24000)
    await avatar.push_audio(pcm_bytes)          # as TTS audio arrives
    await avatar.end_of_speech()                # bot finished its turn
    await avatar.interrupt()                    # user barged in
    async for frame in avatar.frames():         # client.Frame: .rgb() uint8 [512, 512, 3], .pts, .samples()
        publish(frame)

Run it: start `flashtalk serve`, then `python examples/pcm_adapter.py [--url URL] [--token T]` streams the
bundled speech and prints frame timing.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

from flashtalk import client


class TalkingHeadProcessor:
    def __init__(self, stream: client.Stream) -> None:
        self.stream = stream

    @classmethod
    async def open(
        cls, url: str, portrait, *, sample_rate: int = 16000, token: str | None = None, seed: int = 0
    ) -> "TalkingHeadProcessor":
        return cls(
            await client.connect(
                url, token=token, portrait=portrait, sample_rate=sample_rate, seed=seed, pace="realtime", idle=True
            )
        )

    async def push_audio(self, pcm: bytes) -> None:
        await self.stream.send_audio(pcm)  # 16-bit little-endian mono at sample_rate

    async def end_of_speech(self) -> None:
        await self.stream.end()

    async def interrupt(self) -> None:
        await self.stream.interrupt()

    async def frames(self) -> AsyncIterator[client.Frame | client.Event]:
        async for item in self.stream:
            yield item

    async def close(self) -> None:
        await self.stream.stop()


async def _demo(args) -> None:
    from flashtalk.io.audio import load_audio

    assets = Path(__file__).resolve().parents[1] / "flashtalk" / "assets"
    clip = load_audio(assets / "speech.ogg", target_rate=24000)
    pcm = (clip.samples[: int(24000 * args.seconds)] * 32767).astype("<i2").tobytes()
    avatar = await TalkingHeadProcessor.open(args.url, assets / "portrait.jpg", sample_rate=24000, token=args.token)
    print(
        f"session {avatar.stream.ready.session}: backend {avatar.stream.ready.backend}, "
        f"look-ahead {avatar.stream.ready.lookahead_ms:.0f} ms"
    )
    t0 = time.monotonic()
    for i in range(0, len(pcm), 1920):  # 40-ms chunks at 24 kHz, as a TTS stream would send them
        await avatar.push_audio(pcm[i : i + 1920])
    await avatar.end_of_speech()
    async for item in avatar.frames():
        if isinstance(item, client.Event):
            print(f"{item.type}: {item.frames} frames")
            if item.type == "end":
                break
        elif item.index % 10 == 0:
            print(
                f"frame {item.index} pts {item.pts:.2f} s{' (idle)' if item.idle else ''}, "
                f"received at {time.monotonic() - t0:.2f} s"
            )
    await avatar.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="stream the bundled speech to a FlashTalk server")
    parser.add_argument("--url", default="ws://127.0.0.1:8000/ws")
    parser.add_argument("--token")
    parser.add_argument("--seconds", type=float, default=2.0, help="speech to send (default 2)")
    asyncio.run(_demo(parser.parse_args()))
