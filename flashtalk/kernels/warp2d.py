"""2-D bilinear warp: exactly F.grid_sample(image, grid, mode="bilinear", align_corners=False) with
"zeros" or "border" padding. grid [B, Ho, Wo, 2] holds normalised (x, y): x = -1 is the left edge of the
leftmost pixel, +1 the right edge of the rightmost one.

The reference samples in fp32 (fp64 for fp64 inputs); the output has image's dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from flashtalk.errors import FlashTalkError
from flashtalk.kernels.dispatch import choose

PADDING_MODES = ("zeros", "border")
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _check(image: torch.Tensor, grid: torch.Tensor, padding: str) -> None:
    if image.dim() != 4 or min(image.shape) < 1:
        raise FlashTalkError(f"warp2d: image must be [B, C, H, W]; got {tuple(image.shape)}")
    if grid.dim() != 4 or grid.shape[0] != image.shape[0] or grid.shape[3] != 2:
        raise FlashTalkError(f"warp2d: grid must be [B={image.shape[0]}, Ho, Wo, 2]; got {tuple(grid.shape)}")
    for name, t in (("image", image), ("grid", grid)):
        if t.dtype not in FLOAT_DTYPES:
            raise FlashTalkError(f"warp2d: {name} must be floating point; got {t.dtype}")
    if grid.device != image.device:
        raise FlashTalkError(f"warp2d: grid is on {grid.device}, image on {image.device}")
    if padding not in PADDING_MODES:
        raise FlashTalkError(f"warp2d: padding {padding!r} is not one of {', '.join(PADDING_MODES)}")


def warp2d_ref(image: torch.Tensor, grid: torch.Tensor, *, padding: str = "zeros") -> torch.Tensor:
    """F.grid_sample in fp32 (fp64 for fp64 inputs), cast back to image's dtype."""
    compute = torch.float64 if torch.float64 in (image.dtype, grid.dtype) else torch.float32
    out = F.grid_sample(image.to(compute), grid.to(compute), mode="bilinear", padding_mode=padding, align_corners=False)
    return out.to(image.dtype)


def warp2d(image: torch.Tensor, grid: torch.Tensor, *, padding: str = "zeros") -> torch.Tensor:
    """Bilinear sample of image [B, C, H, W] at grid [B, Ho, Wo, 2] -> [B, C, Ho, Wo] (image's dtype)."""
    _check(image, grid, padding)
    choose("warp2d", image.device, unsupported="the Triton kernel is not written yet")
    return warp2d_ref(image, grid, padding=padding)
