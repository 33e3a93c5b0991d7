"""An asyncio client for the WebSocket protocol of `flashtalk serve` (`pip install 'flashtalk[client]'`).

    from flashtalk.client import connect
    async with connect("ws://127.0.0.1:8000/ws", token=T, portrait="face.jpg", sample_rate=24000) as stream:
        print(stream.ready.lookahead_ms)           # what the server announced in "ready"
        await stream.send_audio(pcm)               # bytes in the start format, or a 1-D int16 / float array
        await stream.end()                         # end of speech: the last partial frame, then Event("end")
        async for item in stream:                  # Frame (index, pts, audio, image, idle) or Event
            if isinstance(item, Event) and item.type == "end":
                break

`interrupt()` drops the speech queued so far: frames and "end" events of that speech that were already on
their way are dropped here too, so the next Frame after the Event("interrupted") belongs to new audio.

Errors (all `ClientError`, a `FlashTalkError`): `AuthError` (the server refused the token: HTTP 401 / 403),
`Refused` (the server is full: close code 1013, or HTTP 503 from a proxy in front of it), `Rejected` (the
server refused a message: close code 1008, or 1009 for one too big; `reason` has its words), and
`Disconnected` (no connection, or the connection was lost). Only the documented protocol is used
(README "Serving", `flashtalk.serving.wire`), so any server that speaks it works: `flashtalk serve`,
a Ray Serve deployment, or a proxy in front of either.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import numpy as np

from flashtalk.errors import FlashTalkError
from flashtalk.serving.wire import MAX_CHUNK_BYTES, is_loopback, unpack_frame

CLOSE_BAD_MESSAGE, CLOSE_TOO_BIG, CLOSE_FULL = 1008, 1009, 1013
FORMATS = {"s16le": np.dtype("<i2"), "f32le": np.dtype("<f4")}
MAX_MESSAGE_BYTES = 32 << 20  # a raw 512x512 frame is ~0.8 MB; leave room for larger servers


class ClientError(FlashTalkError):
    """A FlashTalk server refused or lost the session; `code` is the WebSocket close code (or HTTP status)."""

    def __init__(self, message: str, code: int | None = None, reason: str = "") -> None:
        super().__init__(message)
        self.code, self.reason = code, reason


class AuthError(ClientError):
    """The server refused the bearer token (HTTP 401 / 403)."""


class Refused(ClientError):
    """The server is full (close code 1013, or HTTP 503): try again later or another server."""


class Rejected(ClientError):
    """The server refused a message of this client (close code 1008, or 1009 for one too big)."""


class Disconnected(ClientError):
    """No connection could be made, or it was lost mid-stream."""


@dataclass(frozen=True)
class Ready:
    session: str
    fps: int
    width: int
    height: int
    backend: str
    lookahead_ms: float  # audio a frame needs beyond its own 40 ms before the server can make it
    video: str
    info: dict[str, Any] = field(repr=False)  # the whole "ready" message (watermark, controls, replica, ...)


@dataclass(frozen=True)
class Frame:
    index: int  # frame number on the session's timeline
    pts: float  # seconds
    audio: bytes  # the s16le 16-kHz samples that drove this frame
    image: bytes  # JPEG, or raw RGB (height x width x 3) when started with video="raw"
    idle: bool  # driven by silence while no audio came
    video: str
    width: int
    height: int
    epoch: int  # interrupts this stream had completed when the frame arrived

    def samples(self) -> np.ndarray:
        """The driving audio as int16 samples (16 kHz)."""
        return np.frombuffer(self.audio, "<i2")

    def rgb(self) -> np.ndarray:
        """The image as uint8 [height, width, 3] RGB (JPEG decoded with Pillow)."""
        if self.video == "raw":
            return np.frombuffer(self.image, np.uint8).reshape(self.height, self.width, 3)
        import io

        from PIL import Image

        with Image.open(io.BytesIO(self.image)) as image:
            return np.asarray(image.convert("RGB"))


@dataclass(frozen=True)
class Event:
    type: str  # "end" (all frames of the speech ended by end() were sent) | "interrupted"
    frames: int | None  # frames on the timeline so far
    info: dict[str, Any] = field(repr=False)


def _websockets():
    try:
        import websockets
        from websockets.asyncio.client import connect as ws_connect
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] == "websockets":
            raise FlashTalkError("flashtalk.client needs websockets: pip install 'flashtalk[client]'") from None
        raise
    return websockets, ws_connect


def _ws_url(url: str) -> str:
    parts = urlsplit(url)
    scheme = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}.get(parts.scheme)
    if scheme is None or not parts.hostname:
        raise FlashTalkError(f"server URL must look like ws://HOST:PORT/ws (or http://HOST:PORT); got {url!r}")
    path = parts.path if parts.path not in ("", "/") else "/ws"
    return urlunsplit((scheme, parts.netloc, path, parts.query, ""))


def _portrait_field(portrait: str | Path | bytes | None, portrait_id: str | None) -> dict[str, str]:
    if (portrait is None) == (portrait_id is None):
        raise FlashTalkError(
            "give exactly one of portrait= (an image path or bytes) or portrait_id= (from POST /portraits)"
        )
    if portrait_id is not None:
        return {"portrait_id": portrait_id}
    if isinstance(portrait, (str, Path)):
        path = Path(portrait)
        if not path.is_file():
            raise FlashTalkError(f"portrait {str(path)!r} is not a file")
        portrait = path.read_bytes()
    if not isinstance(portrait, (bytes, bytearray, memoryview)) or not len(portrait):
        raise FlashTalkError(f"portrait must be an image path or non-empty image bytes; got {type(portrait).__name__}")
    return {"portrait": base64.b64encode(bytes(portrait)).decode("ascii")}


def _error_for(code: int | None, reason: str, where: str) -> ClientError:
    words = f": {reason}" if reason else ""
    if code == CLOSE_FULL:
        return Refused(f"server is full (close code 1013){words}", code, reason)
    if code in (CLOSE_BAD_MESSAGE, CLOSE_TOO_BIG):
        return Rejected(f"server rejected the {where} (close code {code}){words}", code, reason)
    how = "without a close code" if code is None else f"with close code {code}"
    return Disconnected(f"connection to the server was lost during the {where} ({how}){words}", code, reason)


class Stream:
    """One live session on a FlashTalk server. Make it with `connect()`; see the module docstring."""

    def __init__(self, ws: Any, ready: Ready, sample_format: str) -> None:
        self._ws, self.ready, self.format = ws, ready, sample_format
        self._dtype = FORMATS[sample_format]
        self._error = ""  # reason of the server's last {"type": "error"}
        self._stopping = False
        self.interrupts = 0  # interrupt() calls so far
        self._pending = 0  # of those, not yet confirmed by an "interrupted" event

    # ---- sending ------------------------------------------------------------------------------
    async def send_audio(self, pcm: bytes | bytearray | memoryview | np.ndarray) -> None:
        """Send mono PCM at the start message's rate: bytes in its format, or a 1-D int16 / float array."""
        data = self._encode(pcm)
        for i in range(0, len(data), MAX_CHUNK_BYTES - MAX_CHUNK_BYTES % self._dtype.itemsize):
            await self._send(data[i : i + MAX_CHUNK_BYTES - MAX_CHUNK_BYTES % self._dtype.itemsize])

    async def end(self) -> None:
        """End of speech: the server flushes the partial last frame, then sends Event("end")."""
        await self._send(json.dumps({"type": "end"}))

    async def interrupt(self) -> None:
        """Drop all queued speech; frames of it still on their way are not returned by recv()."""
        self.interrupts += 1
        self._pending += 1
        await self._send(json.dumps({"type": "interrupt"}))

    async def set_controls(self, controls: Mapping[str, float]) -> None:
        await self._send(json.dumps({"type": "controls", "controls": dict(controls)}))

    async def stop(self) -> None:
        """Close the session (normal closure); iteration then ends."""
        if self._stopping:
            return
        self._stopping = True
        websockets, _ = _websockets()
        try:
            await self._ws.send(json.dumps({"type": "stop"}))
        except websockets.exceptions.ConnectionClosed:
            pass
        await self._ws.close()

    aclose = stop

    def _encode(self, pcm) -> bytes:
        if isinstance(pcm, np.ndarray):
            if pcm.ndim != 1:
                raise FlashTalkError(f"PCM must be a 1-D mono array; got shape {pcm.shape}")
            if pcm.dtype == np.int16:
                x = pcm if self.format == "s16le" else pcm.astype(np.float32) / 32768.0
            elif pcm.dtype in (np.float32, np.float64):
                x = (np.clip(pcm, -1.0, 1.0) * 32767.0).round() if self.format == "s16le" else pcm
            else:
                raise FlashTalkError(f"PCM array dtype must be int16, float32 or float64; got {pcm.dtype}")
            return np.ascontiguousarray(x, self._dtype).tobytes()
        if isinstance(pcm, (bytes, bytearray, memoryview)):
            data = bytes(pcm)
            if len(data) % self._dtype.itemsize:
                raise FlashTalkError(f"PCM of {len(data)} bytes is not a whole number of {self.format} samples")
            return data
        raise FlashTalkError(f"PCM must be bytes or a numpy array; got {type(pcm).__name__}")

    async def _send(self, message: str | bytes) -> None:
        websockets, _ = _websockets()
        try:
            await self._ws.send(message)
        except websockets.exceptions.ConnectionClosed as exc:
            raise self._closed_error(exc, "message") from None

    # ---- receiving ----------------------------------------------------------------------------
    async def recv(self) -> Frame | Event | None:
        """The next frame or event; None once the stream was stopped by this client."""
        websockets, _ = _websockets()
        while True:
            try:
                message = await self._ws.recv()
            except websockets.exceptions.ConnectionClosed as exc:
                if self._stopping:
                    return None
                raise self._closed_error(exc, "stream") from None
            if isinstance(message, bytes):
                try:
                    msg = unpack_frame(message)
                except FlashTalkError as exc:
                    raise Rejected(f"server sent a bad frame message: {exc}") from None
                if self._pending:
                    continue  # speech from before an interrupt the server has not confirmed yet
                r = self.ready
                return Frame(
                    msg.index, msg.pts, msg.audio, msg.image, msg.idle, r.video, r.width, r.height, self.interrupts
                )
            event = _load(message)
            kind = event["type"]
            if kind == "error":
                self._error = str(event.get("reason", ""))
                continue  # the close follows; it says which error this was
            if kind == "interrupted":
                self._pending = max(0, self._pending - 1)
            elif self._pending:
                continue  # e.g. the "end" of the interrupted speech
            frames = event.get("frames")
            return Event(kind, frames if isinstance(frames, int) else None, event)

    def __aiter__(self) -> "Stream":
        return self

    async def __anext__(self) -> Frame | Event:
        item = await self.recv()
        if item is None:
            raise StopAsyncIteration
        return item

    def _closed_error(self, exc: Any, where: str) -> ClientError:
        code = exc.rcvd.code if exc.rcvd is not None else None
        reason = self._error or (exc.rcvd.reason if exc.rcvd is not None else "")
        if code is None and exc.sent is not None and not reason:  # this side closed it (e.g. a bad frame)
            reason = f"this client closed it with code {exc.sent.code} {exc.sent.reason}".strip()
        return _error_for(code, reason, where)

    async def __aenter__(self) -> "Stream":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()


def _load(text: str) -> dict[str, Any]:
    try:
        msg = json.loads(text)
    except json.JSONDecodeError:
        raise Rejected(f"server sent a text message that is not JSON: {text[:80]!r}") from None
    if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
        raise Rejected(f"server sent a message without a string 'type': {text[:80]!r}")
    return msg


async def _open(
    url: str, token: str | None, start: dict[str, Any], open_timeout: float, ready_timeout: float
) -> Stream:
    websockets, ws_connect = _websockets()
    url = _ws_url(url)
    headers = {"Authorization": f"Bearer {token}"} if token else None
    local = is_loopback(urlsplit(url).hostname or "")
    try:
        ws = await ws_connect(
            url,
            additional_headers=headers,
            max_size=MAX_MESSAGE_BYTES,
            open_timeout=open_timeout,
            **({"proxy": None} if local else {}),
        )
    except websockets.exceptions.InvalidStatus as exc:
        status = exc.response.status_code
        if status in (401, 403):
            raise AuthError(
                f"server refused the token (HTTP {status}): pass token= the server's --token", status
            ) from None
        if status == 503:
            raise Refused(f"server is full (HTTP 503) at {url}", status) from None
        raise Disconnected(f"server at {url} refused the WebSocket handshake (HTTP {status})", status) from None
    except (OSError, asyncio.TimeoutError, websockets.exceptions.InvalidHandshake) as exc:
        raise Disconnected(f"could not connect to {url}: {exc}") from None
    stream = Stream(ws, Ready("", 0, 0, 0, "", 0.0, start.get("video", "jpeg"), {}), start.get("format", "s16le"))
    try:
        await ws.send(json.dumps(start))
        while True:  # "ready", or an error and the close that says which
            message = await asyncio.wait_for(ws.recv(), ready_timeout)
            if isinstance(message, bytes):
                raise Rejected("server sent a frame before its 'ready' message")
            msg = _load(message)
            if msg["type"] == "error":
                stream._error = str(msg.get("reason", ""))
            elif msg["type"] == "ready":
                break
    except websockets.exceptions.ConnectionClosed as exc:
        raise stream._closed_error(exc, "start message") from None
    except asyncio.TimeoutError:
        await ws.close()
        raise Disconnected(f"no 'ready' from {url} within {ready_timeout:g} s") from None
    except BaseException:
        await ws.close()
        raise
    try:
        stream.ready = Ready(
            str(msg["session"]),
            int(msg["fps"]),
            int(msg["width"]),
            int(msg["height"]),
            str(msg.get("backend", "")),
            float(msg.get("lookahead_ms", 0.0)),
            str(msg.get("video", start.get("video", "jpeg"))),
            msg,
        )
    except (KeyError, TypeError, ValueError):
        await ws.close()
        raise Rejected(f"server's 'ready' message lacks session / fps / width / height: {msg}") from None
    return stream


class _Connecting:
    """`await connect(...)` gives a Stream; `async with connect(...) as stream` also stops it at the end."""

    def __init__(self, coro) -> None:
        self._coro, self._stream = coro, None

    def __await__(self):
        return self._coro.__await__()

    async def __aenter__(self) -> Stream:
        self._stream = await self._coro
        return self._stream

    async def __aexit__(self, *exc: Any) -> None:
        await self._stream.stop()


def connect(
    url: str,
    *,
    token: str | None = None,
    portrait: str | Path | bytes | None = None,
    portrait_id: str | None = None,
    sample_rate: int = 16000,
    format: str = "s16le",
    video: str = "jpeg",
    pace: str = "realtime",
    seed: int = 0,
    controls: Mapping[str, float] | None = None,
    idle: bool = True,
    quality: int = 80,
    latency: str | None = None,
    options: Mapping[str, Any] | None = None,
    open_timeout: float = 10.0,
    ready_timeout: float = 60.0,
) -> _Connecting:
    """Open a session: send the start message and wait for "ready". `latency` ("low" | "exact") and
    `options` (any further start keys) are passed through only when given, so older servers keep working.
    The server checks every value; a bad one raises `Rejected` with its reason."""
    if format not in FORMATS:
        raise FlashTalkError(f"format must be one of {sorted(FORMATS)}; got {format!r}")
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, int):
        raise FlashTalkError(f"sample_rate must be an integer (Hz); got {sample_rate!r}")
    start: dict[str, Any] = {
        "type": "start",
        **_portrait_field(portrait, portrait_id),
        "sample_rate": sample_rate,
        "format": format,
        "video": video,
        "pace": pace,
        "seed": seed,
        "idle": idle,
        "quality": quality,
    }
    if controls:
        start["controls"] = dict(controls)
    if latency is not None:
        start["latency"] = latency
    start.update(options or {})
    return _Connecting(_open(url, token, start, open_timeout, ready_timeout))


__all__ = [
    "AuthError",
    "ClientError",
    "Disconnected",
    "Event",
    "Frame",
    "Ready",
    "Refused",
    "Rejected",
    "Stream",
    "connect",
]
