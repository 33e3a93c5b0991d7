"""Seeded mutation helpers and the case runner shared by the fuzz families.

A case is a target function (`"module:function"`, importable in a fresh interpreter) and an argument
(paths of files written by the family). Cases run in a long-lived worker process, so a hang is killed
and a hard crash (segfault, abort) is caught without losing the campaign; a worker that hangs or dies
is replaced. The worker runs under an address-space limit (`MEMORY_LIMIT`), so a runaway allocation
shows up as a crash instead of swapping the machine.

Outcomes:
* ok: the target accepted the input and its own checks of the output passed;
* clean_error: a `FlashTalkError` with a one-line message (what a user sees: CLI exit 2);
* crash: any other exception, a multi-line message, a wrong output (`Wrong`), a valid control input
  (`expect_ok` in its argument) refused, or the worker dying;
* hang: no answer within the case's time bound: that many seconds of the worker's CPU time (a busy
  loop), or WALL_FACTOR times as many of wall time (a deadlock, or a machine too loaded to tell).
"""

from __future__ import annotations

import importlib
import json
import multiprocessing as mp
import os
import random
import struct
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

OUTCOMES = ("ok", "clean_error", "crash", "hang")
MEMORY_LIMIT = 6 << 30  # address space of a worker
MAX_EXAMPLES = 5
WALL_FACTOR = 6  # a case may take this many times its CPU bound in wall time (machine load), then it hangs
LOG_ENV = "FLASHTALK_FUZZ_LOG"  # a path: every case is appended to it as a JSON line
INTERESTING_INTS = (
    0,
    1,
    -1,
    2,
    255,
    256,
    0x7FFF,
    0x8000,
    0xFFFF,
    0x10000,
    0x7FFFFFFF,
    0x80000000,
    0xFFFFFFFF,
    3999,
    4000,
    384_001,
    1 << 40,
)
INTERESTING_NUMBERS = (
    0,
    -1,
    1,
    0.5,
    -0.0,
    1e-300,
    1e9,
    1e300,
    2**63,
    -(2**63),
    float("inf"),
    float("-inf"),
    float("nan"),
    10**400,
    "12",
    "abc",
    None,
    True,
    [],
    {},
    [1, 2],
)


class Wrong(Exception):
    """Raised by a target when the input was accepted but the output is wrong (counted as a crash)."""


# --------------------------------------------------------------------------------------------- mutations


class Mutator:
    """Byte and value mutations drawn from one seeded `random.Random`."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def choice(self, seq):
        return self.rng.choice(seq)

    def bytes(self, data: bytes, rounds: int | None = None) -> tuple[bytes, str]:
        """1-4 random byte-level mutations of `data` -> (mutated, short description)."""
        b = bytearray(data)
        done = []
        for _ in range(rounds or self.rng.randint(1, 4)):
            op = self.rng.choice(("flip", "byte", "int", "truncate", "delete", "insert", "duplicate"))
            if not b:
                b += b"\0"
            i = self.rng.randrange(len(b))
            if op == "flip":
                b[i] ^= 1 << self.rng.randrange(8)
            elif op == "byte":
                b[i] = self.rng.choice((0, 0xFF, 0x7F, 0x80, self.rng.randrange(256)))
            elif op == "int":
                value = self.rng.choice(INTERESTING_INTS) & 0xFFFFFFFF
                b[i : i + 4] = struct.pack(self.rng.choice(("<I", ">I")), value)
            elif op == "truncate":
                del b[max(1, i) :]
            elif op == "delete":
                del b[i : i + self.rng.randint(1, 64)]
            elif op == "insert":
                b[i:i] = bytes(self.rng.randrange(256) for _ in range(self.rng.randint(1, 32)))
            else:
                n = self.rng.randint(1, 256)
                b[i:i] = b[i : i + n]
            done.append(f"{op}@{i}")
        return bytes(b), "+".join(done)

    def number(self) -> Any:
        return self.rng.choice(INTERESTING_NUMBERS)

    def json_value(self, obj: Any) -> tuple[Any, str]:
        """Replace one leaf (or drop / add a key) somewhere in a JSON-like object -> (new object, what)."""
        obj = json.loads(json.dumps(obj))
        paths = list(_leaf_paths(obj))
        if not paths:
            return obj, "unchanged"
        path = self.rng.choice(paths)
        parent = obj
        for key in path[:-1]:
            parent = parent[key]
        op = self.rng.random()
        if op < 0.1 and isinstance(parent, dict):
            del parent[path[-1]]
            return obj, f"drop {'.'.join(map(str, path))}"
        if op < 0.15 and isinstance(parent, dict):
            parent["bogus_field"] = 1
            return obj, "unknown field"
        value = self.number()
        parent[path[-1]] = value
        return obj, f"{'.'.join(map(str, path))}={value!r}"[:80]


def _leaf_paths(obj: Any, prefix: tuple = ()) -> Iterator[tuple]:
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _leaf_paths(v, prefix + (k,))
    elif isinstance(obj, list) and obj:
        for i, v in enumerate(obj):
            yield from _leaf_paths(v, prefix + (i,))
    else:
        yield prefix


def json_dumps(obj: Any) -> str:
    """JSON with Python's extensions (NaN, Infinity, huge ints): what a hostile writer can put in a file."""
    return json.dumps(obj, allow_nan=True)


def deep_json(depth: int) -> str:
    return "[" * depth + "]" * depth


# --------------------------------------------------------------------------------------------- worker


def _worker_main(conn, limit: int) -> None:
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    except (ImportError, ValueError, OSError):
        pass
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    devnull = os.open(os.devnull, os.O_WRONLY)  # decoders' chatter on stderr; outcomes come through the pipe
    os.dup2(devnull, 2)
    targets: dict[str, Callable] = {}
    while True:
        try:
            msg = conn.recv()
        except EOFError:
            return
        if msg is None:
            return
        name, arg = msg
        try:
            if name not in targets:
                module, func = name.split(":")
                targets[name] = getattr(importlib.import_module(module), func)
            detail = targets[name](arg)
            reply = ("ok", str(detail or "")[:200])
        except Exception as exc:
            reply = _classify(exc)
            if reply[0] == "clean_error" and isinstance(arg, dict) and arg.get("expect_ok"):
                reply = ("crash", f"refused a valid input: {reply[1]}"[:300])
        conn.send(reply)


def _classify(exc: BaseException) -> tuple[str, str]:
    from flashtalk.errors import FlashTalkError

    text = str(exc)
    if isinstance(exc, Wrong):
        return "crash", f"wrong output: {text}"[:300]
    if isinstance(exc, FlashTalkError) and text and "\n" not in text and "Traceback" not in text:
        return "clean_error", text[:300]
    where = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
    at = f" at {os.path.basename(where.filename)}:{where.lineno}" if where else ""
    return "crash", f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}{at}"[:300]


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process (Linux /proc), or None where it cannot be read."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


class Worker:
    """One fuzz worker process; `run` sends a case and waits at most `timeout` seconds."""

    def __init__(self, warm: str | None = None, limit: int = MEMORY_LIMIT, warm_timeout: float = 180.0) -> None:
        self.warm, self.limit, self.warm_timeout = warm, limit, warm_timeout
        self.proc = None
        self.conn = None
        self.starts = 0

    def _start(self) -> None:
        """A fresh worker; the `warm` target (imports, one-time set-up) runs before any timed case."""
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_main, args=(child, self.limit), daemon=True)
        self.proc.start()
        child.close()
        self.starts += 1
        if self.warm is not None:
            self.conn.send((self.warm, None))
            if not self.conn.poll(self.warm_timeout):
                raise RuntimeError(f"fuzz worker warm-up {self.warm} took over {self.warm_timeout:g} s")
            outcome, detail = self.conn.recv()
            if outcome != "ok":
                raise RuntimeError(f"fuzz worker warm-up {self.warm} failed: {detail}")

    def run(self, target: str, arg: Any, timeout: float) -> tuple[str, str]:
        """The case's outcome. Its bound is `timeout` seconds of the worker's CPU time (a busy loop) or
        WALL_FACTOR x `timeout` of wall time (a deadlock), so a loaded machine does not fake hangs."""
        if self.proc is None or not self.proc.is_alive():
            self._start()
        self.conn.send((target, arg))
        cpu0, t0 = _cpu_seconds(self.proc.pid), time.monotonic()
        while True:
            if self.conn.poll(0.25):
                try:
                    return self.conn.recv()
                except EOFError:
                    break
            if not self.proc.is_alive():
                break
            wall = time.monotonic() - t0
            cpu = _cpu_seconds(self.proc.pid) - cpu0 if cpu0 is not None else wall
            if cpu > timeout or wall > WALL_FACTOR * timeout:
                self.kill()
                return "hang", f"no answer after {cpu:.1f} s CPU / {wall:.1f} s wall (bound {timeout:g} s CPU)"
        self.proc.join(5)
        code = self.proc.exitcode
        self.kill()
        return "crash", f"worker died (exit code {code})"

    def kill(self) -> None:
        if self.proc is not None and self.proc.is_alive():
            self.proc.kill()
            self.proc.join(5)
        self.proc = None

    def close(self) -> None:
        if self.proc is not None and self.proc.is_alive():
            try:
                self.conn.send(None)
                self.proc.join(5)
            except (OSError, BrokenPipeError):
                pass
        self.kill()


# --------------------------------------------------------------------------------------------- campaign


@dataclass
class Case:
    """One input: what it is (for the report), the target and its argument, the time bound."""

    what: str
    target: str
    arg: Any
    timeout: float = 10.0


@dataclass
class Tally:
    family: str
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(OUTCOMES, 0))
    examples: list[str] = field(default_factory=list)
    slowest_s: float = 0.0
    seconds: float = 0.0

    def add(self, case: Case, outcome: str, detail: str, seconds: float) -> None:
        if LOG_ENV in os.environ:  # every case as one JSON line, to read what the families really do
            with open(os.environ[LOG_ENV], "a") as f:
                f.write(
                    json.dumps(
                        {
                            "family": self.family,
                            "case": case.what,
                            "outcome": outcome,
                            "detail": detail,
                            "seconds": round(seconds, 3),
                        }
                    )
                    + "\n"
                )
        self.counts[outcome] += 1
        self.slowest_s = max(self.slowest_s, seconds)
        if outcome in ("crash", "hang") and len(self.examples) < MAX_EXAMPLES:
            self.examples.append(f"{outcome}: {case.what}: {detail}"[:240])

    def result(self, **extra: Any) -> dict[str, Any]:
        return {
            "family": self.family,
            "cases": sum(self.counts.values()),
            **self.counts,
            "examples": self.examples,
            "slowest_case_s": round(self.slowest_s, 2),
            "seconds": round(self.seconds, 1),
            **extra,
        }


def run_cases(family: str, cases: Iterable[Case], budget_s: float, warm: str | None = None) -> dict[str, Any]:
    """Run `cases` in a worker (warmed up by the `warm` target) until they are exhausted or `budget_s` of
    wall time is spent."""
    tally = Tally(family)
    worker = Worker(warm)
    start = time.monotonic()
    try:
        for case in cases:
            if time.monotonic() - start > budget_s:
                break
            t0 = time.monotonic()
            outcome, detail = worker.run(case.target, case.arg, case.timeout)
            tally.add(case, outcome, detail, time.monotonic() - t0)
    finally:
        worker.close()
        tally.seconds = time.monotonic() - start
    return tally.result(worker_restarts=max(0, worker.starts - 1))
