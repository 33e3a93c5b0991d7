"""The warping network W on the renderer's fast path: channels-last-3d end to end.

`ChannelsLastWarpingNetwork(net)` wraps a BatchNorm-folded `WarpingNetwork` (`optimize_renderer` folds first) and
shares its weights. Every activation of W stays `torch.channels_last_3d` from the compress conv to the
last one, so cuDNN runs each Conv3d in NDHWC without a layout round trip:

* the two 2-D convolutions that read a volume flattened to channels c·D + d (`occlusion`: 142·16 -> 1,
  7×7; `third`: 32·16 -> 256, 3×3) become the equal Conv3d with a full-depth kernel (D, k, k) and no
  depth padding (weight [O, C·D, k, k] viewed [O, C, D, k, k]); their [B, O, 1, H, W] outputs are
  channels-last 2-D views once the depth is dropped, with no copy (a `.view` of a channels-last-3d
  volume as [B, C·D, H, W] is impossible and was a copy);
* the Triton kernels (`dense_motion_input`, `deform_warp`) write their outputs in their input's memory
  format;
* the hourglass's (1, 2, 2) average pools are the mean of the four strided H, W phases (exact: a sum of
  four and a power-of-two scale), which keeps the layout, where avg_pool3d returns NCDHW on the CPU;
* one source broadcast over the batch (f_s expanded) is converted once, not per frame.

`fused_tail=True` (off by default; `FLASHTALK_WARP_TAIL=fused` for `optimize_renderer`) replaces the mask
conv + `deform_warp` by the one `warp_tail` kernel (kernel research, `flashtalk.kernels.warp_tail`): the
mask logits and the deformation never reach memory. It stays off until a GPU run shows it faster than
cuDNN's Conv3d + `deform_warp`; a call that asks for the deformation runs the unfused pair.

`torch.backends.cudnn.benchmark` is switched on for CUDA by `optimize_renderer`: the renderer's shapes
are the fixed batch buckets, so each conv's algorithm search runs once, in the warm-up before capture.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from flashtalk.kernels.deform_warp import deform_warp
from flashtalk.kernels.dense_motion_input import dense_motion_input
from flashtalk.kernels.warp_tail import pack_mask_weight, warp_tail
from flashtalk.models.layers import DownBlock3d
from flashtalk.models.liveportrait.warping import WarpingNetwork

CL3D = torch.channels_last_3d


def depth_conv(conv: nn.Conv2d, depth: int) -> nn.Conv3d:
    """The Conv3d equal to a 2-D `conv` over a volume flattened to channels c·depth + d: kernel
    (depth, k, k), depth padding 0, the 2-D padding in H and W; weights copied (exact)."""
    o, cd, kh, kw = conv.weight.shape
    if cd % depth:
        raise ValueError(f"conv input channels {cd} are not a multiple of the depth {depth}")
    out = nn.Conv3d(cd // depth, o, (depth, kh, kw), padding=(0, *conv.padding), bias=conv.bias is not None)
    out.to(device=conv.weight.device, dtype=conv.weight.dtype)
    with torch.no_grad():
        out.weight.copy_(conv.weight.view(o, cd // depth, depth, kh, kw))
        if conv.bias is not None:
            out.bias.copy_(conv.bias)
    return out


def to_format(x: torch.Tensor, fmt: torch.memory_format) -> torch.Tensor:
    """x in memory format `fmt`; a batch broadcast from one sample (stride 0) is converted once."""
    if x.is_contiguous(memory_format=fmt):
        return x
    if x.shape[0] > 1 and x.stride(0) == 0:
        return x[:1].contiguous(memory_format=fmt).expand_as(x)
    return x.contiguous(memory_format=fmt)


def pool_hw(x: torch.Tensor) -> torch.Tensor:
    """avg_pool3d(x, (1, 2, 2)) for even H, W as four strided views: the output keeps x's memory format."""
    return (x[..., 0::2, 0::2] + x[..., 0::2, 1::2] + x[..., 1::2, 0::2] + x[..., 1::2, 1::2]) * 0.25


class _DownBlock(nn.Module):
    """DownBlock3d (norm folded) with `pool_hw`; shares the block's conv."""

    def __init__(self, block: DownBlock3d) -> None:
        super().__init__()
        self.conv = block.conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pool_hw(F.relu(self.conv(x)))


class ChannelsLastWarpingNetwork(nn.Module):
    """WarpingNetwork's forward (same inputs, same dict) on a folded network, channels-last-3d when
    `channels_last` (see the module docstring); the weights are shared with `net`."""

    def __init__(self, net: WarpingNetwork, channels_last: bool = True, fused_tail: bool = False) -> None:
        super().__init__()
        dm = net.dense_motion_network
        if not isinstance(dm.norm, nn.Identity) or not isinstance(net.third.norm, nn.Identity):
            raise ValueError(
                "ChannelsLastWarpingNetwork needs a BatchNorm-folded WarpingNetwork (fold_batchnorms first)"
            )
        depth = net.cfg.dense_motion_params.reshape_depth
        self.cfg = net.cfg
        self.compress, self.hourglass, self.mask = dm.compress, dm.hourglass, dm.mask
        downs = self.hourglass.encoder.down_blocks
        if not all(isinstance(b.norm, nn.Identity) for b in downs):
            raise ValueError(
                "ChannelsLastWarpingNetwork needs a BatchNorm-folded WarpingNetwork (fold_batchnorms first)"
            )
        self.hourglass.encoder.down_blocks = nn.ModuleList(_DownBlock(b) for b in downs)
        self.occlusion = depth_conv(dm.occlusion, depth)
        self.third = depth_conv(net.third.conv, depth)
        self.third_slope = net.third.negative_slope
        self.fourth = net.fourth
        self.memory_format = CL3D if channels_last else torch.contiguous_format
        self.fused_tail = fused_tail
        if fused_tail:  # the mask conv's weights packed once for the kernel (cast with the module)
            self.register_buffer("mask_packed", pack_mask_weight(self.mask.weight.detach()), persistent=False)
        if channels_last:
            for m in self.modules():
                if isinstance(m, nn.Conv3d):
                    m.weight.data = m.weight.data.contiguous(memory_format=CL3D)
                elif isinstance(m, nn.Conv2d):
                    m.weight.data = m.weight.data.contiguous(memory_format=torch.channels_last)
        self.eval()

    def forward(
        self,
        feature_3d: torch.Tensor,
        kp_driving: torch.Tensor,
        kp_source: torch.Tensor,
        *,
        return_deformation: bool = True,
    ) -> dict[str, torch.Tensor | None]:
        WarpingNetwork.check_input(self, feature_3d, kp_driving, kp_source)  # uses cfg and fourth only
        feature = to_format(feature_3d, self.memory_format)
        compressed = torch.relu(self.compress(feature))  # the BatchNorm is folded into compress
        prediction = self.hourglass(dense_motion_input(compressed, kp_source, kp_driving))
        occlusion = torch.sigmoid(self.occlusion(prediction))[:, :, 0]  # [B, 1, H, W]
        if self.fused_tail and not return_deformation:
            warped, deformation = (
                warp_tail(
                    prediction,
                    self.mask.weight,
                    self.mask.bias,
                    kp_source,
                    kp_driving,
                    feature,
                    packed=self.mask_packed,
                ),
                None,
            )
        else:
            warped, deformation = deform_warp(
                self.mask(prediction), kp_source, kp_driving, feature, return_deformation=return_deformation
            )
        h = self.third(warped)[:, :, 0]  # [B, 256, H, W], channels-last 2-D
        h = F.relu(h) if self.third_slope is None else F.leaky_relu(h, self.third_slope)
        out = self.fourth(h)
        return {"out": out * occlusion, "deformation": deformation, "occlusion_map": occlusion}
