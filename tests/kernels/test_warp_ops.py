"""The four warping ops together (dense_motion_input, deform_warp, warp2d, paste_back), on the CPU under the Triton
interpreter and on CUDA compiled (`kernel_device`: tensors made without a device land on it): their `torch.library`
registrations pass `opcheck`, and bad inputs are named in a FlashTalkError."""

from __future__ import annotations

import pytest
import torch

from flashtalk.errors import FlashTalkError
from flashtalk.kernels import dispatch
from flashtalk.kernels.cases import grid2d, keypoints
from flashtalk.kernels.deform_warp import deform_warp
from flashtalk.kernels.dense_motion_input import dense_motion_input
from flashtalk.kernels.paste_back import make_feather_mask, paste_back
from flashtalk.kernels.warp2d import warp2d

triton = pytest.importorskip("triton")

pytestmark = pytest.mark.usefixtures("on_kernel_device")


def test_custom_ops_opcheck():
    xs, xd = keypoints(1, 2)
    with dispatch.use_kernels("triton"):
        torch.library.opcheck(torch.ops.flashtalk.dense_motion_input, (torch.randn(1, 2, 2, 3, 2), xs, xd))
        torch.library.opcheck(
            torch.ops.flashtalk.deform_warp, (torch.randn(1, 3, 2, 3, 2), xs, xd, torch.randn(1, 2, 2, 2, 3), True)
        )
        torch.library.opcheck(torch.ops.flashtalk.warp2d, (torch.randn(1, 2, 3, 4), grid2d(1, 2, 3), "border"))
        torch.library.opcheck(
            torch.ops.flashtalk.paste_back,
            (
                torch.rand(2, 3, 4, 5),
                torch.randint(0, 256, (1, 6, 7, 3), dtype=torch.uint8),
                torch.tensor([[[1.0, 0.0, -1.0], [0.0, 1.0, -1.0]]]),
                make_feather_mask((4, 5)),
            ),
        )


def test_bad_inputs_are_named():
    xs, xd = keypoints(2, 3)
    with pytest.raises(FlashTalkError, match="compressed"):
        dense_motion_input(torch.randn(2, 4, 3, 3), xs, xd)
    with pytest.raises(FlashTalkError, match="kp_driving"):
        dense_motion_input(torch.randn(2, 4, 2, 3, 3), xs, xd[:1])
    with pytest.raises(FlashTalkError, match="K\\+1"):
        deform_warp(torch.randn(2, 3, 2, 3, 3), xs, xd, torch.randn(2, 4, 2, 3, 3))
    with pytest.raises(FlashTalkError, match="padding"):
        warp2d(torch.randn(1, 3, 4, 4), torch.zeros(1, 2, 2, 2), padding="reflection")
    with pytest.raises(FlashTalkError, match="uint8"):
        paste_back(torch.rand(1, 3, 4, 4), torch.zeros(1, 8, 8, 3), torch.zeros(1, 2, 3), torch.ones(4, 4))
    with pytest.raises(FlashTalkError, match="mask"):
        paste_back(
            torch.rand(1, 3, 4, 4), torch.zeros(1, 8, 8, 3, dtype=torch.uint8), torch.zeros(1, 2, 3), torch.ones(5, 4)
        )
