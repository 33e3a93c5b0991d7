"""Which implementation runs an op: Triton on CUDA, the Triton interpreter on CPU when asked, the
PyTorch reference otherwise, and why.

Mode, from the innermost `use_kernels(...)` block, else the `FLASHTALK_KERNELS` environment variable
(a comma-separated list: one mode word, and `OP=IMPL` items that pick another implementation of an op for the
whole process, e.g. `FLASHTALK_KERNELS=triton,attention=byo.sdpa`; see `flashtalk.kernels.registry`):

* ``auto`` (default): Triton for CUDA tensors when triton is importable; the reference on CPU.
* ``triton``: Triton wherever it can run: CUDA, or CPU under the interpreter (`TRITON_INTERPRET=1`, read
  at each launch, so a test can switch it for itself). Asking for it where it cannot run is an error,
  never a silent fallback.
* ``reference``: the pure-PyTorch reference everywhere.

In every mode an op that does not support a particular call (a head dim, a dtype) runs the reference and
records the reason; `last_choice(op)` returns it and `flashtalk info` prints it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from flashtalk.errors import FlashTalkError

log = logging.getLogger(__name__)

MODES = ("auto", "triton", "reference")
ENV_MODE = "FLASHTALK_KERNELS"

_local = threading.local()
_last: dict[str, "Choice"] = {}


@dataclass(frozen=True)
class Choice:
    backend: str  # "triton" | "triton-interpreter" | "reference" | "impl" (a registered implementation ran)
    reason: str
    impl: str = "flashtalk"  # the implementation that served the call (ours, or a registered one)

    @property
    def use_triton(self) -> bool:
        return self.backend != "reference"


def parse_env(value: str) -> tuple[str, dict[str, str]]:
    """(mode, {op: implementation}) of a `FLASHTALK_KERNELS` value such as "triton,attention=sdpa"."""
    m, impls = "auto", {}
    for item in (part.strip() for part in value.split(",")):
        if not item:
            continue
        if "=" in item:
            op, _, impl = item.partition("=")
            if not op.strip() or not impl.strip():
                raise FlashTalkError(f"{ENV_MODE}: {item!r} is not OP=IMPL")
            impls[op.strip()] = impl.strip()
        elif item.lower() in MODES:
            m = item.lower()
        else:
            raise FlashTalkError(f"{ENV_MODE}={value!r}: {item!r} is neither one of {', '.join(MODES)} nor OP=IMPL")
    return m, impls


def env_impls() -> dict[str, str]:
    """The `OP=IMPL` items of `FLASHTALK_KERNELS` (implementation chosen per op by the environment)."""
    return parse_env(os.environ.get(ENV_MODE, ""))[1]


def mode() -> str:
    stack = getattr(_local, "stack", None)
    return stack[-1] if stack else parse_env(os.environ.get(ENV_MODE, ""))[0]


@contextlib.contextmanager
def use_kernels(m: str) -> Iterator[None]:
    """Run the block with kernel mode `m` ("auto", "triton" or "reference")."""
    if m not in MODES:
        raise FlashTalkError(f"kernel mode {m!r} is not one of {', '.join(MODES)}")
    stack = _local.__dict__.setdefault("stack", [])
    stack.append(m)
    try:
        yield
    finally:
        stack.pop()


# Looked up once, at import (find_spec imports nothing): torch.compile cannot trace importlib, and an op
# calls `choose` inside compiled regions (torch 2.11 raises Unsupported on find_spec; 2.13 skips it).
_TRITON_INSTALLED = importlib.util.find_spec("triton") is not None


def triton_installed() -> bool:
    return _TRITON_INSTALLED


def interpreter_enabled() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").strip() not in ("", "0")


def choose(op: str, device: torch.device | str, unsupported: str | None = None) -> Choice:
    """Pick the backend for one call of `op` on `device`; `unsupported` is the op's own reason to refuse
    this call (shape, dtype, stride), or None."""
    device = torch.device(device)
    m = mode()
    if m == "reference":
        choice = Choice("reference", f"{ENV_MODE}=reference")
    elif unsupported:
        choice = Choice("reference", f"not supported because {unsupported}")
    elif not triton_installed():
        if m == "triton":
            raise FlashTalkError(f"{op}: Triton kernels were asked for but triton is not installed")
        choice = Choice("reference", "triton is not installed")
    elif device.type == "cuda" and not interpreter_enabled():
        choice = Choice("triton", "CUDA tensors")
    elif interpreter_enabled():
        if m == "triton":
            choice = Choice("triton-interpreter", f"TRITON_INTERPRET=1 and {ENV_MODE}=triton")
        else:
            choice = Choice("reference", f"TRITON_INTERPRET=1 runs the interpreter only with {ENV_MODE}=triton")
    else:
        if m == "triton":
            raise FlashTalkError(
                f"{op}: Triton kernels were asked for on {device.type} tensors; Triton runs on CUDA, or on "
                "the CPU under the interpreter (set TRITON_INTERPRET=1 before starting Python)"
            )
        choice = Choice("reference", f"{device.type} tensors: Triton needs CUDA (or TRITON_INTERPRET=1 for tests)")
    return record(op, choice)


def record(op: str, choice: Choice) -> Choice:
    """Remember `choice` as the one the latest call of `op` used (and log a change)."""
    if _last.get(op) != choice and not torch.compiler.is_compiling():  # torch.compile cannot trace logging calls
        log.debug("%s -> %s %s (%s)", op, choice.impl, choice.backend, choice.reason)
    _last[op] = choice
    return choice


def last_choice(op: str) -> Choice | None:
    """The backend the most recent call of `op` used, with the reason."""
    return _last.get(op)
