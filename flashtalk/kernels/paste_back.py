"""Paste-back: put a rendered crop back into the original frame through a feather mask, in one pass.

Convention. `affine` [B or 1, 2, 3] is the crop matrix A: it maps original-frame pixel coordinates to crop
pixel coordinates, (u, v) = A · (X, Y, 1), with pixel centres at integer coordinates and (0, 0) the centre
of the top-left pixel (OpenCV's convention; A is the matrix that `cv2.warpAffine(frame, A, (w, h))` uses
to cut the crop out of the frame). For every output pixel (X, Y) of the frame:

    crop_rgb = bilinear(crop, u, v)  with border padding (edge pixels repeat)
    m        = bilinear(mask, u, v)  with zeros padding (0 outside the crop)
    out      = clamp(floor(m · 255 · crop_rgb + (1 - m) · background + 0.5), 0, 255) as uint8

The Triton kernel does it in one pass, one program per (frame, tile of output pixels): affine, 4 corners,
3 colour channels + mask, blend, round, store. All coordinate and blend math is fp32. crop [B, 3, h, w] float in [0, 1], background [B or 1, Hb, Wb, 3]
uint8 (channel-last, as decoded frames are), mask [h, w] float in [0, 1] -> [B, Hb, Wb, 3] uint8.
`make_feather_mask` builds a mask for any crop size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from flashtalk.errors import FlashTalkError
from flashtalk.kernels.contract import OpContract, dispatched
from flashtalk.kernels.dispatch import choose
from flashtalk.kernels.triton_compat import _jit, axis_corners, block_size, tl, triton
from flashtalk.kernels.warp2d import bilinear_gather

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


# --------------------------------------------------------------------------------------------- Triton


@_jit
def _paste_back_kernel(
    c_ptr, bg_ptr, a_ptr, m_ptr, out_ptr,
    h, w, Hb, Wb,
    s_cb, s_cc, s_ch, s_cw,
    s_bb, s_bh, s_bw, s_bc,
    s_ab, s_ar, s_ac,
    s_mh, s_mw,
    s_ob, s_oh, s_ow, s_oc,
    BP: tl.constexpr,
):
    i_p = tl.program_id(0)
    i_b = tl.program_id(1).to(tl.int64)
    o_p = i_p * BP + tl.arange(0, BP)  # [BP] flat frame pixel index over Hb·Wb
    m_p = o_p < Hb * Wb
    i_x = (o_p % Wb).to(tl.int64)
    i_y = (o_p // Wb).to(tl.int64)
    X = i_x.to(tl.float32)
    Y = i_y.to(tl.float32)
    p_a = a_ptr + i_b * s_ab
    u = tl.load(p_a).to(tl.float32) * X + tl.load(p_a + s_ac).to(tl.float32) * Y + tl.load(p_a + 2 * s_ac).to(tl.float32)
    p_a += s_ar
    v = tl.load(p_a).to(tl.float32) * X + tl.load(p_a + s_ac).to(tl.float32) * Y + tl.load(p_a + 2 * s_ac).to(tl.float32)
    # mask: zeros outside the crop
    x0, x1, wx0, wx1 = axis_corners(u, w, False)
    y0, y1, wy0, wy1 = axis_corners(v, h, False)
    x0, x1, y0, y1 = x0.to(tl.int64), x1.to(tl.int64), y0.to(tl.int64), y1.to(tl.int64)
    b_m = bilinear_gather(m_ptr, m_p, y0 * s_mh + x0 * s_mw, y0 * s_mh + x1 * s_mw, y1 * s_mh + x0 * s_mw,
                          y1 * s_mh + x1 * s_mw, wy0 * wx0, wy0 * wx1, wy1 * wx0, wy1 * wx1)  # [BP]
    # colour: edge pixels repeat
    x0, x1, wx0, wx1 = axis_corners(u, w, True)
    y0, y1, wy0, wy1 = axis_corners(v, h, True)
    x0, x1, y0, y1 = x0.to(tl.int64), x1.to(tl.int64), y0.to(tl.int64), y1.to(tl.int64)
    o00 = y0 * s_ch + x0 * s_cw
    o01 = y0 * s_ch + x1 * s_cw
    o10 = y1 * s_ch + x0 * s_cw
    o11 = y1 * s_ch + x1 * s_cw
    p_c = c_ptr + i_b * s_cb
    p_bg = bg_ptr + i_b * s_bb + i_y * s_bh + i_x * s_bw
    p_o = out_ptr + i_b * s_ob + i_y * s_oh + i_x * s_ow
    for i_c in range(3):
        b_c = bilinear_gather(p_c + i_c * s_cc, m_p, o00, o01, o10, o11, wy0 * wx0, wy0 * wx1, wy1 * wx0, wy1 * wx1)
        b_bg = tl.load(p_bg + i_c * s_bc, mask=m_p, other=0).to(tl.float32)
        b_o = b_m * (b_c * 255.0) + (1.0 - b_m) * b_bg
        b_o = tl.minimum(tl.maximum(tl.floor(b_o + 0.5), 0.0), 255.0)
        tl.store(p_o + i_c * s_oc, b_o.to(tl.uint8), mask=m_p)


def _launch(crop: torch.Tensor, background: torch.Tensor, affine: torch.Tensor, mask: torch.Tensor,
            out: torch.Tensor) -> torch.Tensor:
    """Run the kernel into `out` [B, Hb, Wb, 3] uint8 (any strides); background / affine of batch 1 are
    broadcast through a zero batch stride."""
    B, _, h, w = crop.shape
    Hb, Wb = background.shape[1:3]
    s_bg = background.stride()
    s_a = affine.stride()
    BP = block_size(Hb * Wb)
    _paste_back_kernel[(triton.cdiv(Hb * Wb, BP), B)](
        crop, background, affine, mask, out, h, w, Hb, Wb,
        *crop.stride(), 0 if background.shape[0] == 1 else s_bg[0], *s_bg[1:],
        0 if affine.shape[0] == 1 else s_a[0], *s_a[1:], *mask.stride(), *out.stride(),
        BP=BP, num_warps=4,
    )
    return out


@torch.library.custom_op("flashtalk::paste_back", mutates_args=())
def _paste_back_op(crop: torch.Tensor, background: torch.Tensor, affine: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    out = torch.empty((crop.shape[0], *background.shape[1:]), dtype=torch.uint8, device=crop.device)
    return _launch(crop, background, affine, mask, out)


@_paste_back_op.register_fake
def _(crop: torch.Tensor, background: torch.Tensor, affine: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return background.new_empty((crop.shape[0], *background.shape[1:]))


CONTRACT = OpContract(
    op="paste_back",
    signature="crop, background, affine, mask",
    accepts=(
        "crop [B, 3, h, w] float in [0, 1] (fp32, fp16, bf16, fp64), any strides",
        "background [B or 1, Hb, Wb, 3] uint8 (broadcast over B), affine [B or 1, 2, 3] (original -> crop "
        "pixels), mask [h, w] float in [0, 1]",
        "crops that reach past the frame's edges, rotations, scales",
    ),
    returns="[B, Hb, Wb, 3] uint8",
    may_refuse="our kernel serves every valid call",
    check=lambda crop, background, affine, mask: _check(crop, background, affine, mask),
    outputs=lambda crop, background, affine, mask: [((crop.shape[0], *background.shape[1:]), torch.uint8)],
    reference=paste_back_ref,
    rule="uint8",
)


@dispatched(CONTRACT)
def paste_back(crop: torch.Tensor, background: torch.Tensor, affine: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Blend crop [B, 3, h, w] into background [B or 1, Hb, Wb, 3] uint8 through `mask` [h, w], with the
    crop matrix `affine` [B or 1, 2, 3] (original -> crop pixels); returns [B, Hb, Wb, 3] uint8."""
    _check(crop, background, affine, mask)
    if choose("paste_back", crop.device).use_triton:
        return _paste_back_op(crop, background, affine, mask)
    return paste_back_ref(crop, background, affine, mask)


def compile_variants():
    """The launches `flashtalk kernels check` compiles: a 512² crop pasted into a 1080p photo (one background
    broadcast over the batch), batch 1 and 16, fp32 and bf16 crops."""
    from flashtalk.kernels.check import Variant, meta

    def call(B: int, dtype: torch.dtype):
        crop, bg = meta(B, 3, 512, 512, dtype=dtype), meta(1, 1080, 1920, 3, dtype=torch.uint8)
        affine, mask = meta(1, 2, 3), meta(512, 512)
        return lambda: _launch(crop, bg, affine, mask, meta(B, 1080, 1920, 3, dtype=torch.uint8))

    return [Variant(f"paste-back B{B} 512² -> 1920x1080 {name}", call(B, dtype))
            for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)) for B in (1, 16)]
