"""The kernel dispatch inside torch.compile (torch 2.11 and 2.13): no importlib call in the traced region."""

from __future__ import annotations

import importlib.util

import torch

from flashtalk.kernels import dispatch


def test_choose_traces_in_a_fullgraph_region_without_importlib(monkeypatch):
    expected = dispatch.triton_installed()
    real = importlib.util.find_spec

    def no_find_spec(name, *args, **kwargs):
        if name == "triton":
            raise AssertionError("the dispatch looked triton up again (torch 2.11 cannot trace find_spec)")
        return real(name, *args, **kwargs)  # torch's own look-ups while compiling

    monkeypatch.setattr(importlib.util, "find_spec", no_find_spec)

    def f(x):
        choice = dispatch.choose("dispatch_compile_probe", x.device)
        return x + 1 if choice.use_triton else x - 1

    torch._dynamo.reset()
    got = torch.compile(f, backend="eager", fullgraph=True)(torch.ones(3))
    assert dispatch.triton_installed() == expected
    assert torch.equal(got, torch.zeros(3))  # CPU without the interpreter: the reference
    assert dispatch.last_choice("dispatch_compile_probe").backend == "reference"
