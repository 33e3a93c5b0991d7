"""Kernel dispatch (`flashtalk.kernels.dispatch`): FLASHTALK_KERNELS modes and TRITON_INTERPRET decide the backend, an
unsupported input falls back to the reference saying why; `load_op` returns each op and its reference."""

from __future__ import annotations

import pytest

from flashtalk.errors import FlashTalkError
from flashtalk.kernels import dispatch


def test_dispatch_modes(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setenv("FLASHTALK_KERNELS", "auto")
    c = dispatch.choose("attention", "cpu")
    assert c.backend == "reference" and "CUDA" in c.reason
    with dispatch.use_kernels("reference"):
        assert dispatch.choose("attention", "cuda").backend == "reference"
    with dispatch.use_kernels("triton"), pytest.raises(FlashTalkError, match="TRITON_INTERPRET"):
        dispatch.choose("attention", "cpu")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with dispatch.use_kernels("triton"):
        assert dispatch.choose("attention", "cpu").backend == "triton-interpreter"
        c = dispatch.choose("attention", "cpu", unsupported="head dim 80")
        assert c.backend == "reference" and "head dim 80" in c.reason
        assert dispatch.last_choice("attention") == c
    monkeypatch.setenv("FLASHTALK_KERNELS", "bogus")
    with pytest.raises(FlashTalkError, match="bogus"):
        dispatch.mode()


def test_load_op_returns_each_op_and_its_reference():
    import importlib

    from flashtalk import kernels

    for op, module in kernels.OPS.items():
        mod = importlib.import_module(module)
        assert kernels.load_op(op) is getattr(mod, op), op
        assert kernels.load_op(op, reference=True) is getattr(mod, f"{op}_ref"), op
    with pytest.raises(KeyError, match="unknown kernel op 'nope'"):
        kernels.load_op("nope")
