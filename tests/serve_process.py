"""Start a real `flashtalk serve` (preview backend) as a subprocess on 127.0.0.1 for client / integration tests.

Only the CLI and `GET /health` are used, so the tests work against any server implementation behind the CLI.
Every process started here is stopped by its PID."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from benchmarks.processes import free_port, stop_process

REPO = Path(__file__).resolve().parents[1]
ASSETS = REPO / "flashtalk" / "assets"  # the bundled portrait and speech
START_TIMEOUT_S = 120.0


@dataclass
class Server:
    url: str  # ws://127.0.0.1:PORT/ws
    base: str  # http://127.0.0.1:PORT
    proc: subprocess.Popen

    def health(self) -> dict:
        with urllib.request.urlopen(self.base + "/health", timeout=5) as r:
            return json.loads(r.read())

    def wait_sessions(self, n: int, timeout: float = 10.0) -> None:
        """Wait until the server holds exactly n sessions (a closed session is released asynchronously)."""
        deadline = time.monotonic() + timeout
        while self.health()["sessions"] != n:
            if time.monotonic() > deadline:
                raise AssertionError(f"server still holds {self.health()['sessions']} sessions, expected {n}")
            time.sleep(0.05)

    def kill(self) -> None:
        stop_process(self.proc, first=signal.SIGKILL)


@contextlib.contextmanager
def flashtalk_serve(*args: str):
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("FLASHTALK_TOKEN", None)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "flashtalk",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--device",
            "cpu",
            *args,
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    server = Server(f"ws://127.0.0.1:{port}/ws", f"http://127.0.0.1:{port}", proc)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"flashtalk serve exited with {proc.returncode}: "
                    f"{proc.stderr.read().decode(errors='replace')[-2000:]}"
                )
            try:
                server.health()
                break
            except (urllib.error.URLError, ConnectionError, OSError):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"flashtalk serve did not answer /health within {START_TIMEOUT_S:g} s") from None
                time.sleep(0.2)
        yield server
    finally:
        stop_process(proc)
        proc.stderr.close()
