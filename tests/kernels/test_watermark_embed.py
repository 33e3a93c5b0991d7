"""watermark_embed: the Triton kernel (interpreter on CPU, compiled on CUDA: `on_kernel_device`) equal to
watermark_embed_ref on odd, tile-wrapping and non-contiguous frames with saturated rows (every element written), and
the reference's math by hand. The watermark itself: tests/provenance/test_watermark.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flashtalk.kernels import use_kernels
from flashtalk.kernels.watermark_embed import _launch, watermark_embed, watermark_embed_ref

KERNEL_CASES = [
    pytest.param((1, 1, 1), 4, 32, False, id="N1-1x1"),
    pytest.param((2, 7, 9), 3, 5, False, id="N2-7x9-cell3-M5"),
    pytest.param((1, 37, 53), 4, 32, False, id="N1-37x53"),
    pytest.param((3, 33, 130), 4, 32, True, id="N3-33x130-noncontig"),
    pytest.param((1, 131, 129), 4, 32, False, id="N1-131x129-wraps-tile"),
]


@pytest.mark.parametrize("shape, cell, M, noncontig", KERNEL_CASES)
def test_kernel_matches_reference(shape, cell, M, noncontig, on_kernel_device):
    N, H, W = shape
    g = torch.Generator(on_kernel_device).manual_seed(H * 1000 + W)
    if noncontig:  # channel-planar storage viewed as [N, H, W, 3], and every other frame of a bigger batch
        frames = torch.randint(0, 256, (2 * N, 3, H, W), dtype=torch.uint8, generator=g).permute(0, 2, 3, 1)[::2]
        assert not frames.is_contiguous()
    else:
        frames = torch.randint(0, 256, (N, H, W, 3), dtype=torch.uint8, generator=g)
    frames[..., :2, :] = 255  # saturated rows: the clamp at both ends is exercised
    frames[..., -1:, :, :] = 0
    table = (torch.rand(M, M, generator=g) * 2 - 1).to(torch.float32)
    params = dict(cell=cell, base=2.6, gain=1.3, act_ref=16.0)
    expected = watermark_embed_ref(frames, table, **params)
    out = torch.full((N, H, W, 3), 77, dtype=torch.uint8)  # poisoned: every element must be written
    with use_kernels("triton"):
        got = _launch(frames, table, cell, params["base"], params["gain"], params["act_ref"], out)
        via_op = watermark_embed(frames, table, **params)
    assert torch.equal(got, expected), f"{int((got != expected).sum())} of {got.numel()} values differ"
    assert torch.equal(via_op, expected)


def test_reference_math_by_hand():
    """cell = 1 puts every pixel on a cell centre, so the pattern is the table itself; a flat picture has
    zero contrast, so the amplitude is `base`; all three channels move by the same rounded amount."""
    table = torch.tensor([[0.9, -0.2], [-1.0, 0.5]], dtype=torch.float32)
    frames = torch.empty(1, 3, 5, 3, dtype=torch.uint8)
    frames[..., 0], frames[..., 1], frames[..., 2] = 100, 50, 254
    out = watermark_embed_ref(frames, table, cell=1, base=2.0, gain=5.0, act_ref=16.0).int()
    delta = np.array([[2, 0, 2, 0, 2], [-2, 1, -2, 1, -2], [2, 0, 2, 0, 2]])  # floor(2·t + 0.5), tiled
    assert np.array_equal(out[0, ..., 0].numpy() - 100, delta)
    assert np.array_equal(out[0, ..., 1].numpy() - 50, delta)
    assert np.array_equal(out[0, ..., 2].numpy(), np.minimum(254 + delta, 255))  # clamped at 255
    # a step: contrast a = (|Y(x+1) - Y(x-1)| + 0) / 2 with edge pixels repeated is [0, 60, 60]; a >= act_ref
    # saturates the amplitude at base + gain = 3, a = 0 leaves base = 1
    edge = torch.zeros(1, 1, 3, 3, dtype=torch.uint8)
    edge[0, 0, 2] = 120
    out = watermark_embed_ref(edge, torch.ones(1, 1), cell=1, base=1.0, gain=2.0, act_ref=16.0)
    assert out[0, 0, :, 0].tolist() == [1, 3, 123]
