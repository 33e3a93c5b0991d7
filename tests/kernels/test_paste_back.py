"""paste_back (the crop pasted back into the photo through the feather mask) against its PyTorch reference, exact for
the identity affine, and the feather mask itself; on the CPU under the Triton interpreter and on CUDA compiled
(`kernel_device`: tensors made without a device land on it)."""

from __future__ import annotations

import importlib

import pytest
import torch

from flashtalk.kernels.cases import noncontig, rotation_affine
from flashtalk.kernels.paste_back import make_feather_mask, paste_back, paste_back_ref
from tests.kernels.helpers import DTYPES, run_triton

triton = pytest.importorskip("triton")

pb_mod = importlib.import_module("flashtalk.kernels.paste_back")

pytestmark = pytest.mark.usefixtures("on_kernel_device")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_paste_back_matches_reference(dtype):
    h, w = 20, 26
    crop = noncontig(torch.rand(2, 3, h, w).to(dtype))
    bg = torch.randint(0, 256, (1, 37, 45, 3), dtype=torch.uint8)  # broadcast over B
    affine = torch.tensor([rotation_affine(0.3, 0.8, -4.2, -2.5), rotation_affine(-0.1, 1.3, -15.7, -6.1)])
    mask = make_feather_mask((h, w))
    out = run_triton(paste_back, crop, bg, affine, mask)
    ref = paste_back_ref(crop, bg, affine, mask)
    assert out.shape == (2, 37, 45, 3) and out.dtype == torch.uint8
    diff = (out.int() - ref.int()).abs()
    # rounding at exact .5 may differ by one level between fp32 orders of operations, nowhere more
    assert diff.max() <= 1 and (diff > 0).float().mean() < 1e-3, (
        f"{int((diff > 0).sum())} pixels differ, max {diff.max()}"
    )
    assert (out != bg).any(dim=-1).float().mean() > 0.1  # the crop really landed


def test_paste_back_identity():
    """Identity affine, crop values on the uint8 grid: the crop exactly where the mask is 1, the background
    untouched where it is 0 and outside the crop, a blend in between."""
    h, w = 24, 32
    crop8 = torch.randint(0, 256, (2, 3, h, w), dtype=torch.uint8)
    crop = crop8.float() / 255
    bg = torch.randint(0, 256, (2, 30, 40, 3), dtype=torch.uint8)
    affine = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]])
    mask = make_feather_mask((h, w))
    out = torch.full((2, 30, 40, 3), 77, dtype=torch.uint8)  # poison: a wrong pixel shows
    pb_mod._launch(crop, bg, affine, mask, out)
    inner, outer = mask == 1, mask == 0
    assert inner.sum() > 100 and outer.sum() > 50 and ((mask > 0) & (mask < 1)).sum() > 50
    sub = out[:, :h, :w].permute(0, 3, 1, 2)  # [B, 3, h, w]
    assert torch.equal(sub[:, :, inner], crop8[:, :, inner])
    bg_sub = bg[:, :h, :w].permute(0, 3, 1, 2)
    assert torch.equal(sub[:, :, outer], bg_sub[:, :, outer])
    assert torch.equal(out[:, h:], bg[:, h:]) and torch.equal(out[:, :, w:], bg[:, :, w:])
    assert torch.equal(run_triton(paste_back, crop, bg, affine, mask), out)


def test_feather_mask_shape():
    m = make_feather_mask((40, 60))
    assert m.shape == (40, 60) and m.dtype == torch.float32
    assert m.min() == 0 and m.max() == 1 and m[20, 30] == 1 and m[0, 0] == 0
    assert torch.equal(m, m.flip(0)) and torch.equal(m, m.flip(1))
    row = m[20, :30]
    assert (row[1:] >= row[:-1]).all()  # rises monotonically from the edge to the centre
