"""What one `flashtalk serve` process (or one Ray Serve replica) holds: its settings, the engine (backend +
scheduler), the portraits it has encoded, its thread pools and its counters. No web framework here."""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import gc
import io
import itertools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flashtalk.constants import DEFAULT_BUDGET_S, DEFAULT_HEADROOM
from flashtalk.errors import FlashTalkError
from flashtalk.runtime.backends import Backend, EncodedPortrait, encode_portrait
from flashtalk.runtime.scheduler import REFUSALS, Scheduler
from flashtalk.serving.wire import is_loopback

ASSETS_DIR = Path(__file__).resolve().parents[1] / "assets"
DEMO_PORTRAIT_ID = "demo"
LATENCY_BUCKETS = (0.005, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
DROP_REASONS = ("late", "paused", "backlog")  # see flashtalk.serving.stream


@dataclass(frozen=True)
class ServeConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    token: str | None = None
    max_sessions: int = 16
    max_upload_bytes: int = 8 << 20
    max_image_side: int = 4096
    max_portraits: int = 64  # encoded portraits kept (least recently used dropped)
    max_send_queue_bytes: int = 8 << 20  # per session: encoded frames waiting for a slow reader
    device: str | None = None
    latency: str = "low"  # sessions' default streaming latency mode (low | exact)
    replica: str = "local"  # named in `ready`, /health and /metrics (the Ray replica id under Ray Serve)
    latency_budget_ms: int = round(DEFAULT_BUDGET_S * 1000)  # realtime frames' default budget (start: budget_ms)
    headroom: float = DEFAULT_HEADROOM  # capacity kept free of committed realtime load (admission)

    @property
    def max_message_bytes(self) -> int:
        """The largest WebSocket message read: a start message with an inline base64 portrait."""
        return self.max_upload_bytes * 4 // 3 + 4096


def check_config(config: ServeConfig) -> None:
    """Refuse unsafe or impossible settings with a clear message (before anything starts)."""
    if not is_loopback(config.host) and not config.token:
        raise FlashTalkError(
            f"refusing to bind to {config.host}, which is not a loopback address, without a "
            "token: pass --token T (clients then send 'Authorization: Bearer T')"
        )
    if config.token is not None and len(config.token) < 8:
        raise FlashTalkError("--token must be at least 8 characters")
    if not 0 <= config.port <= 65535:
        raise FlashTalkError(f"--port must be in [0, 65535]; got {config.port}")
    if config.max_sessions < 1:
        raise FlashTalkError(f"--max-sessions must be at least 1; got {config.max_sessions}")
    if not 1 <= config.max_portraits <= 100_000:
        raise FlashTalkError(f"--max-portraits must be in [1, 100000]; got {config.max_portraits}")
    if not 20 <= config.latency_budget_ms <= 10000:
        raise FlashTalkError(f"--latency-budget-ms must be in [20, 10000]; got {config.latency_budget_ms}")
    if not 0 <= config.headroom < 1:
        raise FlashTalkError(f"--capacity-headroom must be in [0, 1); got {config.headroom}")
    if config.max_send_queue_bytes < 1 << 16:
        raise FlashTalkError(f"max_send_queue_bytes must be at least 65536; got {config.max_send_queue_bytes}")


class Histogram:
    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds, self.counts, self.sum, self.count = bounds, [0] * len(bounds), 0.0, 0

    def observe(self, value: float) -> None:
        for i, b in enumerate(self.bounds):
            if value <= b:
                self.counts[i] += 1
        self.sum += value
        self.count += 1

    def lines(self, name: str, labels: str) -> list[str]:
        out = [f"# TYPE {name} histogram"]
        out += [f'{name}_bucket{{{labels},le="{b:g}"}} {c}' for b, c in zip(self.bounds, self.counts)]
        out += [
            f'{name}_bucket{{{labels},le="+Inf"}} {self.count}',
            f"{name}_sum{{{labels}}} {self.sum:.6f}",
            f"{name}_count{{{labels}}} {self.count}",
        ]
        return out


def decode_image(data: bytes, max_side: int) -> Any:
    """A PIL image from upload bytes, with its dimensions checked before the pixels are decoded."""
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(io.BytesIO(data))
        w, h = image.size
        if max(w, h) > max_side:
            raise FlashTalkError(f"portrait is {w}x{h} pixels; the limit is {max_side} on each side")
        image.load()
    except FlashTalkError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as exc:
        raise FlashTalkError(f"portrait is not a readable image (JPEG, PNG or WebP expected): {exc}") from None
    return image


@dataclass(frozen=True)
class BackendSpec:
    """Which backend a server (or each Ray replica) builds: picklable, so replicas build their own."""

    kind: str = "preview"  # "preview" | "network"
    weights: str | None = None  # network: a published weights folder or a .safetensors bundle
    seeded: bool = False  # network: seeded synthetic weights (not a face: for testing)
    preset: str = "liveportrait"
    precision: str | None = None


def build_backend(spec: BackendSpec, device: str) -> Backend:
    from flashtalk.runtime.backends.preview import PreviewBackend

    if spec.kind == "preview":
        return PreviewBackend(device)
    if spec.kind != "network":
        raise FlashTalkError(f"backend must be 'preview' or 'network'; got {spec.kind!r}")
    if spec.weights is None and not spec.seeded:
        raise FlashTalkError("the network backend needs weights (a folder or a .safetensors bundle) or seeded=True")
    from flashtalk.runtime.backends.network import NetworkBackend

    if spec.seeded:
        from flashtalk.weights.bundle import seeded_networks

        nets = seeded_networks(spec.preset)
    else:
        from flashtalk.runtime.engine import resolve_weights
        from flashtalk.weights.bundle import load_networks

        nets = load_networks(resolve_weights(spec.weights))
    return NetworkBackend(nets, device, seeded=spec.seeded, precision=spec.precision)


def build_faces(spec: BackendSpec, device: str) -> Any:
    """LivePortrait's face models beside the spec's weights (its portraits then get LivePortrait's crop and
    measured eye / lip ratios, as `animate` does), or None: the Haar crop."""
    if spec.kind != "network" or spec.weights is None:
        return None
    import torch

    from flashtalk.runtime.engine import face_models, resolve_weights

    return face_models(Path(resolve_weights(spec.weights)), torch.device(device))


def _glibc() -> tuple[Callable[[int], int] | None, Callable[[], Any] | None]:
    """glibc's malloc_trim and mallinfo2 (>= 2.33), each None where missing (another libc)."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None, None
    trim, info = getattr(libc, "malloc_trim", None), getattr(libc, "mallinfo2", None)
    if info is not None:

        class MallInfo2(ctypes.Structure):
            _fields_ = [
                (name, ctypes.c_size_t)
                for name in (
                    "arena",
                    "ordblks",
                    "smblks",
                    "hblks",
                    "hblkhd",
                    "usmblks",
                    "fsmblks",
                    "uordblks",
                    "fordblks",
                    "keepcost",
                )
            ]

        info.restype = MallInfo2
    return trim, info


_MALLOC_TRIM, _MALLINFO2 = _glibc()


def heap_in_use_bytes() -> int | None:
    """Bytes the C heap has handed out and not had back (every arena, mmapped blocks included): what a
    leak grows, unlike the resident size, which also holds freed pages the allocator keeps. None where
    glibc's mallinfo2 is missing."""
    if _MALLINFO2 is None:
        return None
    info = _MALLINFO2()
    return int(info.uordblks + info.hblkhd)


def _collect_and_trim() -> None:
    """Collect cyclic garbage (a rejected 20-MB message can stay alive in an exception's reference cycle
    until the next full collection), then hand the freed heap back. Cheap once `freeze_startup` ran."""
    gc.collect()
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def freeze_startup() -> None:
    """Move every object alive after start-up (modules, the backend's weights, the demo portrait) out of
    the collector's reach: they are never garbage, and scanning them made each full collection cost
    ~0.1 s of held GIL on a CPU (measured: 182k objects, 145 ms -> under 1 ms) - a stall for every
    session's frames."""
    gc.collect()
    gc.freeze()


PortraitLoader = Callable[[str], Awaitable[EncodedPortrait]]


class ServerState:
    """One engine and its bookkeeping. Thread pools: `setup` (image decode, portrait encode, session
    construction with its resampler) is separate from `frames` (JPEG encode of live frames), so slow
    or hostile session starts never hold up the frames of running sessions."""

    def __init__(self, config: ServeConfig, backend: Backend, faces: Any = None) -> None:
        self.config = config
        self.backend = backend
        self.faces = faces  # LivePortrait's face models (build_faces), or None: the Haar crop
        self.scheduler = Scheduler(
            backend,
            max_sessions=config.max_sessions,
            budget_s=config.latency_budget_ms / 1000,
            headroom=config.headroom,
        )
        self.portraits: collections.OrderedDict[str, EncodedPortrait] = collections.OrderedDict()
        self.portrait_loader: PortraitLoader | None = None  # replaces the local lookup (Ray: shared store)
        self.portrait_sink: Callable[[str, bytes, EncodedPortrait], Awaitable[None]] | None = None  # uploads (Ray)
        self.sessions: dict[str, Any] = {}  # live Session by id
        self.sockets: dict[str, Any] = {}  # their WebSockets (closed with an error at shutdown)
        self.ids = itertools.count(1)
        self.started = time.monotonic()
        self.frames_sent = 0
        self.dropped = dict.fromkeys(DROP_REASONS, 0)
        self.sessions_total = 0
        self.sessions_refused = 0
        self.refused = dict.fromkeys(REFUSALS, 0)  # sessions refused (1013) by reason
        self.paused_sessions = 0  # times a session was paused because its client did not read
        self.protocol_errors = 0
        self.internal_errors = 0
        self.portraits_encoded = 0
        self.draining = False
        self.latency = Histogram(LATENCY_BUCKETS)
        self.recent: collections.deque[float] = collections.deque(maxlen=2000)  # send times, for FPS
        self.setup = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="flashtalk-setup")
        self.frames = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="flashtalk-frames")
        self.setup_slots = asyncio.Semaphore(4)  # session starts being prepared at once (bounds memory)
        self.nvml: Any = None
        self._trimmed, self._trim_pending = 0.0, False

    @property
    def frames_dropped(self) -> int:
        return sum(self.dropped.values())

    def encode(self, image: Any) -> EncodedPortrait:
        portrait = encode_portrait(self.backend, image, faces=self.faces)
        self.portraits_encoded += 1
        return portrait

    def remember(self, pid: str, portrait: EncodedPortrait) -> None:
        self.portraits[pid] = portrait
        self.portraits.move_to_end(pid)
        while len(self.portraits) > self.config.max_portraits:
            self.portraits.popitem(last=False)

    def cached(self, pid: str) -> EncodedPortrait | None:
        if pid in self.portraits:
            self.portraits.move_to_end(pid)
            return self.portraits[pid]
        return None

    async def portrait(self, pid: str) -> EncodedPortrait:
        """The encoded portrait for an id: this replica's cache, the demo, or the loader (shared store)."""
        if self.portrait_loader is not None and pid != DEMO_PORTRAIT_ID:
            return await self.portrait_loader(pid)  # it keeps its own cache (Ray: one per replica, multiplexed)
        hit = self.cached(pid)
        if hit is not None:
            return hit
        loop = asyncio.get_running_loop()
        if pid == DEMO_PORTRAIT_ID:
            portrait = await loop.run_in_executor(self.setup, self.encode, ASSETS_DIR / "portrait.jpg")
        else:
            raise FlashTalkError(f"unknown portrait_id {pid!r}: upload it with POST /portraits first")
        self.remember(pid, portrait)
        return portrait

    def fps(self) -> float:
        now = time.monotonic()
        while self.recent and self.recent[0] < now - 5.0:
            self.recent.popleft()
        return len(self.recent) / min(5.0, max(now - self.started, 1e-3))

    def release_memory(self) -> None:
        """Collect garbage and hand freed heap back to the OS after a connection ended (glibc keeps it
        otherwise: frames of a few hundred KB are below its adaptive mmap threshold). At most once a
        second; runs on the setup pool."""
        if self._trim_pending:
            return
        wait = self._trimmed + 1.0 - time.monotonic()
        if wait > 0:  # trimmed less than a second ago: once more when that second is over
            self._trim_pending = True
            asyncio.get_running_loop().call_later(wait, self._trim_later)
            return
        self._trimmed = time.monotonic()
        self.setup.submit(_collect_and_trim)

    def _trim_later(self) -> None:
        self._trim_pending = False
        with contextlib.suppress(RuntimeError):  # the pool was shut down meanwhile
            self.release_memory()

    def close(self) -> None:
        self.scheduler.stop()
        self.setup.shutdown(wait=False, cancel_futures=True)
        self.frames.shutdown(wait=False, cancel_futures=True)


__all__ = [
    "ASSETS_DIR",
    "BackendSpec",
    "DEMO_PORTRAIT_ID",
    "ServeConfig",
    "ServerState",
    "build_backend",
    "build_faces",
    "check_config",
    "decode_image",
    "is_loopback",
]
