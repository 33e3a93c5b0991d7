"""`AvatarStream`'s bookkeeping (which pushed audio goes out with which frame) when an engine drops frames,
goes idle mid-stream or lets one utterance's frames overtake the previous one's "end". The engine here is
scripted, because these are the cases a real engine produces only under overload; the real engines are
driven in test_livekit.py, test_pipecat.py and test_client.py."""

from __future__ import annotations

import asyncio

import numpy as np

from flashtalk.integrations.avatar import AudioTail, AvatarFrame, AvatarStream, SegmentEnd
from flashtalk.integrations.engines import EngineEvent, EngineFrame


class ScriptedEngine:
    """Gives exactly the frames and events the test queues; records the 16-kHz audio pushed."""

    def __init__(self) -> None:
        self.epoch = 0
        self.pushed = 0
        self.items: asyncio.Queue = asyncio.Queue()

    async def start(self) -> None:
        pass

    async def push(self, samples) -> None:
        self.pushed += len(samples)

    async def end(self) -> None:
        pass

    async def interrupt(self) -> None:
        self.epoch += 1

    async def next(self):
        return await self.items.get()

    async def aclose(self) -> None:
        self.items.put_nowait(None)

    def frames(self, *indices: int, idle: bool = False) -> None:
        for i in indices:
            self.items.put_nowait(EngineFrame(i, i / 25, np.full((512, 512, 3), i % 251, np.uint8), idle, self.epoch))

    def end_event(self, frames: int) -> None:
        self.items.put_nowait(EngineEvent("end", frames, self.epoch))


def speech(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(-20000, 20000, n).astype(np.int16)


async def take(stream: AvatarStream, n: int) -> list:
    return [await asyncio.wait_for(stream.__anext__(), 10) for _ in range(n)]


def test_dropped_frames_hand_their_audio_to_the_next_one():
    async def main():
        engine = ScriptedEngine()
        stream = AvatarStream(engine, audio_rate=48000)
        pcm = speech(9600, 1)  # 0.2 s at 48 kHz: 5 frames
        await stream.push(pcm, 48000)
        await stream.end()
        engine.frames(0, 1, 3, 4)  # frame 2 was dropped on the way
        engine.end_event(5)
        items = await take(stream, 5)
        return pcm, engine, stream, items

    pcm, engine, stream, items = asyncio.run(main())
    assert engine.pushed == 3200  # 0.2 s at 16 kHz went to the engine
    frames = items[:4]
    assert all(isinstance(f, AvatarFrame) for f in frames) and isinstance(items[4], SegmentEnd)
    assert [len(f.audio) for f in frames] == [1920, 1920, 3840, 1920]
    np.testing.assert_array_equal(np.concatenate([f.audio for f in frames]), pcm)
    assert stream.stats.dropped == 1


def test_an_utterance_cut_short_by_drops_is_settled_by_its_end_event():
    async def main():
        engine = ScriptedEngine()
        stream = AvatarStream(engine, audio_rate=24000)
        pcm = speech(4800, 2)  # 0.2 s at 24 kHz: 5 frames
        await stream.push(pcm, 24000)
        await stream.end()
        engine.frames(0, 1, 2)  # the last two were dropped
        engine.end_event(5)
        return pcm, await take(stream, 5)

    pcm, items = asyncio.run(main())
    assert [type(x) for x in items] == [AvatarFrame] * 3 + [AudioTail, SegmentEnd]
    assert [len(x.audio) for x in items[:4]] == [960, 960, 960, 1920]
    np.testing.assert_array_equal(np.concatenate([x.audio for x in items[:4]]), pcm)


def test_idle_frames_and_overtaking_utterances_keep_the_audio_in_place():
    async def main():
        engine = ScriptedEngine()
        stream = AvatarStream(engine, width=64, height=48, audio_rate=16000)
        a, b = speech(1600, 3), speech(640, 4)  # 2.5 frames, then 1 frame
        await stream.push(a[:640], 16000)
        engine.frames(0)
        engine.frames(1, 2, idle=True)  # the audio paused: the engine filled in idle frames
        first = await take(stream, 3)
        await stream.push(a[640:], 16000)
        await stream.end()
        await stream.push(b, 16000)
        await stream.end()
        engine.frames(3, 4, 5)  # utterance b's frame comes before utterance a's "end" event
        engine.end_event(5)
        engine.end_event(6)
        return a, b, first + await take(stream, 5)

    a, b, items = asyncio.run(main())
    assert [type(x) for x in items] == [AvatarFrame] * 5 + [SegmentEnd, AvatarFrame, SegmentEnd]
    assert [x.idle for x in items[:5]] == [False, True, True, False, False]
    assert items[0].image.shape == (48, 64, 3)
    # the idle frames in the middle are not mistaken for dropped speech frames
    assert [len(x.audio) for x in items if isinstance(x, AvatarFrame)] == [640, 0, 0, 640, 320, 640]
    np.testing.assert_array_equal(np.concatenate([items[0].audio, items[3].audio, items[4].audio]), a)
    np.testing.assert_array_equal(items[6].audio, b)
    assert [x.frames for x in items if isinstance(x, SegmentEnd)] == [3, 1]


def test_push_waits_while_the_engine_is_far_behind():
    async def main():
        engine = ScriptedEngine()
        stream = AvatarStream(engine, audio_rate=16000, max_ahead_s=0.08)  # 2 frames ahead at most
        await stream.push(speech(1280, 5), 16000)  # 2 frames: at the limit, not past it
        await stream.push(speech(640, 6), 16000)  # 3 frames ahead now
        blocked = asyncio.create_task(stream.push(speech(640, 7), 16000))
        await asyncio.sleep(0.1)
        waiting = not blocked.done() and engine.pushed == 1920
        engine.frames(0)
        first = await take(stream, 1)
        await asyncio.wait_for(blocked, 10)
        return waiting, first, engine.pushed

    waiting, first, pushed = asyncio.run(main())
    assert waiting  # the third push held its audio back
    assert len(first[0].audio) == 640 and pushed == 2560  # one frame out, then it went on
