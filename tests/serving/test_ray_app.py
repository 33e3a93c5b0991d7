"""FlashTalk on Ray Serve: a local Ray on 127.0.0.1 (dashboard and usage stats off), 2 CPU replicas of the
preview backend, 2 sessions each, everything through Serve's HTTP proxy. Spread, portrait affinity,
admission, a replica killed mid-session, and no Ray process left after shutdown. One cluster for the
file (starting Ray and deploying takes most of its time)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import socket
import time

import numpy as np
import pytest

pytest.importorskip("ray.serve", reason="Ray Serve is needed: pip install 'flashtalk[ray]'")
httpx = pytest.importorskip("httpx", reason="the tests talk HTTP with httpx")
websockets = pytest.importorskip("websockets", reason="the tests talk WebSocket with websockets")
psutil = pytest.importorskip("psutil", reason="psutil finds leftover Ray processes")
from PIL import Image  # noqa: E402
from websockets.asyncio.client import connect  # noqa: E402

from flashtalk.serving import ray_app, wire  # noqa: E402
from flashtalk.serving.state import ASSETS_DIR, BackendSpec, ServeConfig  # noqa: E402

pytestmark = pytest.mark.slow

SESSIONS, REPLICAS = 2, 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster():
    import ray
    from ray import serve

    port = _free_port()
    ray_app.start_local_ray(num_cpus=4)
    session_dir = ray._private.worker._global_node.get_session_dir_path()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    options = ray_app.RayOptions(replicas=REPLICAS, sessions=SESSIONS, num_cpus=1, gpus=False, drain_timeout_s=30)
    serve.run(
        ray_app.deployment(ServeConfig(port=port), options, BackendSpec()),
        name=ray_app.APP_NAME,
        route_prefix="/",
        blocking=False,
    )
    info = {"url": f"http://127.0.0.1:{port}", "session_dir": session_dir}
    try:
        yield info
    finally:
        ray_app.shutdown()


def _speech(seconds: float) -> bytes:
    t = np.arange(int(seconds * 16000)) / 16000
    return (0.3 * np.sin(2 * np.pi * 180 * t) * 32767).astype("<i2").tobytes()


async def _start(url: str, portrait_id: str = "demo", headers=None, timeout: float = 60):
    ws = await connect(
        url.replace("http", "ws", 1) + "/ws", max_size=None, additional_headers=headers, open_timeout=timeout
    )
    await ws.send(json.dumps({"type": "start", "portrait_id": portrait_id, "pace": "fast", "idle": False}))
    return ws, json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def _clip(ws, seconds: float = 0.2, timeout: float = 90) -> list[wire.FrameMessage]:
    await ws.send(_speech(seconds))
    await ws.send('{"type": "end"}')
    frames = []
    while True:
        msg = await asyncio.wait_for(ws.recv(), timeout)
        if isinstance(msg, bytes):
            frames.append(wire.unpack_frame(msg))
        elif json.loads(msg)["type"] == "end":
            return frames


async def _refusal(ws) -> tuple[dict | None, int | None]:
    error = None
    with contextlib.suppress(websockets.ConnectionClosed, asyncio.TimeoutError):
        while True:
            msg = await asyncio.wait_for(ws.recv(), 10)
            if isinstance(msg, str) and json.loads(msg)["type"] == "error":
                error = json.loads(msg)
    return error, ws.close_code


def test_sessions_spread_over_replicas_and_follow_their_portrait(cluster):
    async def main():
        url = cluster["url"]
        wss, readies = [], []
        for _ in range(2 * SESSIONS):  # one after another, so the router sees each replica's load
            ws, ready = await _start(url)
            assert ready["type"] == "ready", ready
            wss.append(ws)
            readies.append(ready)
        assert len({r["replica"] for r in readies}) == REPLICAS  # spread over both replicas
        clips = await asyncio.gather(*(_clip(ws) for ws in wss))
        for frames in clips:
            assert [f.index for f in frames] == list(range(5))  # 0.2 s at 25 FPS, in order
        for ws in wss:
            await ws.close()
        await asyncio.sleep(0.5)
        # a burst of handshakes at once: each is served or refused with 1013, never an HTTP error
        burst = await asyncio.gather(*(_start(url) for _ in range(3)))
        assert all(r["type"] == "ready" or (r["type"] == "error" and "full" in r["reason"]) for _, r in burst), burst
        for ws, _ in burst:
            await ws.close()

        # a portrait uploaded once: sessions that name it go to the replica that encoded it
        buf = io.BytesIO()
        Image.open(ASSETS_DIR / "portrait.jpg").transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(buf, "JPEG")
        async with httpx.AsyncClient(base_url=url, timeout=60) as http:
            r = await http.post("/portraits", content=buf.getvalue())
            assert r.status_code == 200, r.text
            pid = r.json()["id"]
            await asyncio.sleep(1.0)  # the replica's multiplexed ids reach the router
            homes = []
            for _ in range(3):
                ws, ready = await _start(url, pid, headers={"serve_multiplexed_model_id": pid})
                assert ready["type"] == "ready", ready
                homes.append(ready["replica"])
                await ws.close()
                await asyncio.sleep(0.3)
            assert len(set(homes)) == 1, homes
            # ... and without the header any replica can start it (it fetches the bytes and encodes once)
            seen, encoded = set(), {}
            for _ in range(6):
                ws, ready = await _start(url, pid)
                assert ready["type"] == "ready", ready
                seen.add(ready["replica"])
                await ws.close()
            assert seen == {r["replica"] for r in readies}
            for _ in range(20):
                text = (await http.get("/metrics")).text
                replica = text.split('flashtalk_replica_info{replica="')[1].split('"')[0]
                encoded[replica] = int(text.split("\nflashtalk_portraits_encoded_total ")[1].split()[0])
                if len(encoded) == REPLICAS:
                    break
            assert len(encoded) == REPLICAS and all(n <= 2 for n in encoded.values()), encoded  # demo + upload

    asyncio.run(main())


def test_full_cluster_refuses_at_once_and_admits_after_a_session_ends(cluster):
    async def main():
        url = cluster["url"]
        held = []
        for _ in range(REPLICAS * SESSIONS):
            ws, ready = await _start(url)
            assert ready["type"] == "ready", ready
            held.append(ws)
        t0 = time.monotonic()
        try:
            ws = await connect(url.replace("http", "ws", 1) + "/ws", max_size=None, open_timeout=10)
            await ws.send(json.dumps({"type": "start", "portrait_id": "demo"}))
            error, code = await _refusal(ws)
            assert code == wire.CLOSE_FULL and error is not None and "full" in error["reason"], (error, code)
        except websockets.InvalidStatus as exc:  # refused by the proxy's queue limit
            assert exc.response.status_code == 503
        assert time.monotonic() - t0 < 2.0
        await held.pop().close()
        await asyncio.sleep(0.5)
        ws, ready = await _start(url)
        assert ready["type"] == "ready", ready
        held.append(ws)
        for ws in held:
            await ws.close()

    asyncio.run(main())


def test_replica_killed_mid_session(cluster):
    import ray

    async def main():
        url = cluster["url"]
        sessions = []
        for _ in range(REPLICAS):
            ws, ready = await _start(url)
            assert ready["type"] == "ready", ready
            sessions.append((ws, ready["replica"]))
        if sessions[0][1] == sessions[1][1]:
            ws, ready = await _start(url)
            sessions.append((ws, ready["replica"]))
        (victim_ws, victim), (survivor_ws, survivor) = sessions[0], next(s for s in sessions if s[1] != sessions[0][1])
        before = time.monotonic()
        assert len(await _clip(survivor_ws, 0.2)) == 5
        rate_before = 5 / (time.monotonic() - before)
        name = f"SERVE_REPLICA::{ray_app.APP_NAME}#{ray_app.DEPLOYMENT}#{victim}"
        ray.kill(ray.get_actor(name, namespace="serve"), no_restart=True)
        with pytest.raises((websockets.ConnectionClosed, asyncio.TimeoutError)):
            await _clip(victim_ws, 0.2, timeout=30)
        assert victim_ws.close_code not in (None, 1000), victim_ws.close_code  # ended with an error
        before = time.monotonic()
        assert [f.index for f in await _clip(survivor_ws, 0.2)] == list(range(5, 10))
        rate_after = 5 / (time.monotonic() - before)
        assert rate_after > 0.3 * rate_before, (rate_before, rate_after)
        ws, ready = await _start(url)  # a new session goes to the survivor (the replacement is still starting)
        assert ready["type"] == "ready" and ready["replica"] == survivor, ready
        for w, _ in sessions:
            await w.close()
        await ws.close()

    asyncio.run(main())


def test_shutdown_leaves_no_ray_process(cluster):
    ray_app.shutdown()
    marker = os.path.basename(cluster["session_dir"])
    left = []
    for _ in range(100):
        left = []
        for p in psutil.process_iter(["pid", "cmdline"]):
            with contextlib.suppress(psutil.Error):
                if any(marker in part for part in p.info["cmdline"] or ()):
                    left.append(p.info["pid"])
        if not left:
            break
        time.sleep(0.2)
    assert not left, f"Ray processes left behind: {left}"


def test_serve_config_file_builds_the_documented_deployment():
    """deploy/ray-serve.yaml: its import path and args build the deployment with the settings it documents."""
    import importlib
    from pathlib import Path

    import yaml

    conf = yaml.safe_load((Path(__file__).resolve().parents[2] / "deploy" / "ray-serve.yaml").read_text())
    assert conf["http_options"]["host"] == "127.0.0.1"
    (application,) = conf["applications"]
    module, name = application["import_path"].split(":")
    bound = getattr(importlib.import_module(module), name)(application["args"])
    dep = bound._bound_deployment
    (documented,) = application["deployments"]
    assert dep.name == documented["name"] == ray_app.DEPLOYMENT
    assert dep.max_ongoing_requests == application["args"]["sessions"] + 1 == documented["max_ongoing_requests"]
    assert dep._deployment_config.graceful_shutdown_timeout_s == documented["graceful_shutdown_timeout_s"] > 20
    assert dep._deployment_config.max_queued_requests == documented["max_queued_requests"]
    with pytest.raises(Exception, match="unknown application args"):
        ray_app.app({"sesions": 2})
