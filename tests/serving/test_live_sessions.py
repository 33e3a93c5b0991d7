"""Live sessions keep their frames whatever other clients do (issue 32), against a real `flashtalk serve`
subprocess on 127.0.0.1: the healthy realtime session alone, then beside a fast client at 10x real time, a
client that never reads, odd sample rates and a burst of starts past capacity (tests/live_scenario.py
states how every bound is set: relative to the server's own render estimate, not to this machine)."""

from __future__ import annotations

import asyncio

import pytest

pytest.importorskip("starlette", reason="flashtalk serve needs starlette + uvicorn: pip install 'flashtalk[serve]'")
pytest.importorskip("websockets", reason="the clients talk WebSocket with websockets")
pytest.importorskip("httpx", reason="the test reads /metrics with httpx")

from tests import live_scenario
from tests.live_scenario import Scale, metric
from tests.serve_process import flashtalk_serve

MAX_SESSIONS = 16


def _alone(base: str, scale: Scale) -> dict:
    async def main():
        import httpx

        async with httpx.AsyncClient(base_url=base, timeout=30) as http:
            est = metric((await http.get("/metrics")).text, 'flashtalk_render_seconds_estimate{bucket="1"}')
        budget = min(10.0, max(live_scenario.MIN_BUDGET_S, live_scenario.BUDGET_FRAMES * est))
        return await live_scenario.live_session(base, scale.live_s / 2, budget, scale.timeout_s), budget

    live, budget = asyncio.run(main())
    return live, budget


def test_a_live_session_keeps_its_frames_beside_hostile_clients_preview():
    scale = Scale()
    with flashtalk_serve("--max-sessions", str(MAX_SESSIONS)) as server:
        alone, budget = _alone(server.base, scale)
        assert alone["frames"] == alone["expected"] and alone["missed"] == 0, alone
        assert alone["max_latency_s"] <= budget + live_scenario.TRANSPORT_S, (alone["max_latency_s"], budget)
        _never_reader_is_paused(server.base)
        result = asyncio.run(live_scenario.run(server.base, scale, MAX_SESSIONS))
        live_scenario.check(result)
        assert server.proc.poll() is None


def _never_reader_is_paused(base: str) -> None:
    """3 s of speech (75 raw frames) from a client that never reads: paused once its send queue is full
    (the frames that fill the 8-MB queue and the socket buffers are rendered, no more), nothing rendered
    only to be dropped."""
    import httpx

    before = metric(httpx.get(base + "/metrics").text, 'flashtalk_frames_rendered_pace_total{pace="fast"}')
    asyncio.run(live_scenario.never_reader(base, 3.0, 4.0))
    text = httpx.get(base + "/metrics").text
    rendered = metric(text, 'flashtalk_frames_rendered_pace_total{pace="fast"}') - before
    assert (
        metric(text, "flashtalk_backpressure_pauses_total") >= 1 and metric(text, "flashtalk_frames_paused_total") > 0
    )
    assert 0 < rendered < 40, rendered  # 8 MB of 786-KB raw frames: ~11, plus what the socket buffers hold
    assert metric(text, "flashtalk_frames_dropped_total") == 0, text


@pytest.mark.slow
def test_a_live_session_keeps_its_frames_beside_hostile_clients_network_tiny():
    """The same with the full network (seeded tiny weights), which renders about a frame a second on a CPU:
    a few frames per client; the burst is all refused (one live session is all that capacity holds)."""
    scale = Scale(live_s=0.16, fast_s=0.24, odd_s=0.08, never_reader_s=0.08, timeout_s=120.0)
    with flashtalk_serve("--max-sessions", str(MAX_SESSIONS), "--seeded-weights", "--preset", "tiny") as server:
        result = asyncio.run(live_scenario.run(server.base, scale, MAX_SESSIONS))
        live_scenario.check(result)
        assert server.proc.poll() is None
