"""Shared by the warping-kernel tests (dense_motion_input, deform_warp, warp2d, paste_back): a forced-Triton call that
checks Triton really ran, and the 2x-PyTorch accuracy rule (the case makers are `flashtalk.kernels.cases`, shared
with `flashtalk kernels verify`)."""

from __future__ import annotations

import torch

from flashtalk.kernels import dispatch
from tests.utils import max_err

DTYPES = [torch.float32, torch.float16, torch.bfloat16]

FLOOR = 1e-6  # absolute slack on top of 2x PyTorch's own error


def run_triton(fn, *args, **kwargs):
    """Call a public op with the Triton path forced, and check that it really ran Triton."""
    with dispatch.use_kernels("triton"):
        out = fn(*args, **kwargs)
    assert dispatch.last_choice(fn.__name__).use_triton, dispatch.last_choice(fn.__name__)
    return out


def check_rule(kernel: torch.Tensor, ours_ref: torch.Tensor, ref64: torch.Tensor, what: str) -> None:
    k_err, t_err = max_err(kernel, ref64), max_err(ours_ref, ref64)
    assert torch.isfinite(kernel).all(), f"{what}: non-finite output"
    assert k_err <= 2 * t_err + FLOOR, f"{what}: kernel error {k_err:.3e} > 2 x PyTorch's {t_err:.3e} + {FLOOR:g}"
