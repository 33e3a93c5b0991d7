"""The GPU suite never says "ok" over a failed case: the step is "failed" in the table, summary.md and
results.json, each failure named with its reason in one line, and the exit status is non-zero."""

from __future__ import annotations

import dataclasses
import json

from flashtalk.bench import registry
from flashtalk.cli import main

CASE = "attention/cpu-B2-H2-L37-D16-keypad"


def _suite(tmp_path, capsys) -> tuple[int, dict, str, str]:
    tests = tmp_path / "tests"
    tests.mkdir()
    (tests / "conftest.py").write_text("")
    (tests / "test_kernel_check.py").write_text("")
    (tests / "test_a.py").write_text("import pytest\n\n@pytest.mark.gpu\ndef test_ok():\n    pass\n")
    out = tmp_path / "out"
    argv = ["bench", "--suite", "gpu", "--smoke", "--out", str(out), "--case", "attention/cpu"]
    rc = main(argv + ["--tests", str(tests), "--budget-s", "100"])
    printed = capsys.readouterr().out
    return rc, json.loads((out / "results.json").read_text()), (out / "summary.md").read_text(), printed


def test_a_case_that_raises_fails_its_step_and_the_run(tmp_path, capsys, monkeypatch):
    cases = registry.all_cases()

    def boom(setup):
        raise RuntimeError("injected failure\nsecond line")

    monkeypatch.setattr(
        registry, "all_cases", lambda: [dataclasses.replace(c, build=boom) if c.name == CASE else c for c in cases]
    )
    rc, report, summary, printed = _suite(tmp_path, capsys)
    assert rc == 1
    step = next(s for s in report["suite"]["steps"] if s["step"] == "attention vs SDPA")
    assert step["status"] == "failed" and step["reason"] == "1 failed"
    assert step["failures"] == [f"{CASE} / -: RuntimeError: injected failure"]
    assert "| attention vs SDPA | failed |" in summary and f"- {CASE} / -: RuntimeError: injected failure" in summary
    table = printed.rsplit("wrote ", 1)[-1]  # the short table, printed last
    assert f"FAILED   {CASE} / -: RuntimeError: injected failure" in table
    assert table.splitlines()[-1] == "RESULT: FAILED (attention vs SDPA; exit status 1)"
    assert not any(s["status"] == "ok" for s in report["suite"]["steps"] if s["step"] == "attention vs SDPA")


def test_without_failures_the_run_is_green(tmp_path, capsys):
    rc, report, _, printed = _suite(tmp_path, capsys)
    assert rc == 0
    assert {s["step"]: s["status"] for s in report["suite"]["steps"]}["attention vs SDPA"] == "ok"
    assert printed.rstrip().splitlines()[-1] == "RESULT: no failures"
