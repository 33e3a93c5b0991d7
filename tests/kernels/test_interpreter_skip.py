"""The conftest turns exactly one failure into a skip: triton < 3.7's interpreter bug (recent numpy), raised
inside triton/runtime/interpreter.py, in a test on the interpreter (the CPU copy of a kernel_device test, or one
taking the `interpreter` fixture). Anything else still fails; a CUDA copy never skips."""

from __future__ import annotations

import types

import pytest

from tests import conftest

MESSAGE = "only 0-dimensional arrays can be converted to Python scalars"


def _raised_in(filename: str, message: str = MESSAGE) -> TypeError:
    code = compile(f"raise TypeError({message!r})", filename, "exec")
    try:
        exec(code, {})
    except TypeError as exc:
        return exc
    raise AssertionError("not raised")


def _item(device: str | None):
    """A kernel_device test's copy on `device`; "interpreter": a CPU test taking the `interpreter` fixture."""
    if device == "interpreter":
        return types.SimpleNamespace(fixturenames=["interpreter", "tmp_path"])
    callspec = types.SimpleNamespace(params={"kernel_device": device}) if device else None
    return types.SimpleNamespace(callspec=callspec, fixturenames=["kernel_device"] if device else [])


INTERPRETER = "/site-packages/triton/runtime/interpreter.py"


@pytest.mark.parametrize(
    "device, filename, message, old_triton, skips",
    [
        pytest.param("cpu", INTERPRETER, MESSAGE, True, True, id="the-bug"),
        pytest.param("interpreter", INTERPRETER, MESSAGE, True, True, id="interpreter-fixture"),
        pytest.param("cuda", INTERPRETER, MESSAGE, True, False, id="cuda-copy-never-skips"),
        pytest.param("cpu", INTERPRETER, MESSAGE, False, False, id="triton-3.7-or-later"),
        pytest.param("cpu", "/repo/flashtalk/kernels/attention.py", MESSAGE, True, False, id="our-code"),
        pytest.param("cpu", INTERPRETER, "another TypeError", True, False, id="another-error"),
        pytest.param(None, INTERPRETER, MESSAGE, True, False, id="not-a-kernel_device-test"),
    ],
)
def test_only_the_interpreter_bug_skips(device, filename, message, old_triton, skips, monkeypatch):
    monkeypatch.setattr(conftest, "_triton_below", lambda major, minor: old_triton)
    exc = _raised_in(filename, message)
    assert conftest._interpreter_bug(_item(device), exc) is skips
    wrapped = RuntimeError(f"InterpreterError({exc!r})")  # as Triton's InterpreterError or opcheck wrap it
    wrapped.__cause__ = exc
    assert conftest._interpreter_bug(_item(device), wrapped) is skips
