"""CI-sized fuzz campaigns of the file families (benchmarks/fuzz: images, audio, checkpoints), and the
harness itself: a hang and a hard crash are caught and counted, and the driver finds every family.

Each campaign is seeded, so a failure here reproduces with
`python -m benchmarks.fuzz --seed 22 --cases N --family F` (set FLASHTALK_FUZZ_LOG=cases.jsonl to log
every case)."""

from __future__ import annotations

import json
import os
import time

import pytest

from benchmarks.fuzz import __main__ as driver
from benchmarks.fuzz.core import Case, run_cases

SEED = 22


@pytest.mark.slow
@pytest.mark.parametrize("family, n", [("images", 80), ("audio", 200), ("checkpoints", 100)])
def test_ci_campaign_has_no_crash_and_no_hang(family, n):
    module = __import__(f"benchmarks.fuzz.{family}", fromlist=["campaign"])
    result = module.campaign(SEED, n, budget_s=150.0)
    assert result["family"] == family and result["cases"] == n, result
    assert result["crash"] == 0 and result["hang"] == 0, result["examples"]
    assert result["ok"] > 0 and result["clean_error"] > 0, result  # both paths were exercised
    assert result["ok"] + result["clean_error"] == n


# test targets, imported by the worker process
def sleeper(arg):
    time.sleep(arg)


def spin(arg):
    end = time.monotonic() + arg
    while time.monotonic() < end:
        pass


def dies(arg):
    os._exit(arg)


def raises(arg):
    if arg == "clean":
        from flashtalk.errors import FlashTalkError

        raise FlashTalkError("one clear line")
    if arg == "multiline":
        from flashtalk.errors import FlashTalkError

        raise FlashTalkError("first line\nTraceback (most recent call last):")
    raise KeyError(arg)


@pytest.mark.slow
def test_the_runner_counts_hangs_crashes_and_errors_and_recovers():
    me = "tests.fuzz.test_files"
    cases = [
        Case("deadlock", f"{me}:sleeper", 60, timeout=1.0),
        Case("busy", f"{me}:spin", 60, timeout=1.0),
        Case("ok", f"{me}:sleeper", 0, timeout=30.0),
        Case("exit", f"{me}:dies", 3, timeout=30.0),
        Case("clean", f"{me}:raises", "clean", timeout=30.0),
        Case("multiline", f"{me}:raises", "multiline", timeout=30.0),
        Case("keyerror", f"{me}:raises", "x", timeout=30.0),
    ]
    result = run_cases("selftest", cases, budget_s=120.0)
    assert (result["ok"], result["clean_error"], result["crash"], result["hang"]) == (1, 1, 3, 2), result
    assert result["worker_restarts"] == 3  # after each hang and after the exit
    assert any("worker died (exit code 3)" in e for e in result["examples"])
    assert any("KeyError" in e for e in result["examples"])


def test_the_driver_finds_the_families_and_writes_json(tmp_path, capsys):
    found = driver.families()
    assert {"images", "audio", "checkpoints"} <= set(found) and "core" not in found
    out = tmp_path / "fuzz.json"
    rc = driver.main(["--seed", "1", "--cases", "8", "--family", "audio", "--json", str(out)])
    table = capsys.readouterr().out
    assert rc == 0 and "audio" in table and "clean" in table
    data = json.loads(out.read_text())
    assert data["conditions"]["seed"] == 1 and data["families"][0]["cases"] == 8
