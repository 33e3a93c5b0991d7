"""Soak / load test of a FlashTalk server: N concurrent sessions stream speech at real time through
`flashtalk.client`.

    python benchmarks/soak_serve.py --sessions 4 --seconds 20                 # starts `flashtalk serve` here
    python benchmarks/soak_serve.py --url ws://127.0.0.1:8000/ws --token T    # any running server (a Ray
                                                                              # Serve deployment too)
    python benchmarks/soak_serve.py --latency low                              # passed on in each start

Bounded: stops starting sessions after --seconds, or after --max-requests sessions, whichever comes
first. Each session sends 40-ms PCM chunks paced at real time (--pace realtime, the default: live sessions,
served earliest deadline first and admitted by capacity; --pace fast: bulk sessions, sent each frame as
soon as it is ready and given the capacity left over; idle frames off). It measures:
* first-frame latency: the first chunk sent -> the first frame received;
* per-frame latency: the chunk that completed a frame's look-ahead (its own 40 ms plus the `lookahead_ms`
  the server announced in "ready") -> that frame received: queueing, motion, render, JPEG and WebSocket,
  beyond the look-ahead;
* the look-ahead announced, sessions held (peak), refusals, dropped frames (frames the audio sent should
  give, minus frames received) and the aggregate FPS over the run;
* deadline misses (frames the server rendered after their latency budget, from each session's "end") and
  refusals by reason (the 1013 reason: "full", "capacity" or "draining"); with the server's /metrics
  reachable, its own deadline misses per pace, capacity estimate and committed load at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `benchmarks.*` when run as a script

from benchmarks.processes import free_port, stop_process
from flashtalk import client

CHUNK_S = 0.04
REFUSED_BACKOFF_S = 0.5
HOP = 640  # 16-kHz samples per 40-ms frame


def _speech(seconds: float, seed: int) -> bytes:
    t = np.arange(int(seconds * 16000)) / 16000
    rng = np.random.default_rng(seed)
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 3 * t)
    x = (0.3 * np.sin(2 * np.pi * 170 * t) + 0.05 * rng.standard_normal(len(t))) * envelope
    return (x * 32767).astype("<i2").tobytes()


def _percentiles(values: list[float]) -> dict[str, float | None]:
    a = np.array(values) * 1000
    return {
        "p50": round(float(np.percentile(a, 50)), 1) if a.size else None,
        "p99": round(float(np.percentile(a, 99)), 1) if a.size else None,
    }


async def _session(args, url: str, seconds: float, seed: int, out: dict) -> None:
    pcm = _speech(seconds, seed)
    step = HOP * 2
    chunks = -(-len(pcm) // step)
    portrait = {"portrait": args.portrait} if args.portrait else {"portrait_id": "demo"}
    try:
        stream = await client.connect(
            url,
            token=args.token,
            pace=args.pace,
            idle=False,
            seed=seed,
            latency=args.latency,
            ready_timeout=120,
            **portrait,
        )
    except client.Refused as exc:
        out["refused"] += 1
        reason = next((r for r in ("capacity", "draining", "full") if r in str(exc)), "other")
        out["refused_by"][reason] = out["refused_by"].get(reason, 0) + 1
        await asyncio.sleep(REFUSED_BACKOFF_S)  # as a client should: try again a little later
        return
    except client.ClientError as exc:
        out["errors"].append(str(exc))
        return
    lookahead_ms = stream.ready.lookahead_ms
    out["lookahead_ms"].add(lookahead_ms)
    lead = math.ceil(lookahead_ms / (CHUNK_S * 1000) - 1e-9)  # chunks past a frame's own that it waits for
    out["held"] += 1
    out["peak"] = max(out["peak"], out["held"])
    sent_at: list[float] = []  # per chunk: when it was sent

    async def send() -> None:
        t0 = time.monotonic()
        for k in range(chunks):
            await asyncio.sleep(max(0.0, t0 + k * CHUNK_S - time.monotonic()))
            sent_at.append(time.monotonic())
            await stream.send_audio(pcm[k * step : (k + 1) * step])
        await stream.end()

    sender = asyncio.create_task(send())
    received, expected = 0, None
    try:
        for _ in range(10 * chunks + 10):
            item = await asyncio.wait_for(stream.recv(), max(30.0, 4 * seconds))
            now = time.monotonic()
            if isinstance(item, client.Frame):
                if received == 0:
                    out["first"].append(now - sent_at[0])
                received += 1
                k = min(item.index + lead, chunks - 1)  # the chunk that completed this frame's look-ahead
                if k < len(sent_at):
                    out["latency"].append(now - sent_at[k])
            elif item is None or item.type == "end":
                expected = None if item is None else item.frames
                if item is not None and isinstance(item.info.get("dropped"), int):
                    out["server_dropped"] += item.info["dropped"]  # servers that report their own drops
                if item is not None and isinstance(item.info.get("missed"), int):
                    out["missed"] += item.info["missed"]  # ... and their deadline misses
                break
    except (client.ClientError, asyncio.TimeoutError) as exc:
        out["errors"].append(str(exc) or "timed out waiting for a frame")
    finally:
        sender.cancel()
        out["held"] -= 1
        await stream.stop()
    out["frames"] += received
    out["dropped"] += max(0, (expected or -(-len(pcm) // 2 // HOP)) - received)


@contextlib.contextmanager
def _local_server(args):
    """`flashtalk serve` on a free loopback port (the preview backend), stopped by its PID at the end."""
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "flashtalk",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--max-sessions",
        str(args.sessions),
    ] + (["--device", args.device] if args.device else [])
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(600):  # up to a minute for the server to come up
            if proc.poll() is not None:
                raise SystemExit(f"soak_serve: {' '.join(cmd)} exited with {proc.returncode}")
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).close()
                break
            except OSError:
                time.sleep(0.1)
        else:
            raise SystemExit("soak_serve: the server did not answer /health within a minute")
        yield f"ws://127.0.0.1:{port}/ws"
    finally:
        stop_process(proc)


async def _soak(args, url: str) -> dict:
    out = {
        "held": 0,
        "peak": 0,
        "refused": 0,
        "frames": 0,
        "dropped": 0,
        "server_dropped": 0,
        "missed": 0,
        "refused_by": {},
        "first": [],
        "latency": [],
        "errors": [],
        "lookahead_ms": set(),
    }
    deadline = time.monotonic() + args.seconds
    requests = 0

    async def worker() -> None:
        nonlocal requests
        while time.monotonic() < deadline and requests < args.max_requests:
            requests += 1
            clip = min(args.clip_seconds, max(0.2, deadline - time.monotonic()))
            await _session(args, url, clip, requests, out)

    t0 = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(args.sessions)))
    wall = time.monotonic() - t0
    return {
        "sessions_requested": args.sessions,
        "sessions_held_peak": out["peak"],
        "requests": requests,
        "refused": out["refused"],
        "refused_by_reason": out["refused_by"],
        "frames": out["frames"],
        "deadline_misses": out["missed"],
        "server_metrics": _server_metrics(url, args.token),
        "dropped_frames": out["dropped"],
        "server_dropped_frames": out["server_dropped"],
        "aggregate_fps": round(out["frames"] / wall, 1),
        "latency_mode": args.latency or "server default",
        "lookahead_ms": sorted(out["lookahead_ms"]),
        "first_frame_ms": _percentiles(out["first"]),
        "frame_latency_ms": _percentiles(out["latency"]),
        "errors": out["errors"][:5],
        "wall_s": round(wall, 1),
    }


def _server_metrics(url: str, token: str | None) -> dict:
    """Deadline misses per pace, refusals per reason, capacity and committed load from the server's
    /metrics (this replica's, behind a proxy); {} where it cannot be read."""
    base = url.replace("ws", "http", 1).rsplit("/ws", 1)[0]
    request = urllib.request.Request(base + "/metrics", headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return {}
    wanted = {
        "flashtalk_deadline_misses_total": "deadline_misses",
        "flashtalk_sessions_refused_reason_total": "refused",
        "flashtalk_capacity_fps": "capacity_fps",
        "flashtalk_committed_fps": "committed_fps",
        "flashtalk_frames_paused_total": "frames_paused",
    }
    out: dict = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        key = wanted.get(name.split("{")[0])
        if key is None or line.startswith("#"):
            continue
        if "{" in name:
            out.setdefault(key, {})[name.split('"')[1]] = float(value)
        else:
            out[key] = float(value)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="ws://HOST:PORT/ws of a running server (default: start one on loopback)")
    parser.add_argument("--token", default=os.environ.get("FLASHTALK_TOKEN"))
    parser.add_argument("--latency", choices=("low", "exact"), help="streaming mode asked for in each start")
    parser.add_argument(
        "--pace", choices=("realtime", "fast"), default="realtime", help="session pace (default realtime: live)"
    )
    parser.add_argument("--portrait", help="portrait image sent in each start (default: the server's demo)")
    parser.add_argument("--sessions", type=int, default=4, help="concurrent sessions (default 4)")
    parser.add_argument("--seconds", type=float, default=20.0, help="stop starting sessions after this (default 20)")
    parser.add_argument("--clip-seconds", type=float, default=5.0, help="speech per session (default 5)")
    parser.add_argument("--max-requests", type=int, default=100, help="most sessions opened in total (default 100)")
    parser.add_argument("--device", default=None, help="device of the server started here")
    args = parser.parse_args()
    if not (
        1 <= args.sessions <= 256
        and 0 < args.seconds <= 600
        and 1 <= args.max_requests <= 10000
        and 0.04 <= args.clip_seconds <= 120
    ):
        parser.error(
            "bounds: 1 <= --sessions <= 256, 0 < --seconds <= 600, 1 <= --max-requests <= 10000, "
            "0.04 <= --clip-seconds <= 120"
        )
    if args.portrait:
        if not os.path.isfile(args.portrait):
            parser.error(f"--portrait {args.portrait!r} is not a file")
        with open(args.portrait, "rb") as f:
            args.portrait = f.read()
    if args.url is None:
        with _local_server(args) as url:
            result = asyncio.run(_soak(args, url))
        import torch

        server = (
            torch.cuda.get_device_name()
            if torch.cuda.is_available() and args.device != "cpu"
            else f"cpu ({platform.processor() or 'cpu'})"
        ) + ", flashtalk serve started here (preview)"
    else:
        result = asyncio.run(_soak(args, args.url))
        server = args.url
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    result.update(
        server=server,
        commit=commit,
        date=time.strftime("%Y-%m-%d"),
        command=" ".join([os.path.basename(sys.executable)] + [a if a != args.token else "***" for a in sys.argv]),
    )
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
