"""The `flashtalk` entry point: `python -m flashtalk` runs the CLI; an unknown command exits 2."""

from __future__ import annotations

import subprocess
import sys

import pytest

from flashtalk.cli import main


def test_python_dash_m_runs_cli():
    proc = subprocess.run([sys.executable, "-m", "flashtalk", "--version"], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.startswith("flashtalk ")


def test_unknown_command_fails(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["no-such-command"])
    assert exc.value.code == 2
