"""`flashtalk profile` on the CPU (tiny preset, one frame): a trace with the frame range and the convolutions."""

from __future__ import annotations

import json

import pytest

from flashtalk.cli import main


@pytest.mark.slow
def test_profile_writes_a_trace(tmp_path, capsys):
    out = tmp_path / "trace.json"
    rc = main(
        [
            "profile",
            "--device",
            "cpu",
            "--preset",
            "tiny",
            "--frames",
            "1",
            "--warmup",
            "0",
            "--batch",
            "1",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    trace = json.loads(out.read_text())
    names = {e.get("name", "") for e in trace["traceEvents"]}
    assert any(n.startswith("frames 0..") for n in names)
    assert any("conv" in n for n in names)
    assert "1 frames traced" in capsys.readouterr().out
