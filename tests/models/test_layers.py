"""Blocks shared by the networks (`flashtalk.models.layers`): the float64 per-tap convolution against torch, the fp32
norms (fp32 statistics for low-precision inputs) and `set_compute_dtype` keeping them fp32."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from flashtalk.models.layers import Conv2d, Conv3d, FP32GroupNorm, FP32LayerNorm, conv_by_taps, set_compute_dtype
from tests.utils import assert_close


@pytest.mark.parametrize(
    "shape, kernel, padding",
    [
        pytest.param((2, 5, 7, 9, 6), (3, 3, 3), (1, 1, 1), id="3d-k3-B2"),
        pytest.param((1, 4, 5, 6, 7), (7, 7, 7), (3, 3, 3), id="3d-k7"),
        pytest.param((1, 3, 4, 5, 6), (2, 3, 1), (0, 1, 0), id="3d-uneven"),
        pytest.param((2, 3, 11, 13), (3, 3), (1, 1), id="2d-k3"),
        pytest.param((1, 6, 8, 9), (1, 1), (0, 0), id="2d-1x1"),
    ],
)
def test_conv_by_taps_matches_torch(shape, kernel, padding):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(*shape, generator=g, dtype=torch.float64)
    w = torch.randn(4, shape[1], *kernel, generator=g, dtype=torch.float64)
    b = torch.randn(4, generator=g, dtype=torch.float64)
    conv = F.conv3d if len(kernel) == 3 else F.conv2d
    assert_close(conv_by_taps(x, w, b, padding), conv(x, w, b, padding=padding), 1e-12, 1e-12)
    assert_close(conv_by_taps(x, w, None, padding), conv(x, w, None, padding=padding), 1e-12, 1e-12)
    # the module path: float64 CPU takes the per-tap route, other dtypes the regular convolution
    layer = (Conv3d if len(kernel) == 3 else Conv2d)(shape[1], 4, kernel, padding=padding).double()
    assert_close(layer(x), conv(x, layer.weight, layer.bias, padding=padding), 1e-12, 1e-12)
    x32 = x[:, :, ::2].float()  # non-contiguous
    assert_close(layer.float()(x32), conv(x32, layer.weight, layer.bias, padding=padding), 1e-6, 1e-6)


def test_fp32_norms_equal_torch_and_keep_fp32_statistics():
    torch.manual_seed(0)
    x = torch.randn(2, 7, 48) * 30 + 5  # a large mean: bf16 statistics would lose it
    ln, ref = FP32LayerNorm(48), nn.LayerNorm(48)
    gn, gref = FP32GroupNorm(7, 7), nn.GroupNorm(7, 7)
    with torch.no_grad():
        for m, r in ((ln, ref), (gn, gref)):
            m.weight.uniform_(0.5, 1.5), m.bias.uniform_(-1, 1)
            r.load_state_dict(m.state_dict())
    assert torch.equal(ln(x), ref(x)) and torch.equal(gn(x), gref(x))  # fp32: the same op, bit for bit
    xb = x.bfloat16()
    out = ln(xb)
    assert out.dtype == torch.bfloat16
    want = ref(xb.float())  # fp32 statistics of the bf16 input, then one rounding
    assert torch.equal(out, want.bfloat16())


def test_set_compute_dtype_keeps_norms_fp32():
    net = nn.Sequential(nn.Linear(4, 4), FP32LayerNorm(4), nn.Sequential(nn.Conv1d(2, 2, 3), FP32GroupNorm(1, 2)))
    net.register_buffer("table", torch.ones(3))
    set_compute_dtype(net, torch.bfloat16)
    assert net[0].weight.dtype == net[2][0].bias.dtype == net.table.dtype == torch.bfloat16
    assert net[1].weight.dtype == net[2][1].bias.dtype == torch.float32
    with pytest.raises(TypeError, match="LayerNorm would get fp32 parameters"):
        set_compute_dtype(nn.Sequential(nn.LayerNorm(4)), torch.float16)
