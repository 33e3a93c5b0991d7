"""Fuzz family "server": seeded hostile clients against a real `flashtalk serve` (preview backend, 127.0.0.1)
beside one healthy real-time session.

    campaign(seed, n, budget_s) -> {"family": "server", "cases", "ok", "clean_error", "crash", "hang",
        "examples", "healthy_fps", "healthy_latency_p50_ms", "healthy_latency_p99_ms",
        "rss_baseline_mb", "rss_warm_mb", "rss_after_mb", "heap_warm_mb", "heap_after_mb", "cases_after_warm", ...}

The server runs as a subprocess (stopped by its PID). The healthy client speaks in utterances (0.6 s of
16-kHz speech sent at real time, `end`, a short pause), paced "realtime", and measures each frame's
latency (its audio sent -> the frame received); it runs alone first (baseline), then while the hostile
cases run, 4 at a time. Hostile kinds: bad JSON, mutated start values (huge ints, float overflow, NaN,
wrong types, deep nesting), bad controls, messages over the limits, odd sample rates, NaN PCM, readers
that never read, stalled handshakes, truncated / chunked / oversized uploads, garbage HTTP. Hostile
clients send little valid speech (a frame or two each): on a CPU every frame rendered for them is
~0.1 s of renderer time taken from the healthy session, which is load, not a finding.

Outcomes: ok (a valid input served), clean_error (`{"type": "error"}` then 1008 / 1009 / 1013, a bare
1009 from the transport for a message over its limit, or an HTTP 4xx with a JSON error), crash (1011, a
connection dropped without a close, an HTTP 5xx, a traceback in the server's log, the server gone),
hang (no answer within the case's bound).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.processes import stop_process

CASE_TIMEOUT_S = 20.0
CONCURRENCY = 4
MAX_EXAMPLES = 5
CLEAN_CODES = (1008, 1009, 1013)
KINDS = (
    "bad_json",
    "start_values",
    "controls",
    "big_text",
    "big_binary",
    "odd_rate",
    "nan_pcm",
    "slow_reader",
    "stalled",
    "truncated_upload",
    "chunked_upload",
    "oversized_upload",
    "garbage_http",
    "commands",
)


class Outcome(Exception):
    def __init__(self, kind: str, detail: str = "") -> None:
        super().__init__(detail)
        self.kind, self.detail = kind, detail


# ------------------------------------------------------------------------------------ the server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`python -m flashtalk serve` of this checkout on 127.0.0.1, its log in a temporary file."""

    def __init__(self, max_sessions: int = 64) -> None:
        import flashtalk

        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tempfile.NamedTemporaryFile(prefix="flashtalk-fuzz-serve-", suffix=".log", delete=False)
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(
                p for p in (str(Path(flashtalk.__file__).resolve().parents[1]), os.environ.get("PYTHONPATH")) if p
            ),
        }
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "flashtalk",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--max-sessions",
                str(max_sessions),
                "--device",
                "cpu",
                "--max-portraits",
                "2",
            ],  # the demo and one upload: the bounded cache is full after the warm-up
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=env,
        )

    async def wait_ready(self, timeout: float = 120.0) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(timeout=5) as http:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"flashtalk serve exited with {self.proc.returncode}: {self.log_text()[-500:]}")
                with contextlib.suppress(httpx.HTTPError):
                    if (await http.get(self.url + "/health")).status_code == 200:
                        return
                await asyncio.sleep(0.2)
        raise RuntimeError("flashtalk serve did not answer /health in time")

    def heap_mb(self) -> float:
        """The server's C heap in use (its /metrics `flashtalk_heap_in_use_bytes`)."""
        import httpx

        for line in httpx.get(self.url + "/metrics", timeout=10).text.splitlines():
            if line.startswith("flashtalk_heap_in_use_bytes "):
                return float(line.split()[1]) / 2**20
        raise RuntimeError("the server's /metrics has no flashtalk_heap_in_use_bytes (not glibc?)")

    def rss_mb(self) -> float:
        import psutil

        return psutil.Process(self.proc.pid).memory_info().rss / 2**20

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_text(self) -> str:
        return Path(self.log.name).read_text(errors="replace")

    def stop(self) -> None:
        stop_process(self.proc)
        self.log.close()
        with contextlib.suppress(OSError):
            os.unlink(self.log.name)


# ------------------------------------------------------------------------------------ raw clients


def ws_frame(payload: bytes, opcode: int) -> bytes:
    """One masked client WebSocket frame (RFC 6455)."""
    n = len(payload)
    if n < 126:
        head = bytes([0x80 | opcode, 0x80 | n])
    elif n < 1 << 16:
        head = bytes([0x80 | opcode, 0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head = bytes([0x80 | opcode, 0x80 | 127]) + n.to_bytes(8, "big")
    mask = os.urandom(4)
    body = (np.frombuffer(payload, np.uint8) ^ np.resize(np.frombuffer(mask, np.uint8), n)).tobytes()
    return head + mask + body


async def raw_ws(port: int, rcvbuf: int | None = None):
    """(reader, writer) after the WebSocket handshake, on a socket of our own (optionally a tiny receive buffer)."""
    sock = socket.socket()
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=sock, limit=1 << 16)
    writer.write(
        b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    head = await reader.readuntil(b"\r\n\r\n")
    if b" 101 " not in head.split(b"\r\n")[0]:
        raise Outcome("crash", f"handshake refused: {head[:60]!r}")
    return reader, writer


async def _ws_session(
    url: str, messages: list, *, expect_ready: bool | None = None, read_s: float = 10.0, max_size: int | None = None
) -> str:
    """Send `messages` (str / bytes) and read until the server closes: the outcome of the exchange."""
    import websockets
    from websockets.asyncio.client import connect

    ws = await connect(url.replace("http", "ws", 1) + "/ws", max_size=max_size, open_timeout=10, close_timeout=2)
    error, ready, server_closed = None, False, False
    try:
        for m in messages:
            await ws.send(m)
        deadline = time.monotonic() + read_s
        while time.monotonic() < deadline:
            try:
                msg = await asyncio.wait_for(ws.recv(), max(0.05, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                break
            if isinstance(msg, str):
                body = json.loads(msg)
                ready = ready or body.get("type") == "ready"
                if body.get("type") == "error":
                    error = body.get("reason", "")
                if body.get("type") == "end" and ready:
                    break  # served to the end of its speech
    except websockets.ConnectionClosed:
        server_closed = True
    finally:
        with contextlib.suppress(Exception):
            await ws.close()
    code = ws.close_code if server_closed or error is not None else None
    if not server_closed and error is None and not ready:
        raise Outcome("hang", f"neither ready nor an error within {read_s:g} s")
    if code in CLEAN_CODES and (error is not None or code == 1009):
        return "clean_error"
    if code in (1011, 1006) or (server_closed and code is None):
        raise Outcome("crash", f"closed with {code} {error or ''}".strip())
    if error is not None:
        raise Outcome("crash", f"error {error!r} with close code {code}")
    if expect_ready is False:
        raise Outcome("crash", "a bad message was accepted")
    return "ok"


def _start(**fields: Any) -> str:
    return json.dumps({"type": "start", "portrait_id": "demo", "pace": "fast", "idle": False, **fields})


def _pcm(seconds: float, rate: int = 16000) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * 180 * t) * 32767).astype("<i2").tobytes()


# ------------------------------------------------------------------------------------ hostile cases


HUGE = (
    "9" * 5000,
    "1e999",
    "-1e999",
    "NaN",
    "Infinity",
    "1" + "0" * 400,
    '"x"',
    "null",
    "[]",
    "{}",
    "true",
    "-1",
    "4.5",
    "2147483648",
)


def make_case(rng: random.Random, server: Server, kind: str) -> tuple[str, Callable]:
    url, port = server.url, server.port
    if kind == "bad_json":
        text = rng.choice(
            [
                "",
                "{",
                "not json",
                "[" * 100_000 + "]" * 100_000,
                '{"type": 1}',
                "\x00\xff",
                '{"type": "start", "portrait_id": "demo"' + "}" * rng.randint(0, 3),
            ]
        )
        return f"bad json {text[:20]!r}", lambda: _ws_session(url, [text], expect_ready=None)
    if kind == "start_values":
        key = rng.choice(
            ["sample_rate", "seed", "quality", "format", "video", "pace", "idle", "portrait_id", "controls", "portrait"]
        )
        value = rng.choice(HUGE)
        text = _start()[:-1] + f', "{key}": {value}}}'
        return f"start {key}={value[:12]}", lambda: _ws_session(url, [text, _pcm(0.04)], read_s=5)
    if kind == "controls":
        value = rng.choice(HUGE)
        name = rng.choice(["yaw", "pitch", "blink", "zoom", "x" * 1000])
        text = json.dumps({"type": "controls", "controls": {name: "__V__"}}).replace('"__V__"', value)
        return f"controls {name[:8]}={value[:12]}", lambda: _ws_session(url, [_start(), text], read_s=5)
    if kind == "big_text":
        size = rng.choice([(12 << 20) + 4096, 13 << 20, 20 << 20])
        text = _start()[:-1] + ', "pad": "' + "a" * size + '"}'
        return f"start message of {size >> 20} MiB", lambda: _ws_session(url, [text], read_s=8)
    if kind == "big_binary":
        size = rng.choice([(1 << 18) + 2, 1 << 20, 5 << 20])
        return f"PCM chunk of {size} bytes", lambda: _ws_session(url, [_start(), b"\x00" * size], read_s=8)
    if kind == "odd_rate":
        rate = rng.randint(4001, 48000) | 1
        audio = _pcm(0.1, rate)
        return f"sample_rate {rate}", lambda: _ws_session(
            url, [_start(sample_rate=rate), audio[: len(audio) // 2 * 2], '{"type": "end"}'], read_s=15
        )
    if kind == "nan_pcm":
        pcm = np.full(640, np.nan, "<f4").tobytes()
        return "NaN float PCM", lambda: _ws_session(url, [_start(format="f32le"), pcm], read_s=5)
    if kind == "commands":
        cmds = [
            rng.choice(
                [
                    '{"type": "end"}',
                    '{"type": "interrupt"}',
                    '{"type": "controls", "controls": {}}',
                    _pcm(rng.choice([0.0025, 0.005, 0.01])),
                ]
            )
            for _ in range(rng.randint(5, 20))
        ]
        return f"{len(cmds)} commands", lambda: _ws_session(url, [_start(), *cmds], read_s=1.5)
    if kind == "slow_reader":
        hold = rng.uniform(1.0, 3.0)
        return f"reader that never reads ({hold:.1f} s)", lambda: _slow_reader(port, hold)
    if kind == "stalled":
        return "handshake then nothing", lambda: _stalled(port, rng.uniform(0.5, 1.5))
    if kind == "truncated_upload":
        return "upload cut short", lambda: _truncated_upload(port, rng.randint(1000, 400_000))
    if kind == "chunked_upload":
        return "chunked upload of the demo photo", lambda: _chunked_upload(url, oversized=False)
    if kind == "oversized_upload":
        return "oversized chunked upload", lambda: _chunked_upload(url, oversized=True)
    junk = bytes(rng.randrange(256) for _ in range(rng.randint(1, 2000)))
    return "garbage HTTP", lambda: _garbage(port, junk)


async def _slow_reader(port: int, hold: float) -> str:
    reader, writer = await raw_ws(port, rcvbuf=4096)
    writer.write(ws_frame(_start(video="raw").encode(), 1))
    writer.write(ws_frame(_pcm(0.2), 2))  # 5 raw frames (3.9 MB) that nobody reads
    writer.write(ws_frame(b'{"type": "end"}', 1))
    await asyncio.sleep(hold)
    writer.transport.abort()
    return "ok"


async def _stalled(port: int, hold: float) -> str:
    reader, writer = await raw_ws(port)
    await asyncio.sleep(hold)
    writer.transport.abort()
    return "ok"


async def _http(port: int, request: bytes, read_s: float = 10.0) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(reader.read(1 << 16), read_s)
    finally:
        writer.transport.abort()


def _http_outcome(reply: bytes, ok: tuple[int, ...] = (200,)) -> str:
    if not reply:
        return "clean_error"  # the server closed an incomplete request
    try:
        status = int(reply.split(b" ", 2)[1])
    except (IndexError, ValueError):
        raise Outcome("crash", f"not an HTTP reply: {reply[:40]!r}") from None
    if status in ok:
        return "ok"
    if 400 <= status < 500:
        return "clean_error"
    raise Outcome("crash", f"HTTP {status}")


async def _truncated_upload(port: int, declared: int) -> str:
    head = f"POST /portraits HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {declared}\r\n\r\n".encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head + b"\xff\xd8" + b"\x00" * (declared // 3))
    await writer.drain()
    writer.transport.abort()  # gone before the body is complete: the server must just drop it
    return "clean_error"


async def _chunked_upload(url: str, oversized: bool) -> str:
    import httpx

    from flashtalk.serving.state import ASSETS_DIR

    data = b"x" * ((8 << 20) + 4096) if oversized else (ASSETS_DIR / "portrait.jpg").read_bytes()

    async def body():
        for i in range(0, len(data), 1 << 16):
            yield data[i : i + (1 << 16)]

    async with httpx.AsyncClient(timeout=CASE_TIMEOUT_S) as http:
        r = await http.post(url + "/portraits", content=body())
    if oversized:
        if r.status_code != 413:
            raise Outcome("crash", f"oversized chunked upload answered {r.status_code}")
        return "clean_error"
    if r.status_code != 200:
        raise Outcome("crash", f"valid chunked upload answered {r.status_code}: {r.text[:80]}")
    return "ok"


async def _garbage(port: int, junk: bytes) -> str:
    reply = await _http(port, junk + b"\r\n\r\n", read_s=5)
    return _http_outcome(reply, ok=(200, 404))


# ------------------------------------------------------------------------------------ the healthy client


def _healthy_main(url: str, stop, results) -> None:
    """The healthy client in a process of its own, so the hostile clients' work never delays it."""
    out: dict = {"frames": [], "latency": [], "dropped": 0, "error": None}

    async def main() -> None:
        flag = asyncio.Event()

        async def watch() -> None:
            while not stop.is_set():
                await asyncio.sleep(0.05)
            flag.set()

        watcher = asyncio.create_task(watch())
        t0 = time.monotonic()
        try:
            await healthy(url, flag, out)
        except Exception as exc:
            out["error"] = f"{type(exc).__name__}: {exc}"[:200]
        watcher.cancel()
        out["seconds"] = time.monotonic() - t0

    asyncio.run(main())
    results.put(out)


class Healthy:
    """Start the healthy client process; `finish()` stops it and returns its measurements."""

    def __init__(self, url: str) -> None:
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        self.stop, self.results = ctx.Event(), ctx.Queue()
        self.proc = ctx.Process(target=_healthy_main, args=(url, self.stop, self.results), daemon=True)
        self.proc.start()

    def finish(self, timeout: float = 90.0) -> dict:
        self.stop.set()
        try:
            out = self.results.get(timeout=timeout)
        finally:
            self.proc.join(timeout=10)
            if self.proc.is_alive():
                self.proc.kill()
                self.proc.join()
        return out


async def healthy(url: str, stop: asyncio.Event, out: dict) -> None:
    """Utterances of 0.6 s at real time (40-ms chunks), realtime pacing; per-frame latency in out["latency"]."""
    from websockets.asyncio.client import connect

    from flashtalk.serving import wire

    ws = await connect(url.replace("http", "ws", 1) + "/ws", max_size=None, open_timeout=30)
    await ws.send(json.dumps({"type": "start", "portrait_id": "demo", "idle": False}))
    ready = json.loads(await asyncio.wait_for(ws.recv(), 60))
    if ready.get("type") != "ready":
        raise RuntimeError(f"healthy session refused: {ready}")
    audio = _pcm(0.6)
    chunk = 1280  # 40 ms of s16le at 16 kHz
    sent: dict[int, float] = {}
    base = 0
    try:
        while not stop.is_set():
            t0 = time.monotonic()
            n = len(audio) // chunk
            for k in range(n):
                await asyncio.sleep(max(0.0, t0 + k * 0.04 - time.monotonic()))
                sent[base + k] = time.monotonic()
                await ws.send(audio[k * chunk : (k + 1) * chunk])
            await ws.send('{"type": "end"}')
            while True:
                msg = await asyncio.wait_for(ws.recv(), 60)
                if isinstance(msg, bytes):
                    f = wire.unpack_frame(msg)
                    now = time.monotonic()
                    out["frames"].append(now)
                    if f.index in sent:
                        out["latency"].append(now - sent.pop(f.index))
                elif json.loads(msg)["type"] == "end":
                    base = json.loads(msg)["frames"]
                    out["dropped"] = json.loads(msg).get("dropped", 0)
                    break
            sent.clear()
            await asyncio.sleep(0.2)
    finally:
        await ws.close()


def _summary(out: dict) -> tuple[float, float, float]:
    if out.get("error"):
        raise RuntimeError(f"the healthy session failed: {out['error']}")
    lat = np.array(out["latency"]) * 1000
    fps = len(out["frames"]) / max(out["seconds"], 1e-3)
    return (
        round(fps, 2),
        round(float(np.percentile(lat, 50)), 1) if lat.size else float("nan"),
        round(float(np.percentile(lat, 99)), 1) if lat.size else float("nan"),
    )


# ------------------------------------------------------------------------------------ campaign


async def _campaign(seed: int, n: int, budget_s: float) -> dict:
    rng = random.Random(seed)
    result: dict[str, Any] = {
        "family": "server",
        "cases": 0,
        "ok": 0,
        "clean_error": 0,
        "crash": 0,
        "hang": 0,
        "examples": [],
    }
    server = Server()
    start = time.monotonic()
    try:
        await server.wait_ready()
        loop = asyncio.get_running_loop()
        client = Healthy(server.url)
        await asyncio.sleep(min(8.0, budget_s * 0.1))
        fps0, p50_0, p99_0 = _summary(await loop.run_in_executor(None, client.finish))
        result.update(baseline_fps=fps0, baseline_latency_p50_ms=p50_0, baseline_latency_p99_ms=p99_0)
        result["rss_baseline_mb"] = round(server.rss_mb(), 1)

        client = Healthy(server.url)
        await asyncio.sleep(3.0)  # its start-up (a fresh interpreter) before the hostile clients
        slots = asyncio.Semaphore(CONCURRENCY)
        deadline = start + budget_s

        async def one(i: int) -> None:
            kind = KINDS[i % len(KINDS)] if i < len(KINDS) else rng.choice(KINDS)
            what, fn = make_case(rng, server, kind)
            async with slots:
                if time.monotonic() > deadline:
                    return
                try:
                    outcome = await asyncio.wait_for(fn(), CASE_TIMEOUT_S)
                    detail = ""
                except asyncio.TimeoutError:
                    outcome, detail = "hang", f"no answer in {CASE_TIMEOUT_S:g} s"
                except Outcome as exc:
                    outcome, detail = exc.kind, exc.detail
                except (OSError, EOFError, asyncio.IncompleteReadError) as exc:
                    outcome, detail = "crash", f"{type(exc).__name__}: {exc}"[:120]
                except Exception as exc:
                    outcome, detail = "crash", f"{type(exc).__name__}: {exc}"[:120]
                if not server.alive():
                    outcome, detail = "crash", "the server process died"
                result["cases"] += 1
                result[outcome] += 1
                if outcome in ("crash", "hang") and len(result["examples"]) < MAX_EXAMPLES:
                    result["examples"].append(f"{kind}: {what}: {detail}"[:200])

        # two cases of each kind first: the code paths they wake (decoders, codecs, error paths) take memory
        # once; what grows after that, over the remaining cases, is what a leak would look like
        warm = min(n, 2 * len(KINDS))
        await asyncio.gather(*(one(i) for i in range(warm)))
        await asyncio.sleep(2.0)  # let freed memory settle (the server trims its heap after sessions end)
        result["rss_warm_mb"] = round(server.rss_mb(), 1)
        result["heap_warm_mb"] = round(await loop.run_in_executor(None, server.heap_mb), 1)
        result["cases_after_warm"] = -result["cases"]
        await asyncio.gather(*(one(i) for i in range(warm, n)))
        result["cases_after_warm"] += result["cases"]
        await asyncio.sleep(2.0)
        result["rss_after_mb"] = round(server.rss_mb(), 1)  # the healthy session still live, as at rss_warm_mb
        result["heap_after_mb"] = round(await loop.run_in_executor(None, server.heap_mb), 1)
        live = await loop.run_in_executor(None, client.finish)
        fps, p50, p99 = _summary(live)
        result.update(
            healthy_fps=fps,
            healthy_latency_p50_ms=p50,
            healthy_latency_p99_ms=p99,
            healthy_dropped=live.get("dropped", 0),
        )
        log = server.log_text()
        if "Traceback" in log:
            result["crash"] += 1
            line = next(ln for ln in log.splitlines() if "Error" in ln or "Traceback" in ln)
            result["examples"] = (result["examples"] + [f"traceback in the server log: {line[:150]}"])[:MAX_EXAMPLES]
        if not server.alive():
            result["crash"] += 1
    finally:
        server.stop()
    result["seconds"] = round(time.monotonic() - start, 1)
    return result


def campaign(seed: int, n: int, budget_s: float) -> dict:
    """Run `n` hostile cases (seeded) within about `budget_s` seconds; see the module docstring."""
    return asyncio.run(_campaign(seed, n, budget_s))


__all__ = ["KINDS", "Server", "campaign", "make_case", "raw_ws", "ws_frame"]
