"""A CI-sized run of the server fuzz family (benchmarks/fuzz/server.py): a real `flashtalk serve` subprocess
(preview, 127.0.0.1), 120 seeded hostile cases beside one healthy real-time session, under 90 s.

The healthy session's figures are compared with its own baseline, measured alone on the same machine
just before: the hostile clients (and the campaign process that makes their 20-MB messages) share the
same CPU cores, so on a 2-core machine some slow-down is the machine, not the server; what must not
happen is the session stalling (the old failure: latency stuck at a stall's length, frames pinned)."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow

pytest.importorskip("starlette", reason="flashtalk serve needs starlette + uvicorn: pip install 'flashtalk[serve]'")
pytest.importorskip("websockets", reason="the fuzz clients talk WebSocket with websockets")
pytest.importorskip("psutil", reason="the campaign reads the server's memory with psutil")


def test_server_survives_hostile_clients_beside_a_healthy_session():
    from benchmarks.fuzz.server import campaign

    r = campaign(seed=20, n=120, budget_s=75)
    assert r["cases"] >= 100 and r["crash"] == 0 and r["hang"] == 0, r
    assert r["clean_error"] > 0 and r["ok"] > 0, r
    # the session keeps its latency and its frames: its frames go first, earliest deadline first, the hostile
    # sessions get what is left (measured on a loaded 2-core CPU: 1.25x of the baseline; before deadline
    # scheduling, 0.2-0.45x); the floor leaves room for this machine's load, not for the hostile sessions
    assert r["healthy_latency_p50_ms"] <= r["baseline_latency_p50_ms"] + 1000, r
    assert r["healthy_fps"] >= 0.5 * r["baseline_fps"], r
    # no leak: after two cases of each kind (code paths woken once, the 2-portrait cache full) the C heap in
    # use grows by what the first-time paths of the later cases still add (measured on a 2-core CPU: 45-57 MB
    # over 92 cases, plateaus per kind); the bound is 2x that. A leak of the 20-MB messages alone would be
    # over 500 MB. The resident size also keeps the allocator's freed pages: bounded loosely, for blow-ups.
    assert r["cases_after_warm"] >= 80 and r["heap_after_mb"] - r["heap_warm_mb"] < 115, r
    assert r["rss_after_mb"] - r["rss_baseline_mb"] < 400, r
