"""Shared by the JoyVASA and sampler tests: golden gates per dtype, golden arrays as tensors, a tiny motion generator
with non-trivial weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flashtalk.models.joyvasa.denoiser import MotionGenerator, MotionGeneratorConfig

GATES = {torch.float32: {"denoiser": 5e-6, "sampler": 2e-5}, torch.float64: {"denoiser": 1e-10, "sampler": 1e-10}}

DTYPES = [pytest.param(torch.float32, id="fp32"), pytest.param(torch.float64, id="fp64")]


def _t(a, dtype):
    return torch.from_numpy(np.asarray(a)).to(dtype)


def _tiny(seed: int = 0, dtype=torch.float64, **kw) -> MotionGenerator:
    torch.manual_seed(seed)
    model = MotionGenerator(MotionGeneratorConfig.tiny(**kw), dtype=dtype).eval()
    with torch.no_grad():  # non-trivial weights everywhere (biases and norms too)
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model
