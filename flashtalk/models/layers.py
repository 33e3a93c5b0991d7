"""Building blocks shared by the renderer networks (LivePortrait's F, W and friends).

Every block keeps the official sub-module names (`conv`, `norm`, `conv1`, ...), so a network assembled from
them has the checkpoint's state-dict keys. BatchNorm is used in eval mode (running statistics).

`Conv2d` / `Conv3d` are `nn.Conv2d` / `nn.Conv3d` with the same parameters and keys; only their float64
CPU forward differs (see `conv_by_taps`), which keeps the float64 golden checks within memory and time.

Precision helpers (used by the motion path too): `FP32LayerNorm` / `FP32GroupNorm` keep their statistics in
fp32 for low-precision inputs, and `set_compute_dtype` casts a network to bf16 / fp16 except its norms.
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from torch import nn


def conv_by_taps(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, padding: tuple[int, ...]
) -> torch.Tensor:
    """Dense stride-1 convolution (2-D or 3-D, zero padding) as one GEMM per kernel tap.

    The padded input is stored channels-last and flattened over space; the output at flat position q reads
    the input at q + offset(tap), so every tap is a contiguous [L, Ci] @ [Ci, Co] product accumulated into
    the output (positions that wrap past a row are computed and cropped). Mathematically identical to
    F.conv2d/conv3d; PyTorch's own float64 CPU path builds an im2col buffer of Ci·prod(kernel)·voxels
    elements (about 25 GB for W's 7×7×7 mask conv) and runs at a few GFLOP/s.
    """
    n = x.dim() - 2
    batch, c_in = x.shape[:2]
    c_out, kernel = weight.shape[0], weight.shape[2:]
    xp = F.pad(x, [p for p in reversed(padding) for _ in range(2)])
    padded = xp.shape[2:]
    out_size = [s - k + 1 for s, k in zip(padded, kernel)]
    strides = [math.prod(padded[i + 1 :]) for i in range(n)]
    flat = xp.reshape(batch, c_in, -1).transpose(1, 2).contiguous()  # [B, P, Ci]
    length = sum((o - 1) * s for o, s in zip(out_size, strides)) + 1
    taps = weight.reshape(c_out, c_in, -1)
    out = x.new_zeros(batch, out_size[0] * strides[0], c_out)
    if bias is not None:
        out += bias
    for t, offsets in enumerate(itertools.product(*(range(k) for k in kernel))):
        start = sum(o * s for o, s in zip(offsets, strides))
        w_t = taps[:, :, t].t()  # [Ci, Co]
        for b in range(batch):
            out[b, :length].addmm_(flat[b, start : start + length], w_t)  # [L, Ci] @ [Ci, Co] -> [L, Co]
    out = out.view(batch, out_size[0], *padded[1:], c_out)
    out = out[(slice(None), slice(None), *(slice(0, o) for o in out_size[1:]))]
    return out.movedim(-1, 1).contiguous()


class _TapConvForward:
    """Forward of a plain (stride 1, no dilation, one group, zero padding) conv: `conv_by_taps` for float64
    CPU inputs, the regular PyTorch convolution otherwise."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        plain = (
            all(s == 1 for s in self.stride)
            and all(d == 1 for d in self.dilation)
            and self.groups == 1
            and self.padding_mode == "zeros"
            and not isinstance(self.padding, str)
        )
        if plain and x.dtype == torch.float64 and x.device.type == "cpu":
            return conv_by_taps(x, self.weight, self.bias, self.padding)
        return super().forward(x)


class Conv2d(_TapConvForward, nn.Conv2d):
    pass


class Conv3d(_TapConvForward, nn.Conv3d):
    pass


class ConvNormAct2d(nn.Module):
    """conv k×k (stride 1, zero padding) → BatchNorm2d → ReLU, or LeakyReLU(negative_slope) when given.
    Keys `conv.*`, `norm.*` (LivePortrait's SameBlock2d)."""

    def __init__(
        self, c_in: int, c_out: int, kernel_size: int = 3, padding: int = 1, negative_slope: float | None = None
    ):
        super().__init__()
        self.conv = Conv2d(c_in, c_out, kernel_size, padding=padding)
        self.norm = nn.BatchNorm2d(c_out)
        self.negative_slope = negative_slope

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(self.conv(x))
        return F.relu(y) if self.negative_slope is None else F.leaky_relu(y, self.negative_slope)


class DownBlock2d(nn.Module):
    """conv 3×3 → BatchNorm2d → ReLU → 2×2 average pool (halves H and W)."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv = Conv2d(c_in, c_out, 3, padding=1)
        self.norm = nn.BatchNorm2d(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(F.relu(self.norm(self.conv(x))), 2)


class DownBlock3d(nn.Module):
    """conv 3×3×3 → BatchNorm3d → ReLU → (1,2,2) average pool (halves H and W, keeps depth)."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv = Conv3d(c_in, c_out, 3, padding=1)
        self.norm = nn.BatchNorm3d(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool3d(F.relu(self.norm(self.conv(x))), (1, 2, 2))


class UpBlock3d(nn.Module):
    """nearest upsample (1,2,2) (doubles H and W, keeps depth) → conv 3×3×3 → BatchNorm3d → ReLU."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv = Conv3d(c_in, c_out, 3, padding=1)
        self.norm = nn.BatchNorm3d(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=(1.0, 2.0, 2.0), mode="nearest")
        return F.relu(self.norm(self.conv(x)))


class ResBlock3d(nn.Module):
    """Pre-activation residual block: x + conv2(ReLU(norm2(conv1(ReLU(norm1(x)))))), convs 3×3×3 C→C."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = Conv3d(channels, channels, 3, padding=1)
        self.conv2 = Conv3d(channels, channels, 3, padding=1)
        self.norm1 = nn.BatchNorm3d(channels)
        self.norm2 = nn.BatchNorm3d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv1(F.relu(self.norm1(x)))
        return x + self.conv2(F.relu(self.norm2(y)))


def _hourglass_width(block_expansion: int, max_features: int, level: int) -> int:
    return min(max_features, block_expansion * 2**level)


class HourglassEncoder3d(nn.Module):
    """`num_blocks` DownBlock3d; returns the input and every block's output (the decoder's skips)."""

    def __init__(self, block_expansion: int, in_features: int, num_blocks: int, max_features: int):
        super().__init__()
        self.down_blocks = nn.ModuleList(
            DownBlock3d(
                in_features if i == 0 else _hourglass_width(block_expansion, max_features, i),
                _hourglass_width(block_expansion, max_features, i + 1),
            )
            for i in range(num_blocks)
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = [x]
        for block in self.down_blocks:
            outs.append(block(outs[-1]))
        return outs


class HourglassDecoder3d(nn.Module):
    """UpBlock3d per level, each output concatenated with the matching skip as [up, skip]; then
    conv 3×3×3 → BatchNorm3d → ReLU at full resolution with `block_expansion + in_features` channels."""

    def __init__(self, block_expansion: int, in_features: int, num_blocks: int, max_features: int):
        super().__init__()
        self.up_blocks = nn.ModuleList(
            UpBlock3d(
                (1 if i == num_blocks - 1 else 2) * _hourglass_width(block_expansion, max_features, i + 1),
                _hourglass_width(block_expansion, max_features, i),
            )
            for i in reversed(range(num_blocks))
        )
        self.out_channels = block_expansion + in_features
        self.conv = Conv3d(self.out_channels, self.out_channels, 3, padding=1)
        self.norm = nn.BatchNorm3d(self.out_channels)

    def forward(self, skips: list[torch.Tensor]) -> torch.Tensor:
        out = skips[-1]
        for block, skip in zip(self.up_blocks, reversed(skips[:-1])):
            out = torch.cat([block(out), skip], dim=1)
        return F.relu(self.norm(self.conv(out)))


class Hourglass3d(nn.Module):
    """3-D U-Net over (D, H, W) that pools H and W only: input [B, in_features, D, H, W] with H and W
    divisible by 2**num_blocks → [B, block_expansion + in_features, D, H, W]."""

    def __init__(self, block_expansion: int, in_features: int, num_blocks: int, max_features: int):
        super().__init__()
        self.encoder = HourglassEncoder3d(block_expansion, in_features, num_blocks, max_features)
        self.decoder = HourglassDecoder3d(block_expansion, in_features, num_blocks, max_features)
        self.out_channels = self.decoder.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


# --------------------------------------------------------------------------------------------- precision


def _stat_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)  # at least fp32 (fp64 stays fp64)


class FP32LayerNorm(nn.LayerNorm):
    """nn.LayerNorm (same parameters and keys) whose statistics and affine run in at least fp32 whatever the
    input dtype; the result comes back in the input dtype. Its parameters stay fp32 under `set_compute_dtype`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = _stat_dtype(x.dtype)
        w = None if self.weight is None else self.weight.to(c)
        b = None if self.bias is None else self.bias.to(c)
        return F.layer_norm(x.to(c), self.normalized_shape, w, b, self.eps).to(x.dtype)


class FP32GroupNorm(nn.GroupNorm):
    """nn.GroupNorm with at-least-fp32 statistics and affine (see FP32LayerNorm)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = _stat_dtype(x.dtype)
        w = None if self.weight is None else self.weight.to(c)
        b = None if self.bias is None else self.bias.to(c)
        return F.group_norm(x.to(c), self.num_groups, w, b, self.eps).to(x.dtype)


_NORMS = (nn.LayerNorm, nn.GroupNorm)


def set_compute_dtype(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Cast the floating parameters and buffers of `module` to `dtype`, except those of its norm layers,
    which stay fp32 (their forward must then upcast, as FP32LayerNorm / FP32GroupNorm do). In place."""
    for sub in module.modules():
        keep = isinstance(sub, _NORMS)
        if keep and not isinstance(sub, (FP32LayerNorm, FP32GroupNorm)):
            raise TypeError(
                f"{type(sub).__name__} would get fp32 parameters but computes in its input dtype; "
                "use FP32LayerNorm / FP32GroupNorm"
            )
        target = torch.promote_types(dtype, torch.float32) if keep else dtype
        for _, p in sub.named_parameters(recurse=False):
            if p.is_floating_point():
                p.data = p.data.to(target)
        for name, b in sub.named_buffers(recurse=False):
            if b.is_floating_point():
                setattr(sub, name, b.to(target))
    return module
