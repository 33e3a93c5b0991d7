"""A `flashtalk serve` started with `FLASHTALK_KERNELS` naming an implementation says so in every session's `ready`
message (`"kernels": {op: implementation}`), beside ours for the ops it leaves alone. The server is really started
(a subprocess on 127.0.0.1, stopped by its PID)."""

from __future__ import annotations

import json

import pytest

from tests.serve_process import flashtalk_serve

websockets_sync = pytest.importorskip("websockets.sync.client", reason="websockets is needed for the serve client")


def test_ready_names_the_implementation_chosen_by_environment(monkeypatch):
    monkeypatch.setenv("FLASHTALK_KERNELS", "warp2d=reference")
    with flashtalk_serve() as srv, websockets_sync.connect(srv.url, open_timeout=30) as ws:
        ws.send(json.dumps({"type": "start", "portrait_id": "demo", "sample_rate": 16000, "format": "s16le"}))
        ready = json.loads(ws.recv(timeout=60))
    assert ready["type"] == "ready", ready
    assert ready["kernels"]["warp2d"].startswith("reference"), ready["kernels"]
    assert ready["kernels"]["attention"].startswith("flashtalk"), ready["kernels"]
