"""Shared by the warping-kernel tests (dense_motion_input, deform_warp, warp2d, paste_back): a forced-Triton call that
checks Triton really ran, the 2x-PyTorch accuracy rule, keypoints and sampling grids with exact hits, non-contiguous
copies."""

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


def keypoints(B: int, K: int, spread: float = 1.2) -> tuple[torch.Tensor, torch.Tensor]:
    """Source keypoints up to ±spread and driving ones moved by up to ±0.3, so some motions leave [-1, 1]
    (|g| up to ~1.5), plus exact hits: keypoint 0 does not move (S = G), keypoint 1 shifts by exactly one
    half-volume (S lands on the corners ±1 and the centre 0)."""
    xs = (torch.rand(B, K, 3) * 2 - 1) * spread
    xd = xs + (torch.rand(B, K, 3) * 2 - 1) * 0.3
    xd[:, 0] = xs[:, 0]
    if K > 1:
        xs[:, 1], xd[:, 1] = 0.5, -0.5
    return xs, xd


def noncontig(t: torch.Tensor) -> torch.Tensor:
    """The same values with other strides: a channels-last copy viewed back, i.e. permuted memory."""
    perm = [0, *range(2, t.dim()), 1]
    inv = [0, t.dim() - 1, *range(1, t.dim() - 1)]
    out = t.permute(perm).contiguous().permute(inv)
    assert not out.is_contiguous() and torch.equal(out, t)
    return out


def grid2d(B: int, Ho: int, Wo: int) -> torch.Tensor:
    g = (torch.rand(B, Ho, Wo, 2) * 2 - 1) * 1.5
    special = torch.tensor([[-1.0, -1.0], [1.0, 1.0], [0.0, 0.0], [1.0, -1.0], [1.5, 0.2], [-1.2, 1.4]])
    n = min(len(special), Ho * Wo)
    g.view(B, -1, 2)[:, :n] = special[:n].to(g.device)
    return g
