"""`flashtalk download --dry-run` on a machine that cannot reach the hub: the plan, not a traceback."""

from __future__ import annotations

import pytest

from flashtalk.cli import main
from flashtalk.weights import hub


@pytest.fixture
def unreachable(monkeypatch, tmp_path):
    pytest.importorskip("huggingface_hub")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the discard port: connection refused
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    return tmp_path


def test_dry_run_without_network_lists_the_plan(unreachable, capsys):
    assert main(["download", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "could not be reached" in out and "sizes, checksums and licences need the hub" in out
    assert f"files go to {unreachable / 'cache'}" in out
    for r in hub.REPOS:
        for f in r.files + r.optional:
            line = next(ln for ln in out.splitlines() if ln.rstrip().endswith(f) or f"{f}  (if needed)" in ln)
            assert r.repo_id in line and r.revision in line and "missing" in line


def test_dry_run_without_network_says_which_files_are_there(unreachable, capsys):
    target = unreachable / "weights"
    lp = hub.REPOS[0]
    have = target / lp.folder / lp.files[0]
    have.parent.mkdir(parents=True)
    have.write_bytes(b"x")
    assert main(["download", "--dry-run", "--dir", str(target)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert f"files go to {target}" in lines
    assert "present" in next(ln for ln in lines if ln.endswith(lp.files[0]))
    assert "missing" in next(ln for ln in lines if ln.endswith(lp.files[1]))


def test_a_real_download_without_network_is_one_line(unreachable, capsys):
    assert main(["download", "--no-load"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) <= 2 and "could not be reached" in err[-1]
