"""2-D bilinear warp: exactly F.grid_sample(image, grid, mode="bilinear", align_corners=False) with
"zeros" or "border" padding. grid [B, Ho, Wo, 2] holds normalised (x, y): x = -1 is the left edge of the
leftmost pixel, +1 the right edge of the rightmost one.

The Triton kernel runs one program per (batch, tile of output pixels): fp32 coordinates, 4 corners,
all C channels; fp64 inputs run the reference.

The reference samples in fp32 (fp64 for fp64 inputs); the output has image's dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from flashtalk.errors import FlashTalkError
from flashtalk.kernels.contract import OpContract, dispatched
from flashtalk.kernels.dispatch import choose
from flashtalk.kernels.triton_compat import _jit, block_size, grid_corners, tl, to_element, triton

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


# --------------------------------------------------------------------------------------------- Triton


@_jit
def bilinear_gather(p, m, o00, o01, o10, o11, w00, w01, w10, w11):
    """Σ over the 4 corners of weight · value at pointer p + offset (fp32); a zero weight skips the load."""
    acc = w00 * tl.load(p + o00, mask=m & (w00 != 0.0), other=0.0).to(tl.float32)
    acc += w01 * tl.load(p + o01, mask=m & (w01 != 0.0), other=0.0).to(tl.float32)
    acc += w10 * tl.load(p + o10, mask=m & (w10 != 0.0), other=0.0).to(tl.float32)
    acc += w11 * tl.load(p + o11, mask=m & (w11 != 0.0), other=0.0).to(tl.float32)
    return acc


@_jit
def _warp2d_kernel(
    x_ptr, g_ptr, out_ptr,
    C, H, W, Ho, Wo,
    s_xb, s_xc, s_xh, s_xw,
    s_gb, s_gh, s_gw, s_gx,
    s_ob, s_oc, s_oh, s_ow,
    BP: tl.constexpr,
    BORDER: tl.constexpr,
):
    i_p = tl.program_id(0)
    i_b = tl.program_id(1).to(tl.int64)
    o_p = i_p * BP + tl.arange(0, BP)  # [BP] flat output pixel index over Ho·Wo
    m_p = o_p < Ho * Wo
    i_w = (o_p % Wo).to(tl.int64)
    i_h = (o_p // Wo).to(tl.int64)
    p_g = g_ptr + i_b * s_gb + i_h * s_gh + i_w * s_gw
    gx = tl.load(p_g, mask=m_p, other=0.0).to(tl.float32)
    gy = tl.load(p_g + s_gx, mask=m_p, other=0.0).to(tl.float32)
    x0, x1, wx0, wx1 = grid_corners(gx, W, BORDER)
    y0, y1, wy0, wy1 = grid_corners(gy, H, BORDER)
    ox0 = x0.to(tl.int64) * s_xw
    ox1 = x1.to(tl.int64) * s_xw
    oy0 = y0.to(tl.int64) * s_xh
    oy1 = y1.to(tl.int64) * s_xh
    p_x = x_ptr + i_b * s_xb
    p_o = out_ptr + i_b * s_ob + i_h * s_oh + i_w * s_ow
    for i_c in range(C):
        b_v = bilinear_gather(p_x + i_c * s_xc, m_p, oy0 + ox0, oy0 + ox1, oy1 + ox0, oy1 + ox1,
                              wy0 * wx0, wy0 * wx1, wy1 * wx0, wy1 * wx1)  # [BP]
        p_oc = p_o + i_c * s_oc
        tl.store(p_oc, to_element(b_v, p_oc), mask=m_p)


def _launch(image: torch.Tensor, grid: torch.Tensor, out: torch.Tensor, padding: str) -> torch.Tensor:
    """Run the kernel into `out` [B, C, Ho, Wo] (any strides)."""
    B, C, H, W = image.shape
    Ho, Wo = grid.shape[1:3]
    BP = block_size(Ho * Wo)
    _warp2d_kernel[(triton.cdiv(Ho * Wo, BP), B)](
        image, grid, out, C, H, W, Ho, Wo,
        *image.stride(), *grid.stride(), *out.stride(),
        BP=BP, BORDER=padding == "border", num_warps=4,
    )
    return out


@torch.library.custom_op("flashtalk::warp2d", mutates_args=())
def _warp2d_op(image: torch.Tensor, grid: torch.Tensor, padding: str) -> torch.Tensor:
    out = torch.empty((image.shape[0], image.shape[1], grid.shape[1], grid.shape[2]), dtype=image.dtype, device=image.device)
    return _launch(image, grid, out, padding)


@_warp2d_op.register_fake
def _(image: torch.Tensor, grid: torch.Tensor, padding: str) -> torch.Tensor:
    return image.new_empty((image.shape[0], image.shape[1], grid.shape[1], grid.shape[2]))


CONTRACT = OpContract(
    op="warp2d",
    signature="image, grid, *, padding='zeros'",
    accepts=(
        "image [B, C, H, W] fp32, fp16, bf16 (fp64: the reference runs), any strides, sizes down to 1x1",
        "grid [B, Ho, Wo, 2] normalised (x, y), any float dtype and strides; points on and past the edges",
        "padding 'zeros' or 'border' (F.grid_sample, bilinear, align_corners=False)",
    ),
    returns="[B, C, Ho, Wo] in image's dtype",
    may_refuse="our kernel refuses fp64 inputs (the reference runs)",
    check=lambda image, grid, *, padding="zeros": _check(image, grid, padding),
    outputs=lambda image, grid, **_: [((image.shape[0], image.shape[1], *grid.shape[1:3]), image.dtype)],
    reference=warp2d_ref,
)


@dispatched(CONTRACT)
def warp2d(image: torch.Tensor, grid: torch.Tensor, *, padding: str = "zeros") -> torch.Tensor:
    """Bilinear sample of image [B, C, H, W] at grid [B, Ho, Wo, 2] -> [B, C, Ho, Wo] (image's dtype)."""
    _check(image, grid, padding)
    unsupported = "float64 inputs (the kernel computes in fp32)" if torch.float64 in (image.dtype, grid.dtype) else None
    if choose("warp2d", image.device, unsupported).use_triton:
        return _warp2d_op(image, grid, padding)
    return warp2d_ref(image, grid, padding=padding)


def compile_variants():
    """The launches `flashtalk kernels check` compiles: the preview renderer's call (a 512² RGB portrait
    expanded over the batch, the grid a channels-last view of x / y planes), batch 1 and 32."""
    from flashtalk.kernels.check import Variant, meta

    def call(B: int, dtype: torch.dtype, padding: str):
        image = meta(1, 3, 512, 512, dtype=dtype).expand(B, -1, -1, -1)
        grid = meta(B, 2, 512, 512, dtype=dtype).permute(0, 2, 3, 1)
        return lambda: _launch(image, grid, meta(B, 3, 512, 512, dtype=dtype), padding)

    return [Variant(f"preview warp B{B} 512² {padding} {name}", call(B, dtype, padding))
            for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16))
            for B in (1, 32) for padding in ("border", "zeros")]
