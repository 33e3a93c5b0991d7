"""`import flashtalk` stays lean (fresh interpreters): bare, it imports no torch; with `flashtalk.kernels` and
`flashtalk.cli` too, no triton."""

from __future__ import annotations

import subprocess
import sys


def test_import_is_lean():
    code = (
        "import sys, flashtalk, flashtalk.kernels, flashtalk.cli\n"
        "bad = [m for m in ('triton', 'torch', 'numpy') if m in sys.modules]\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    # flashtalk.kernels imports torch for the dispatch types, but never triton; bare flashtalk imports neither.
    assert "triton" not in out
    out = subprocess.run(
        [sys.executable, "-c", "import sys, flashtalk; print('torch' in sys.modules)"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert out == "False"
