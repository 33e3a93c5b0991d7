"""The processes that benchmarks and tests start (`flashtalk serve`, a browser): a free loopback port for them,
and the one way they are stopped, by their PID. Imported by `benchmarks/` and `tests/` alike."""

from __future__ import annotations

import os
import signal
import socket
import subprocess


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_process(proc: subprocess.Popen, grace_s: float = 15.0, first: int = signal.SIGTERM) -> None:
    """Stop `proc` by its PID and reap it: `first` (SIGTERM: a clean shutdown), then SIGKILL if it still runs
    after `grace_s` seconds. Nothing to do when it has already exited; every wait is bounded."""
    if proc.poll() is not None:
        return
    os.kill(proc.pid, first)
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
