"""`flashtalk bench` on the CPU: the quick run writes JSON that matches the schema, Markdown and a PNG; bad arguments
give one-line errors; --compare reads an earlier report. No timing assertions: only that every case ran or says why
not."""

from __future__ import annotations

import copy
import json
import math

import pytest

from flashtalk.bench import SCHEMA, compare, validate
from flashtalk.cli import main

STAGES = (
    "source_encode",
    "audio_encode",
    "motion_window",
    "warping",
    "decoder",
    "paste_back",
    "watermark",
    "video_encode",
)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    paths = {k: out / f"out.{k}" for k in ("json", "md", "png")}
    # one timed call per provider: the report's shape is under test here, not the figures (~30 s, not ~2 min)
    rc = main(
        [
            "bench",
            "--quick",
            "--device",
            "cpu",
            "--iters",
            "1",
            "--json",
            str(paths["json"]),
            "--markdown",
            str(paths["md"]),
            "--plot",
            str(paths["png"]),
        ]
    )
    return rc, paths


@pytest.mark.slow
def test_quick_run_writes_a_valid_report(quick_run):
    rc, paths = quick_run
    assert rc == 0
    report = json.loads(paths["json"].read_text())
    assert validate(report) == []
    env, records = report["environment"], report["records"]
    assert env["cpu_only"] is True and env["device"].startswith("cpu")
    assert {r["group"] for r in records} == {"kernel", "stage", "renderer", "pipeline", "stream"}
    stage_cases = {r["case"] for r in records if r["group"] == "stage"}
    assert stage_cases == {f"stage/{s}" for s in STAGES}
    for r in records:
        if r["status"] == "ok":
            assert isinstance(r["value"], float) and math.isfinite(r["value"]) and r["value"] > 0, r
            assert r["warmup_s"] >= 0 and r["iters"] >= 1
        else:  # skipped or failed: a reason, never a silent hole
            assert r["value"] is None and r["reason"], r
    failed = [(r["case"], r["provider"], r["reason"]) for r in records if r["status"] == "failed"]
    assert failed == []
    ok = {(r["case"], r["provider"]) for r in records if r["status"] == "ok"}
    for case in ("stage/warping", "stage/decoder", "renderer/B1", "renderer/B2"):
        assert {(case, "flashtalk"), (case, "eager")} <= ok
    assert ("pipeline/offline_fps", "flashtalk") in ok
    assert ("stream/first_frame_latency", "preview-backend") in ok
    assert ("stream/first_frame_latency", "network-backend low") in ok  # a quick run: serve's default mode only
    # figures next to their references: the flashtalk rows carry the speed-up against eager
    ratios = [
        r["speedup_vs_eager"]
        for r in records
        if r["provider"] == "flashtalk" and r["status"] == "ok" and r["group"] in ("kernel", "stage", "renderer")
    ]
    assert ratios and all(x > 0 for x in ratios)
    fps = [r for r in records if r["group"] == "renderer" and r["status"] == "ok"]
    assert all(r["metric"] == "fps" and r["unit"] == "frames/s" for r in fps)
    lat = [r for r in records if r["case"] == "stream/first_frame_latency" and r["status"] == "ok"][0]
    assert lat["p50"] <= lat["p90"] <= lat["p99"] and len(lat["samples_ms"]) == lat["iters"]
    # NVML: either telemetry or the reason it is missing, on every measured record
    for r in records:
        if r["status"] == "ok":
            t = r["telemetry"]
            assert t["available"] or t["reason"]
    # compile providers are reported as skipped on a quick CPU run, with the reason
    comp = [r for r in records if r["provider"] == "compile"]
    assert comp and all(r["status"] == "skipped" and "torch.compile" in r["reason"] for r in comp)


@pytest.mark.slow
def test_markdown_and_plot(quick_run):
    _, paths = quick_run
    md = paths["md"].read_text()
    assert "CPU figures are not GPU figures" in md
    for group in ("kernel", "stage", "renderer", "pipeline", "stream"):
        assert f"## {group}" in md
    assert "| stage/decoder | flashtalk |" in md
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_schema_rejects_broken_records(quick_run):
    _, paths = quick_run
    report = json.loads(paths["json"].read_text())
    bad = copy.deepcopy(report)
    del bad["records"][0]["metric"]
    assert any("'metric' is a required property" in e for e in validate(bad))
    bad = copy.deepcopy(report)
    bad["records"][1]["value"] = "fast"
    assert any("records[1].value" in e for e in validate(bad))
    bad = copy.deepcopy(report)
    bad["records"][2]["unit"] = "s"
    assert any("records[2].unit" in e for e in validate(bad))
    bad = copy.deepcopy(report)
    bad["format"] = "something-else"
    assert validate(bad) != []
    assert validate([], SCHEMA) == ["$: [] is not of type 'object'"]


@pytest.mark.slow
def test_compare_ratios(quick_run):
    _, paths = quick_run
    report = json.loads(paths["json"].read_text())
    old = copy.deepcopy(report)
    for r in old["records"]:
        if r["status"] == "ok":
            r["value"] *= 2.0  # the old run took twice as long (ms) / had twice the FPS
    lines = compare(report["records"], old)
    ms = [ln for ln in lines if " ms " in ln]
    fps = [ln for ln in lines if " frames/s " in ln]
    assert ms and all("x0.500 better" in ln for ln in ms)
    assert fps and all("x0.500 worse" in ln for ln in fps)


@pytest.mark.slow
def test_compare_on_the_command_line(quick_run, capsys):
    _, paths = quick_run
    rc = main(
        [
            "bench",
            "--quick",
            "--device",
            "cpu",
            "--only",
            "kernel",
            "--case",
            "paste_back",
            "--compare",
            str(paths["json"]),
        ]
    )
    assert rc == 0
    out = capsys.readouterr().out
    assert "compared with flashtalk bench --quick" in out
    assert "paste_back/B16" in out and " x" in out.split("compared with")[1]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--iters", "0"], "--iters must be >= 1"),
        (["--compare", "no-such-report.json"], "no-such-report.json not found"),
        (["--case", "no-such-case"], "no case matches"),
        (["--device", "cuda:0"], "CUDA is not available"),
    ],
)
def test_bad_arguments(argv, message, capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["bench", "--device", "cpu", *argv] if "--device" not in argv else ["bench", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_compare_refuses_a_foreign_json(tmp_path, capsys):
    path = tmp_path / "other.json"
    path.write_text(json.dumps({"rows": []}))
    assert main(["bench", "--device", "cpu", "--compare", str(path)]) == 2
    assert "is not a flashtalk bench report" in capsys.readouterr().err
