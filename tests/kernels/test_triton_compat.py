"""`flashtalk.kernels.triton_compat`: the kernel modules are imported once and TRITON_INTERPRET picks the interpreter
or the compiler at each launch."""

from __future__ import annotations

import pytest
import torch


def test_jit_functions_pick_interpreter_or_compiler_per_launch(monkeypatch):
    """The kernel modules are imported once; TRITON_INTERPRET decides at each launch (so per test)."""
    pytest.importorskip("triton")
    from flashtalk.kernels.warp2d import _launch, warp2d_ref

    image = torch.randn(1, 2, 5, 6)
    grid = torch.rand(1, 3, 4, 2) * 2 - 1
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    out = _launch(image, grid, torch.full((1, 2, 3, 4), float("nan")), "zeros")
    assert (out - warp2d_ref(image, grid)).abs().max() < 1e-5
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # the compiled path: CPU tensors cannot run there
    with pytest.raises(Exception) as info:
        _launch(image, grid, torch.empty(1, 2, 3, 4), "zeros")
    assert "interpret" not in type(info.value).__name__.lower()
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # and back, in the same process
    assert torch.equal(_launch(image, grid, torch.empty(1, 2, 3, 4), "zeros"), out)
