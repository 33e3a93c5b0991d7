"""`flashtalk bench --suite gpu --smoke`: the one-call GPU suite's plumbing on the CPU (one small case, a
stand-in tests folder): it writes results.json (valid report, every record with the run's conditions),
summary.md and plots.png, names what it skipped, stops pytest at its time share, and prints its table last.
The full smoke (every step) runs in .ci/run from a wheel install."""

from __future__ import annotations

import json

import pytest

from flashtalk.bench import validate
from flashtalk.bench.suite import run_gpu_tests
from flashtalk.cli import main

CONDITIONS = ("device", "driver", "torch", "triton", "cuda", "commit", "command", "timestamp")


@pytest.fixture
def fake_tests(tmp_path):
    """A tests folder with one gpu test that passes, one that fails and a test that is not a gpu test."""
    tests = tmp_path / "tests"
    tests.mkdir()
    (tests / "conftest.py").write_text("")
    (tests / "kernels").mkdir()
    (tests / "kernels" / "test_check.py").write_text("")
    (tests / "test_a.py").write_text(
        "import pytest\n\n@pytest.mark.gpu\ndef test_ok():\n    pass\n\n@pytest.mark.gpu\ndef test_bad():\n"
        "    assert 1 == 2\n\ndef test_not_gpu():\n    pass\n"
    )
    return tests


def test_smoke_suite_writes_its_outputs(tmp_path, fake_tests, capsys):
    out = tmp_path / "out"
    rc = main(
        [
            "bench",
            "--suite",
            "gpu",
            "--smoke",
            "--out",
            str(out),
            "--case",
            "attention/cpu",
            "--tests",
            str(fake_tests),
            "--budget-s",
            "100",
        ]
    )
    printed = capsys.readouterr().out
    assert rc == 1  # the failing gpu test makes the run fail
    report = json.loads((out / "results.json").read_text())
    assert validate(report) == []
    steps = {s["step"]: s for s in report["suite"]["steps"]}
    assert steps["gpu tests"]["status"] == "failed" and "1 passed, 1 failed" in steps["gpu tests"]["reason"]
    assert report["suite"]["tests"]["failures"] == ["tests.test_a::test_bad"]
    assert steps["attention vs SDPA"]["status"] == "ok"
    assert steps["renderer"] == {"step": "renderer", "status": "skipped", "reason": "not selected by --case"}
    records = report["records"]
    assert {r["provider"] for r in records} >= {"flashtalk", "eager"}
    for r in records:
        assert all(k in r for k in CONDITIONS), r
        assert r["status"] == "ok" or r["reason"], r
    md = (out / "summary.md").read_text()
    assert "## Steps" in md and "| gpu tests | failed |" in md and "tests.test_a::test_bad" in md and "## kernel" in md
    assert (out / "plots.png").read_bytes()[:4] == b"\x89PNG"
    last = printed.strip().splitlines()
    assert last[-2].startswith("attention/cpu-B2-H2-L37-D16-keypad")  # the short table comes last
    assert last[-1] == "RESULT: FAILED (gpu tests; exit status 1)"


@pytest.mark.slow
def test_gpu_tests_stop_at_their_share(tmp_path, fake_tests):
    (fake_tests / "test_b.py").write_text(
        "import time\nimport pytest\n\n@pytest.mark.gpu\ndef test_slow():\n    time.sleep(60)\n"
    )
    summary = run_gpu_tests(fake_tests, tmp_path, seconds=8.0, parallel=2)
    assert summary["not_finished"] == ["test_b.py"] and summary["wall_s"] < 30
    assert summary["passed"] == 1 and summary["failed"] == 1


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--suite", "gpu", "--smoke"], "--suite gpu needs --out DIR"),
        (["--suite", "gpu", "--out", "x"], "needs a CUDA GPU"),
        (["--smoke"], "--smoke needs --suite gpu"),
        (["--budget-s", "0"], "--budget-s must be > 0"),
    ],
)
def test_bad_arguments(argv, message, capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["bench", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_a_measurement_past_the_budget_is_stopped():
    import time

    from flashtalk.bench.suite import BudgetExceeded, _hard_stop

    t0 = time.perf_counter()
    with pytest.raises(BudgetExceeded), _hard_stop(0.5):
        while time.perf_counter() - t0 < 20:  # bounded: the alarm ends it after 0.5 s
            time.sleep(0.01)
    assert time.perf_counter() - t0 < 5


def test_every_suite_case_is_in_the_registry():
    from flashtalk.bench.registry import all_cases
    from flashtalk.bench.suite import STEPS

    names = {c.name for c in all_cases()}
    for step in STEPS:
        assert set(step.gpu_cases) <= names and set(step.smoke_cases) <= names, step
