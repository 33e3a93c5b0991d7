"""The two back ends of the framework adapters: one talking head fed 16-kHz audio, giving frames in order.

    engine = LocalEngine("face.jpg")                               # in process: Session + Scheduler
    engine = RemoteEngine("ws://gpu-box:8000/ws", token=T, portrait="face.jpg")   # a FlashTalk server
    await engine.start()
    await engine.push(samples_16k)      # float32 mono at 16 kHz
    await engine.end()                  # end of speech;  await engine.interrupt()  drops queued speech
    item = await engine.next()          # EngineFrame | EngineEvent | None (closed)
    await engine.aclose()

`epoch` counts interrupts; every item carries the epoch it belongs to, so a caller can drop an item that was
already on its way when it interrupted (`item.epoch < engine.epoch`). Both engines use only public interfaces:
`Session` / `Scheduler` methods, and the WebSocket protocol through `flashtalk.client`.
"""

from __future__ import annotations

import asyncio
import collections
import inspect
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from flashtalk.constants import MODEL_RATE
from flashtalk.errors import FlashTalkError


@dataclass(frozen=True)
class EngineFrame:
    index: int
    pts: float
    image: np.ndarray  # [H, W, 3] uint8 RGB as the engine renders it (512 x 512)
    idle: bool
    epoch: int


@dataclass(frozen=True)
class EngineEvent:
    kind: str  # "end" | "interrupted"
    frames: int | None
    epoch: int


class LocalEngine:
    """A FlashTalk `Session` in this process, on its own `Scheduler` thread or on a shared one (many avatars
    batched on one device). `backend` defaults to the weights-free preview; `latency` ("low" | "exact")
    is handed to the Session when given."""

    def __init__(
        self,
        portrait: Any,
        *,
        backend: Any = None,
        device: str | None = None,
        scheduler: Any = None,
        seed: int = 0,
        controls: Mapping[str, float] | None = None,
        idle: bool = True,
        latency: str | None = None,
        watermark: bool = True,
    ) -> None:
        self._portrait, self._backend, self._device, self._scheduler = portrait, backend, device, scheduler
        self._kwargs = {"seed": seed, "controls": dict(controls or {}), "idle": idle, "watermark": watermark}
        self._latency = latency
        self._own_scheduler = scheduler is None
        self.session: Any = None
        self._items: collections.deque = collections.deque()
        self._wake: asyncio.Event | None = None
        self._closed = False

    @property
    def epoch(self) -> int:
        return 0 if self.session is None else self.session.epoch

    @property
    def lookahead_ms(self) -> float:
        return 0.0 if self.session is None else self.session.lookahead_s * 1000

    async def start(self) -> None:
        from flashtalk.runtime.backends import EncodedPortrait, encode_portrait
        from flashtalk.runtime.backends.preview import PreviewBackend
        from flashtalk.runtime.scheduler import Scheduler
        from flashtalk.runtime.session import Session

        loop = asyncio.get_running_loop()
        backend = self._backend if self._backend is not None else PreviewBackend(self._device)
        portrait = self._portrait
        if not isinstance(portrait, EncodedPortrait):
            portrait = await loop.run_in_executor(None, encode_portrait, backend, portrait)
        kwargs = dict(self._kwargs)
        if self._latency is not None:
            if "latency" not in inspect.signature(Session).parameters:
                raise FlashTalkError(
                    f"latency={self._latency!r} needs a FlashTalk whose Session has the latency "
                    "option; this one has none (leave latency unset)"
                )
            kwargs["latency"] = self._latency
        self._wake = wake = asyncio.Event()

        def on_output() -> None:  # the scheduler's thread
            try:
                loop.call_soon_threadsafe(wake.set)
            except RuntimeError:  # the loop is gone: nobody is waiting any more
                pass

        self.session = Session(
            backend, portrait, sample_rate=MODEL_RATE, sample_format="f32le", on_output=on_output, **kwargs
        )
        if self._scheduler is None:
            self._scheduler = Scheduler(backend, max_sessions=1)
        self._scheduler.admit(self.session)
        if self._own_scheduler:
            self._scheduler.start()

    async def push(self, samples: np.ndarray) -> None:
        self.session.push_audio(samples)
        self._scheduler.wake()

    async def end(self) -> None:
        self.session.end_speech()
        self._scheduler.wake()

    async def interrupt(self) -> None:
        self.session.interrupt()
        self._items.clear()
        self._scheduler.wake()

    async def next(self) -> EngineFrame | EngineEvent | None:
        while not self._closed:
            if self._items:
                x = self._items.popleft()
                if hasattr(x, "image"):
                    return EngineFrame(x.index, x.pts, x.image, x.idle, x.epoch)
                return EngineEvent(x.kind, x.frames, x.epoch)
            self._items.extend(self.session.poll())
            if self._items:
                continue
            self._wake.clear()
            self._items.extend(self.session.poll())  # anything that came between the poll and the clear
            if not self._items:
                await self._wake.wait()
        return None

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._wake is not None:
            self._wake.set()
        if self.session is not None:
            self._scheduler.release(self.session)
            self.session.close()
        if self._own_scheduler and self._scheduler is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._scheduler.stop)


class RemoteEngine:
    """A session on a FlashTalk server through `flashtalk.client` (audio sent as 16-kHz s16le). `pace`
    defaults to "realtime": the server sends frames at 25 FPS, the rate the framework plays them at, so no
    backlog builds up on either side of the connection."""

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        portrait: str | Path | bytes | None = None,
        portrait_id: str | None = None,
        seed: int = 0,
        controls: Mapping[str, float] | None = None,
        idle: bool = True,
        latency: str | None = None,
        video: str = "jpeg",
        pace: str = "realtime",
        options: Mapping[str, Any] | None = None,
    ) -> None:
        from flashtalk import client

        self._client = client
        self._connect = lambda: client.connect(
            url,
            token=token,
            portrait=portrait,
            portrait_id=portrait_id,
            sample_rate=MODEL_RATE,
            format="s16le",
            video=video,
            pace=pace,
            seed=seed,
            controls=controls,
            idle=idle,
            latency=latency,
            options=options,
        )
        if (portrait is None) == (portrait_id is None):
            raise FlashTalkError("give exactly one of portrait= (an image path or bytes) or portrait_id=")
        self.stream: Any = None

    @property
    def epoch(self) -> int:
        return 0 if self.stream is None else self.stream.interrupts

    @property
    def lookahead_ms(self) -> float:
        return 0.0 if self.stream is None else self.stream.ready.lookahead_ms

    async def start(self) -> None:
        self.stream = await self._connect()

    async def push(self, samples: np.ndarray) -> None:
        await self.stream.send_audio(samples)

    async def end(self) -> None:
        await self.stream.end()

    async def interrupt(self) -> None:
        await self.stream.interrupt()

    async def next(self) -> EngineFrame | EngineEvent | None:
        item = await self.stream.recv()
        if item is None:
            return None
        if isinstance(item, self._client.Frame):
            return EngineFrame(item.index, item.pts, item.rgb(), item.idle, item.epoch)
        return EngineEvent(item.type, item.frames, self.stream.interrupts)

    async def aclose(self) -> None:
        if self.stream is not None:
            await self.stream.stop()


__all__ = ["EngineEvent", "EngineFrame", "LocalEngine", "RemoteEngine"]
