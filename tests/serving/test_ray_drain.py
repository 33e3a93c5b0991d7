"""Issue 32 on Ray Serve: two local preview replicas (127.0.0.1, dashboard and usage stats off), each with
its own scheduler, capacity estimate and admission. The live-session scenario through Serve's proxy
(tests/live_scenario.py: bounds relative to the replicas' own estimates); then a scale-down to one
replica (Ray may also replace the survivor by a new version): a replica being drained gets no new
session and keeps its live session fed to the end of its speech, then goes away; a session that does not
end is cut at the drain timeout. One cluster for the file; slow (starting Ray and the replicas takes most of the time)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time

import pytest

pytest.importorskip("ray.serve", reason="Ray Serve is needed: pip install 'flashtalk[ray]'")
httpx = pytest.importorskip("httpx", reason="the tests talk HTTP with httpx")
websockets = pytest.importorskip("websockets", reason="the tests talk WebSocket with websockets")

from flashtalk.serving import ray_app  # noqa: E402
from flashtalk.serving.state import BackendSpec, ServeConfig  # noqa: E402
from tests import live_scenario  # noqa: E402
from tests.live_scenario import Scale  # noqa: E402

pytestmark = pytest.mark.slow

SESSIONS = 8  # per replica: above what a CPU replica's capacity admits, so capacity refuses first
DRAIN_TIMEOUT_S = 20.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _deploy(port: int, replicas: int) -> None:
    from ray import serve

    options = ray_app.RayOptions(
        replicas=replicas, sessions=SESSIONS, num_cpus=1, gpus=False, drain_timeout_s=DRAIN_TIMEOUT_S
    )
    serve.run(
        ray_app.deployment(ServeConfig(port=port), options, BackendSpec()),
        name=ray_app.APP_NAME,
        route_prefix="/",
        blocking=False,
    )


def _running() -> int:
    """Replicas the controller counts as running (one being drained is no longer among them)."""
    from ray import serve

    deployment = serve.status().applications[ray_app.APP_NAME].deployments[ray_app.DEPLOYMENT]
    return deployment.replica_states.get("RUNNING", 0)


def _alive(replica: str) -> bool:
    import ray

    try:
        ray.get_actor(f"SERVE_REPLICA::{ray_app.APP_NAME}#{ray_app.DEPLOYMENT}#{replica}", namespace="serve")
    except ValueError:
        return False
    return True


@pytest.fixture(scope="module")
def cluster():
    from ray import serve

    port = _free_port()
    ray_app.start_local_ray(num_cpus=4)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    _deploy(port, 2)
    ray_app._warm(f"http://127.0.0.1:{port}/")
    try:
        yield {"url": f"http://127.0.0.1:{port}", "port": port}
    finally:
        ray_app.shutdown()


def test_a_live_session_keeps_its_frames_beside_hostile_clients_on_two_replicas(cluster):
    scale = Scale(live_s=4.0, fast_s=2.0, odd_s=0.5, never_reader_s=1.0, timeout_s=90.0)
    result = asyncio.run(
        live_scenario.run(cluster["url"], scale, SESSIONS, replicas=2, min_budget_s=live_scenario.RAY_MIN_BUDGET_S)
    )
    live_scenario.check(result)


async def _on_both_replicas(url: str, budget_s: float) -> dict[str, tuple]:
    """Live sessions started until each replica holds one (extra ones closed)."""
    held: dict[str, tuple] = {}
    extra = []
    for _ in range(12):
        ws, ready = await live_scenario.open_live(url, budget_s)
        assert ready["type"] == "ready", ready
        if ready["replica"] in held:
            extra.append(ws)
        else:
            held[ready["replica"]] = (ws, ready)
        if len(held) == 2:
            break
    for ws in extra:
        await ws.close()
    assert len(held) == 2, list(held)
    return held


def test_drained_replicas_take_no_new_session_and_feed_their_live_ones_to_the_end(cluster):
    """Scaled down to one replica while a live session runs on each (Ray may also replace the survivor by a
    new version: then both drain). Both sessions are fed to the end of their speech as if nothing happened;
    every session started meanwhile is served (or refused with 1013), never by a replica already drained;
    the drained replicas go away once their session has ended, well before the drain timeout."""
    url, budget_s = cluster["url"], 1.0

    async def main():
        held = await _on_both_replicas(url, budget_s)
        lives = {  # shorter than the drain timeout
            r: asyncio.create_task(live_scenario.live_session(url, 8.0, budget_s, 90.0, opened))
            for r, opened in held.items()
        }
        await asyncio.sleep(1.0)
        scale_down = asyncio.get_running_loop().run_in_executor(None, _deploy, cluster["port"], 1)
        probes = []
        while not scale_down.done() or len(probes) < 3:  # new sessions while the drain goes on
            ws, ready = await live_scenario.open_live(url, budget_s)
            assert ready["type"] == "ready" or ready["reason"], ready
            probes.append((time.monotonic(), ready.get("replica")))
            await ws.close()
            await asyncio.sleep(1.0)
        await scale_down
        assert _running() == 1
        results = {r: await t for r, t in lives.items()}
        for r, live in results.items():  # fed to the end, on time, while their replica drained
            assert live["event"]["type"] == "end", (r, live)
            assert live["frames"] >= 0.95 * live["expected"] and live["missed"] <= 0.05 * live["expected"], (r, live)
            assert live["max_latency_s"] <= budget_s + live_scenario.TRANSPORT_S, (r, live)
        t0 = time.monotonic()
        drained = [r for r in held if _alive(r)]
        while any(_alive(r) for r in held if r in drained) and len(drained) > 1:
            assert time.monotonic() - t0 < DRAIN_TIMEOUT_S / 2, "a drained replica did not stop after its session"
            await asyncio.sleep(0.5)
        gone = {r for r in held if not _alive(r)}
        assert gone, "no replica was drained"
        for at, replica in probes:  # no new session on a replica once it was gone ...
            assert replica is None or replica not in gone or at < t0, (probes, gone)
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            assert not set(await live_scenario.replica_metrics(http, 6)) & gone  # ... nor after

    asyncio.run(main())


def test_a_session_that_does_not_end_is_cut_at_the_drain_timeout(cluster):
    """Sessions that go on past the drain timeout keep being served until it, and are cut then (Ray ends
    the replica: the client sees the connection close without a close frame of ours)."""
    url = cluster["url"]
    _deploy(cluster["port"], 2)  # back to two replicas (serve.run returns when both run)
    assert _running() == 2

    async def main():
        held = await _on_both_replicas(url, 1.0)
        closed: dict[str, float] = {}
        started = time.monotonic()

        async def hold(replica: str, ws) -> None:
            """Speech at real time, frames read as they come, until the server closes the session."""
            chunk = live_scenario.speech(0.04)
            try:
                while time.monotonic() - started < DRAIN_TIMEOUT_S + 30:
                    await ws.send(chunk)
                    with contextlib.suppress(asyncio.TimeoutError):
                        while True:
                            await asyncio.wait_for(ws.recv(), 0.04)
            except websockets.ConnectionClosed:
                closed[replica] = time.monotonic() - started

        tasks = [asyncio.create_task(hold(r, ws)) for r, (ws, _) in held.items()]
        await asyncio.get_running_loop().run_in_executor(None, _deploy, cluster["port"], 1)
        while not closed and time.monotonic() - started < DRAIN_TIMEOUT_S + 30:
            await asyncio.sleep(0.2)
        for t in tasks:
            t.cancel()
        for ws, _ in held.values():
            await ws.close()
        # fed up to the drain timeout, cut then (a rolling redeploy drains the other replica after it)
        assert closed and DRAIN_TIMEOUT_S <= min(closed.values()) <= DRAIN_TIMEOUT_S + 25, closed

    asyncio.run(main())
