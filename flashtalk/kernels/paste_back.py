"""Paste-back: put a rendered crop back into the original frame through a feather mask, in one pass.

Convention. `affine` [B or 1, 2, 3] is the crop matrix A: it maps original-frame pixel coordinates to crop
pixel coordinates, (u, v) = A · (X, Y, 1), with pixel centres at integer coordinates and (0, 0) the centre
of the top-left pixel (OpenCV's convention; A is the matrix that `cv2.warpAffine(frame, A, (w, h))` uses
to cut the crop out of the frame). For every output pixel (X, Y) of the frame:

    crop_rgb = bilinear(crop, u, v)  with border padding (edge pixels repeat)
    m        = bilinear(mask, u, v)  with zeros padding (0 outside the crop)
    out      = clamp(floor(m · 255 · crop_rgb + (1 - m) · background + 0.5), 0, 255) as uint8

All coordinate and blend math is fp32. crop [B, 3, h, w] float in [0, 1], background [B or 1, Hb, Wb, 3]
uint8 (channel-last, as decoded frames are), mask [h, w] float in [0, 1] -> [B, Hb, Wb, 3] uint8.
`make_feather_mask` builds a mask for any crop size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from flashtalk.errors import FlashTalkError
from flashtalk.kernels.dispatch import choose

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def make_feather_mask(
    size: int | tuple[int, int],
    *,
    inner: float = 0.72,
    outer: float = 0.94,
    power: float = 4.0,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """[h, w] fp32 feather mask: 1 inside a rounded rectangle, 0 outside a larger one, smooth in between.

    With pixel-centre coordinates u, v in (-1, 1), r = (|u|^power + |v|^power)^(1/power) (a superellipse:
    power 2 is an ellipse, larger powers approach a rectangle); the mask is smoothstep((outer - r) /
    (outer - inner)), 1 for r <= inner and 0 for r >= outer."""
    h, w = (size, size) if isinstance(size, int) else size
    if h < 1 or w < 1:
        raise FlashTalkError(f"make_feather_mask: size must be positive; got {size}")
    if not (0.0 <= inner < outer) or power <= 0:
        raise FlashTalkError(f"make_feather_mask: need 0 <= inner < outer and power > 0; got {inner}, {outer}, {power}")
    v = (2 * torch.arange(h, dtype=torch.float64, device=device) + 1) / h - 1
    u = (2 * torch.arange(w, dtype=torch.float64, device=device) + 1) / w - 1
    r = (u.abs()[None, :] ** power + v.abs()[:, None] ** power) ** (1.0 / power)
    t = ((outer - r) / (outer - inner)).clamp(0.0, 1.0)
    return (t * t * (3 - 2 * t)).to(torch.float32)


def _check(crop: torch.Tensor, background: torch.Tensor, affine: torch.Tensor, mask: torch.Tensor) -> int:
    if crop.dim() != 4 or crop.shape[1] != 3 or min(crop.shape) < 1:
        raise FlashTalkError(f"paste_back: crop must be [B, 3, h, w]; got {tuple(crop.shape)}")
    if crop.dtype not in FLOAT_DTYPES:
        raise FlashTalkError(f"paste_back: crop must be floating point in [0, 1]; got {crop.dtype}")
    B, _, h, w = crop.shape
    if background.dim() != 4 or background.shape[3] != 3 or background.shape[0] not in (1, B) or min(background.shape) < 1:
        raise FlashTalkError(f"paste_back: background must be [B={B} or 1, Hb, Wb, 3]; got {tuple(background.shape)}")
    if background.dtype != torch.uint8:
        raise FlashTalkError(f"paste_back: background must be uint8; got {background.dtype}")
    if affine.dim() != 3 or tuple(affine.shape[1:]) != (2, 3) or affine.shape[0] not in (1, B):
        raise FlashTalkError(f"paste_back: affine must be [B={B} or 1, 2, 3]; got {tuple(affine.shape)}")
    if affine.dtype not in FLOAT_DTYPES:
        raise FlashTalkError(f"paste_back: affine must be floating point; got {affine.dtype}")
    if tuple(mask.shape) != (h, w) or mask.dtype not in FLOAT_DTYPES:
        raise FlashTalkError(f"paste_back: mask must be float [h, w] = [{h}, {w}]; got {mask.dtype} {tuple(mask.shape)}")
    for name, t in (("background", background), ("affine", affine), ("mask", mask)):
        if t.device != crop.device:
            raise FlashTalkError(f"paste_back: {name} is on {t.device}, crop on {crop.device}")
    return B


def paste_back_ref(crop: torch.Tensor, background: torch.Tensor, affine: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The paste-back with F.grid_sample, in fp32; see the module docstring."""
    B, _, h, w = crop.shape
    Hb, Wb = background.shape[1:3]
    dev = crop.device
    A = affine.to(torch.float32).expand(B, 2, 3)
    Y, X = torch.meshgrid(torch.arange(Hb, dtype=torch.float32, device=dev),
                          torch.arange(Wb, dtype=torch.float32, device=dev), indexing="ij")
    u = A[:, 0, 0, None, None] * X + A[:, 0, 1, None, None] * Y + A[:, 0, 2, None, None]  # [B, Hb, Wb]
    v = A[:, 1, 0, None, None] * X + A[:, 1, 1, None, None] * Y + A[:, 1, 2, None, None]
    grid = torch.stack([(2 * u + 1) / w - 1, (2 * v + 1) / h - 1], dim=-1)  # align_corners=False normalisation
    rgb = F.grid_sample(crop.to(torch.float32), grid, mode="bilinear", padding_mode="border", align_corners=False)
    m = F.grid_sample(mask.to(torch.float32).expand(B, 1, h, w), grid, mode="bilinear", padding_mode="zeros",
                      align_corners=False)
    bg = background.expand(B, Hb, Wb, 3).permute(0, 3, 1, 2).to(torch.float32)
    out = m * (rgb * 255.0) + (1 - m) * bg
    return torch.floor(out + 0.5).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def paste_back(crop: torch.Tensor, background: torch.Tensor, affine: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Blend crop [B, 3, h, w] into background [B or 1, Hb, Wb, 3] uint8 through `mask` [h, w], with the
    crop matrix `affine` [B or 1, 2, 3] (original -> crop pixels); returns [B, Hb, Wb, 3] uint8."""
    _check(crop, background, affine, mask)
    choose("paste_back", crop.device, unsupported="the Triton kernel is not written yet")
    return paste_back_ref(crop, background, affine, mask)
