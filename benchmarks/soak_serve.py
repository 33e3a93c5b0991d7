"""Soak / load test of `flashtalk serve` over loopback: N concurrent sessions stream speech at real time.

    python benchmarks/soak_serve.py --sessions 4 --seconds 20            # starts its own server in-process
    python benchmarks/soak_serve.py --url ws://127.0.0.1:8000/ws --token T  # an already running server

Bounded: stops after --seconds of streaming or --max-requests WebSocket sessions, whichever first; only
loopback URLs are accepted. Each session sends 40-ms PCM chunks paced at real time (pace "fast", so the
server sends frames as soon as they are ready) and measures, per frame, the time from sending the chunk
that completed the frame's audio to receiving the frame (end to end: queueing, motion, render, JPEG,
WebSocket). Reports sessions held, frame latency p50/p99, and dropped frames (frames the audio sent
should give, minus frames received).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import subprocess
import sys
import time
from urllib.parse import urlparse

import numpy as np

from flashtalk.serving import protocol
from flashtalk.serving.server import is_loopback

CHUNK_S = 0.04


def _speech(seconds: float, seed: int) -> bytes:
    t = np.arange(int(seconds * 16000)) / 16000
    rng = np.random.default_rng(seed)
    x = (0.3 * np.sin(2 * np.pi * 170 * t) + 0.05 * rng.standard_normal(len(t))) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))
    return (x * 32767).astype("<i2").tobytes()


async def _session(aiohttp, url: str, token: str | None, seconds: float, seed: int, out: dict) -> None:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    pcm = _speech(seconds, seed)
    step = int(CHUNK_S * 16000) * 2
    sent_at: list[float] = []  # per chunk: when it was sent
    async with aiohttp.ClientSession(headers=headers) as http:
        async with http.ws_connect(url, max_msg_size=0) as ws:
            await ws.send_str(json.dumps({"type": "start", "portrait_id": "demo", "pace": "fast", "idle": False,
                                          "seed": seed}))
            ready = await ws.receive_json(timeout=120)
            if ready["type"] != "ready":
                out["refused"] += 1
                return
            out["held"] += 1
            out["peak"] = max(out["peak"], out["held"])

            async def send() -> None:
                t0 = time.monotonic()
                for k, i in enumerate(range(0, len(pcm), step)):
                    await asyncio.sleep(max(0.0, t0 + k * CHUNK_S - time.monotonic()))
                    sent_at.append(time.monotonic())
                    await ws.send_bytes(pcm[i:i + step])
                await ws.send_str('{"type": "end"}')

            sender = asyncio.create_task(send())
            expected = None
            received = 0
            try:
                while True:
                    msg = await ws.receive(timeout=max(30.0, 4 * seconds))
                    if msg.type == aiohttp.WSMsgType.BINARY:
                        frame = protocol.unpack_frame(msg.data)
                        received += 1
                        # frame i needs audio up to (i + 1) * 40 ms: chunk i (chunks are one frame long)
                        if frame.index < len(sent_at):
                            out["latency"].append(time.monotonic() - sent_at[frame.index])
                    elif msg.type == aiohttp.WSMsgType.TEXT:
                        event = json.loads(msg.data)
                        if event["type"] == "end":
                            expected = event["frames"]
                            break
                        if event["type"] == "error":
                            out["errors"].append(event["reason"])
                            break
                    else:
                        break
            finally:
                sender.cancel()
                out["held"] -= 1
            should = -(-len(pcm) // 2 // 640)
            out["frames"] += received
            out["dropped"] += max(0, (expected or should) - received)


async def _main(args) -> dict:
    import aiohttp
    from aiohttp.test_utils import TestServer

    server = None
    url = args.url
    if url is None:
        from flashtalk.serving.server import ServeConfig, create_app

        server = TestServer(create_app(ServeConfig(max_sessions=max(args.sessions, 1), device=args.device)),
                            host="127.0.0.1")
        await server.start_server()
        url = str(server.make_url("/ws"))
    out = {"held": 0, "peak": 0, "refused": 0, "frames": 0, "dropped": 0, "latency": [], "errors": []}
    deadline = time.monotonic() + args.seconds
    requests = 0

    async def worker(w: int) -> None:
        nonlocal requests
        while time.monotonic() < deadline and requests < args.max_requests:
            requests += 1
            clip = min(args.clip_seconds, max(0.2, deadline - time.monotonic()))
            await _session(aiohttp, url, args.token, clip, requests, out)

    t0 = time.monotonic()
    try:
        await asyncio.gather(*(worker(w) for w in range(args.sessions)))
    finally:
        if server is not None:
            await server.close()
    wall = time.monotonic() - t0
    lat = np.array(out["latency"]) * 1000
    return {
        "sessions_requested": args.sessions, "sessions_held_peak": out["peak"], "requests": requests,
        "refused": out["refused"], "frames": out["frames"], "dropped_frames": out["dropped"],
        "aggregate_fps": round(out["frames"] / wall, 1),
        "latency_ms_p50": round(float(np.percentile(lat, 50)), 1) if lat.size else None,
        "latency_ms_p99": round(float(np.percentile(lat, 99)), 1) if lat.size else None,
        "errors": out["errors"][:5], "wall_s": round(wall, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="ws://127.0.0.1:PORT/ws of a running server (default: start one here)")
    parser.add_argument("--token")
    parser.add_argument("--sessions", type=int, default=4, help="concurrent sessions (default 4)")
    parser.add_argument("--seconds", type=float, default=20.0, help="stop starting sessions after this (default 20)")
    parser.add_argument("--clip-seconds", type=float, default=5.0, help="speech per session (default 5)")
    parser.add_argument("--max-requests", type=int, default=100, help="most sessions opened in total (default 100)")
    parser.add_argument("--device", default=None)
    args = parser.parse_args()
    if args.url is not None and not is_loopback(urlparse(args.url).hostname or ""):
        parser.error(f"--url must be a loopback address (this is a load generator); got {args.url}")
    if not (1 <= args.sessions <= 256 and 0 < args.seconds <= 600 and 1 <= args.max_requests <= 10000):
        parser.error("bounds: 1 <= --sessions <= 256, 0 < --seconds <= 600, 1 <= --max-requests <= 10000")
    result = asyncio.run(_main(args))
    import torch

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu ({platform.processor() or 'cpu'})"
    result.update(device=device, torch=torch.__version__, commit=commit, date=time.strftime("%Y-%m-%d"),
                  command=" ".join([sys.executable.split("/")[-1]] + sys.argv))
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
