"""The `flashtalk serve` WebSocket protocol (path `/ws`): message parsing and the binary frame layout.

Client -> server
  text  {"type": "start", "portrait": "<base64 JPEG/PNG/WebP>" | "portrait_id": "<id from POST /portraits>",
         "sample_rate": 16000, "format": "s16le" | "f32le", "video": "jpeg" | "raw",
         "pace": "realtime" | "fast", "seed": 0, "controls": {...}, "idle": true, "quality": 80,
         "latency": "low" | "exact" (default: the server's, `serve --latency`), "commit_frames": k,
         "lookahead_frames": r (low latency: frames committed per motion window / of audio look-ahead),
         "budget_ms": b (a realtime frame's latency budget, audio in -> frame rendered; default the
         server's `serve --latency-budget-ms`; in [20, 10000])}
        (first message; everything but the portrait is optional, defaults shown)
  binary  PCM: mono samples in the start message's format and rate, any chunk size up to MAX_CHUNK_BYTES
  text  {"type": "end"}                  end of speech: flush the last partial frame, then an "end" event
  text  {"type": "interrupt"}            drop queued audio and frames not yet sent
  text  {"type": "controls", "controls": {"yaw": 10, ...}}   change controls mid-stream
  text  {"type": "stop"}                 close the session (or just close the socket)
Server -> client
  text  {"type": "ready", "session": id, "fps": 25, "width": 512, "height": 512, "backend": "preview",
         "replica": name, "lookahead_ms": x, "watermark": bool, "controls": [...], "video": ..., "pace": ...,
         "kernels": {op: implementation serving it (ours: "flashtalk"), ...},
         "budget_ms": b}
  binary  one frame: FRAME_HEADER (little-endian: magic b"FTF1", u32 index, f64 pts seconds, u32 audio bytes,
          u32 image bytes, u32 flags (1 = idle frame)), then the audio that drove the frame (s16le, 16 kHz,
          640 samples), then the image (JPEG, or raw RGB 512x512x3 uint8)
  text  {"type": "end", "frames": n, "dropped": d, "missed": m}     all frames of the speech ended by "end"
        were sent; d: frames of this session dropped so far (late after a stall, skipped while the client
        did not read, or a backlog); m: frames rendered after their deadline so far
  text  {"type": "interrupted", "frames": n, "dropped": d, "missed": m}
  text  {"type": "error", "reason": "..."} then the socket closes with
        1008  a bad message (not JSON, unknown type or key, value out of range, integer too long, ...)
        1009  a message too big: over MAX_CHUNK_BYTES (PCM), MAX_COMMAND_BYTES (commands after start) or
              the server's start-message limit (4/3 of its upload limit + 4 KiB); a message beyond the
              transport's own limit (1 MiB more) is closed with 1009 by the transport, without the error
        1011  an internal error (logged on the server as one line)
        1013  refused: the server is full (--max-sessions), at capacity (a realtime session would push
              the committed load past the measured render capacity), or this replica is draining;
              the reason says which: try again later
Realtime pacing: frames are sent at their pts on a clock anchored at the first frame (re-anchored after
"end" / "interrupted" and when the input itself paused); a frame more than LATE_S (or its latency budget,
whichever is longer) behind that clock is dropped when a newer one is already there, else sent at once,
so after a stall the session is back at its normal latency as soon as the renderer has caught up.
Backpressure: while a client does not read (its send queue at its bound) nothing more is rendered for it;
a realtime session then skips to the present (the skipped frames are counted as dropped), a fast one
resumes where it was.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import math
import struct
from dataclasses import dataclass, field
from typing import Any

from flashtalk.constants import LATENCY_MODES
from flashtalk.errors import FlashTalkError

FRAME_MAGIC = b"FTF1"
FRAME_HEADER = struct.Struct("<4sIdIII")
FLAG_IDLE = 1
MAX_CHUNK_BYTES = 1 << 18  # one PCM message (~2.7 s of 48-kHz float32)
MAX_COMMAND_BYTES = 1 << 16  # one text command after the start message
CLOSE_BAD_MESSAGE, CLOSE_TOO_BIG, CLOSE_INTERNAL, CLOSE_FULL = 1008, 1009, 1011, 1013
LATE_S = 0.25  # realtime pacing: how far behind its clock a frame may be before it is dropped or rushed
VIDEO_FORMATS = ("jpeg", "raw")
PACES = ("realtime", "fast")
START_KEYS = {
    "type",
    "portrait",
    "portrait_id",
    "sample_rate",
    "format",
    "video",
    "pace",
    "seed",
    "controls",
    "idle",
    "quality",
    "latency",
    "commit_frames",
    "lookahead_frames",
    "budget_ms",
}


class ProtocolError(FlashTalkError):
    """A malformed or unexpected client message; the session is closed with this reason."""


@dataclass(frozen=True)
class Start:
    portrait: bytes | None
    portrait_id: str | None
    sample_rate: int = 16000
    format: str = "s16le"
    video: str = "jpeg"
    pace: str = "realtime"
    seed: int = 0
    controls: dict[str, Any] = field(default_factory=dict)
    idle: bool = True
    quality: int = 80
    latency: str | None = None  # None: the server's default
    commit_frames: int | None = None  # range checked by the session (it depends on the model)
    lookahead_frames: int | None = None
    budget_ms: int | None = None  # None: the server's default


@dataclass(frozen=True)
class Command:
    type: str  # "end" | "interrupt" | "controls" | "stop"
    controls: dict[str, Any] = field(default_factory=dict)


def _load(text: str) -> dict[str, Any]:
    try:
        msg = json.loads(text)
    except (ValueError, RecursionError) as exc:  # ValueError: also integers over Python's 4300-digit limit
        raise ProtocolError(f"message is not valid JSON: {str(exc)[:200]}") from None
    if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
        raise ProtocolError("message must be a JSON object with a string 'type'")
    return msg


def _int(msg: dict, key: str, default: int, lo: int, hi: int) -> int:
    value = msg.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ProtocolError(f"start: '{key}' must be an integer in [{lo}, {hi}]; got {_short(value)}")
    return value


def _choice(msg: dict, key: str, default: str, choices: tuple[str, ...]) -> str:
    value = msg.get(key, default)
    if value not in choices:
        raise ProtocolError(f"start: '{key}' must be one of {list(choices)}; got {_short(value)}")
    return value


def _controls(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ProtocolError(f"{where}: 'controls' must be an object of name -> number; got {type(value).__name__}")
    for k, v in value.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(_as_float(v)):
            raise ProtocolError(f"{where}: control {str(k)[:40]!r} must be a finite number; got {_short(v)}")
    return value


def _as_float(v: int | float) -> float:
    try:
        return float(v)
    except OverflowError:  # an integer beyond float's range
        return math.inf


def _short(value: Any) -> str:
    text = (
        repr(value) if not isinstance(value, int) or abs(value) < 10**30 else f"an integer of {len(str(value))} digits"
    )
    return text if len(text) <= 60 else text[:57] + "..."


def parse_start(text: str, max_portrait_bytes: int) -> Start:
    msg = _load(text)
    if msg["type"] != "start":
        raise ProtocolError(f'the first message must be {{"type": "start", ...}}; got type {_short(msg["type"])}')
    unknown = sorted(set(msg) - START_KEYS)
    if unknown:
        raise ProtocolError(f"start: unknown keys {_short(unknown)} (known: {sorted(START_KEYS)})")
    portrait, pid = msg.get("portrait"), msg.get("portrait_id")
    if (portrait is None) == (pid is None):
        raise ProtocolError("start: give exactly one of 'portrait' (base64 image) or 'portrait_id'")
    data = None
    if portrait is not None:
        if not isinstance(portrait, str):
            raise ProtocolError("start: 'portrait' must be a base64 string")
        if len(portrait) > 4 * (max_portrait_bytes // 3 + 1):
            raise ProtocolError(f"start: portrait is larger than {max_portrait_bytes} bytes")
        try:
            data = base64.b64decode(portrait, validate=True)
        except (binascii.Error, ValueError):
            raise ProtocolError("start: 'portrait' is not valid base64") from None
    elif not isinstance(pid, str) or not 1 <= len(pid) <= 64:
        raise ProtocolError(f"start: 'portrait_id' must be an id string from POST /portraits; got {_short(pid)}")
    idle = msg.get("idle", True)
    if not isinstance(idle, bool):
        raise ProtocolError(f"start: 'idle' must be true or false; got {_short(idle)}")
    return Start(
        portrait=data,
        portrait_id=pid,
        sample_rate=_int(msg, "sample_rate", 16000, 4000, 192000),
        format=_choice(msg, "format", "s16le", ("s16le", "f32le")),
        video=_choice(msg, "video", "jpeg", VIDEO_FORMATS),
        pace=_choice(msg, "pace", "realtime", PACES),
        seed=_int(msg, "seed", 0, 0, 2**31 - 1),
        controls=_controls(msg.get("controls", {}), "start"),
        idle=idle,
        quality=_int(msg, "quality", 80, 10, 95),
        latency=None if msg.get("latency") is None else _choice(msg, "latency", "low", LATENCY_MODES),
        commit_frames=_optional_int(msg, "commit_frames"),
        lookahead_frames=_optional_int(msg, "lookahead_frames"),
        budget_ms=None if msg.get("budget_ms") is None else _int(msg, "budget_ms", 0, 20, 10000),
    )


def _optional_int(msg: dict, key: str) -> int | None:
    value = msg.get(key)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise ProtocolError(f"start: '{key}' must be an integer; got {_short(value)}")
    return value


def parse_command(text: str) -> Command:
    msg = _load(text)
    kind = msg["type"]
    if kind in ("end", "interrupt", "stop"):
        if set(msg) != {"type"}:
            raise ProtocolError(f"{kind}: takes no other keys; got {_short(sorted(set(msg) - {'type'}))}")
        return Command(kind)
    if kind == "controls":
        if set(msg) != {"type", "controls"}:
            raise ProtocolError('controls: expected exactly {"type": "controls", "controls": {...}}')
        return Command(kind, _controls(msg["controls"], "controls"))
    if kind == "start":
        raise ProtocolError("session already started: 'start' may be sent only once")
    raise ProtocolError(f"unknown message type {_short(kind)} (expected end, interrupt, controls or stop)")


def pack_frame(index: int, pts: float, audio: bytes, image: bytes, idle: bool) -> bytes:
    return FRAME_HEADER.pack(FRAME_MAGIC, index, pts, len(audio), len(image), FLAG_IDLE if idle else 0) + audio + image


@dataclass(frozen=True)
class FrameMessage:
    index: int
    pts: float
    audio: bytes  # s16le, 16 kHz
    image: bytes
    idle: bool


def unpack_frame(data: bytes) -> FrameMessage:
    """Parse a binary frame message (clients, tests and the soak script use this)."""
    if len(data) < FRAME_HEADER.size:
        raise FlashTalkError(f"frame message of {len(data)} bytes is shorter than its {FRAME_HEADER.size}-byte header")
    magic, index, pts, n_audio, n_image, flags = FRAME_HEADER.unpack_from(data)
    if magic != FRAME_MAGIC or FRAME_HEADER.size + n_audio + n_image != len(data):
        raise FlashTalkError("not a FlashTalk frame message (bad magic or lengths)")
    start = FRAME_HEADER.size
    return FrameMessage(index, pts, data[start : start + n_audio], data[start + n_audio :], bool(flags & FLAG_IDLE))


def is_loopback(host: str) -> bool:
    """Whether `host` (a name or an address) is this machine's loopback: `localhost`, 127.0.0.0/8 or ::1."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


__all__ = [
    "CLOSE_BAD_MESSAGE",
    "CLOSE_FULL",
    "CLOSE_INTERNAL",
    "CLOSE_TOO_BIG",
    "Command",
    "FRAME_HEADER",
    "FrameMessage",
    "LATE_S",
    "MAX_CHUNK_BYTES",
    "MAX_COMMAND_BYTES",
    "ProtocolError",
    "Start",
    "pack_frame",
    "is_loopback",
    "parse_command",
    "parse_start",
    "unpack_frame",
]
