"""Watermark embed: add a contrast-masked, tile-periodic luminance pattern to uint8 RGB frames, in one pass.

The pattern is given as a small periodic cell table `table` [M, M] (fp32, values about ±1); one cell
covers `cell` × `cell` pixels, so the pattern repeats every P = M · cell pixels on both axes, anchored
at the frame's top-left pixel. For every pixel (x, y) of every frame (pixel centres at integers):

    u = (x + 0.5) / cell - 0.5,  v = (y + 0.5) / cell - 0.5        cell centres at integer (u, v)
    w = bilinear(table, u, v) with periodic wrap                    the pattern, in [-1, 1]
    Y(x, y) = 0.299 R + 0.587 G + 0.114 B                           BT.601 luma, fp32
    a = (|Y(x+1, y) - Y(x-1, y)| + |Y(x, y+1) - Y(x, y-1)|) / 2    local contrast (edge pixels repeat)
    d = w · (base + gain · min(a / act_ref, 1))                     contrast-masked amplitude
    out_c = clamp(floor(in_c + d + 0.5), 0, 255) as uint8           same d on R, G, B: only luma moves

(0.299 + 0.587 + 0.114 = 1, so adding d to each channel moves Y by d and leaves the chroma alone.)

The Triton kernel does all of it per pixel: one program per (frame, block of pixels) loads the pixel and
its 4 neighbours, gathers 4 table cells (the table is 1 KB and stays in cache; the full-frame pattern is
never materialised), and stores the 3 channels. `watermark_embed_ref` is the same math in PyTorch, in
the same fp32 operation order. frames [N, H, W, 3] uint8, any strides -> new [N, H, W, 3] uint8.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from flashtalk.errors import FlashTalkError
from flashtalk.kernels.contract import OpContract, dispatched
from flashtalk.kernels.dispatch import choose
from flashtalk.kernels.triton_compat import _jit, block_size, tl, triton

LUMA = (0.299, 0.587, 0.114)


def _check(frames: torch.Tensor, table: torch.Tensor, cell: int) -> None:
    if not isinstance(frames, torch.Tensor) or frames.dim() != 4 or frames.shape[3] != 3 or min(frames.shape) < 1:
        shape = tuple(frames.shape) if isinstance(frames, torch.Tensor) else type(frames).__name__
        raise FlashTalkError(f"watermark_embed: frames must be a [N, H, W, 3] tensor; got {shape}")
    if frames.dtype != torch.uint8:
        raise FlashTalkError(f"watermark_embed: frames must be uint8; got {frames.dtype}")
    if table.dim() != 2 or table.shape[0] != table.shape[1] or table.shape[0] < 1 or table.dtype != torch.float32:
        raise FlashTalkError(
            f"watermark_embed: table must be a square fp32 [M, M]; got {table.dtype} {tuple(table.shape)}")
    if table.device != frames.device:
        raise FlashTalkError(f"watermark_embed: table is on {table.device}, frames on {frames.device}")
    if cell < 1:
        raise FlashTalkError(f"watermark_embed: cell must be >= 1 pixel; got {cell}")


def pattern_ref(table: torch.Tensor, cell: int, height: int, width: int) -> torch.Tensor:
    """[height, width] fp32 pattern w: the periodic bilinear interpolation of `table` (module docstring)."""
    M = table.shape[0]
    dev = table.device

    def axis(n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        u = (torch.arange(n, dtype=torch.float32, device=dev) + 0.5) / cell - 0.5
        f = torch.floor(u)
        t = u - f
        i0 = f.to(torch.int64).remainder(M)
        return i0, (i0 + 1).remainder(M), t

    y0, y1, ty = axis(height)
    x0, x1, tx = axis(width)
    t = table.to(torch.float32)
    top = t[y0][:, x0] * (1.0 - tx) + t[y0][:, x1] * tx
    bottom = t[y1][:, x0] * (1.0 - tx) + t[y1][:, x1] * tx
    return top * (1.0 - ty[:, None]) + bottom * ty[:, None]


def watermark_embed_ref(frames: torch.Tensor, table: torch.Tensor, *, cell: int, base: float, gain: float,
                        act_ref: float) -> torch.Tensor:
    """The embed in PyTorch (fp32); see the module docstring."""
    _check(frames, table, cell)
    N, H, W, _ = frames.shape
    x = frames.to(torch.float32)
    Y = x[..., 0] * LUMA[0] + x[..., 1] * LUMA[1] + x[..., 2] * LUMA[2]  # [N, H, W]
    Yp = F.pad(Y[:, None], (1, 1, 1, 1), mode="replicate")[:, 0]  # edge pixels repeat
    a = ((Yp[:, 1:-1, 2:] - Yp[:, 1:-1, :-2]).abs() + (Yp[:, 2:, 1:-1] - Yp[:, :-2, 1:-1]).abs()) * 0.5
    d = pattern_ref(table, cell, H, W) * (base + gain * torch.clamp(a / act_ref, max=1.0))
    return torch.floor(x + d[..., None] + 0.5).clamp(0, 255).to(torch.uint8)


# --------------------------------------------------------------------------------------------- Triton


@_jit
def _luma(p, s_c, m):
    """BT.601 luma of the RGB pixels at pointers p (channel stride s_c), fp32."""
    r = tl.load(p, mask=m, other=0).to(tl.float32)
    g = tl.load(p + s_c, mask=m, other=0).to(tl.float32)
    b = tl.load(p + 2 * s_c, mask=m, other=0).to(tl.float32)
    return r * 0.299 + g * 0.587 + b * 0.114


@_jit
def _cell_axis(x, cell, M):
    """Periodic bilinear cells of pixel coordinate x: (i0, i1, t) with cell centres at integers."""
    u = (x.to(tl.float32) + 0.5) / cell - 0.5
    f = tl.floor(u)
    t = u - f
    i0 = f.to(tl.int32) % M
    i0 = tl.where(i0 < 0, i0 + M, i0)
    i1 = tl.where(i0 + 1 == M, 0, i0 + 1)
    return i0, i1, t


@_jit
def _watermark_embed_kernel(
    x_ptr, t_ptr, out_ptr,
    H, W, M, cell, base, gain, act_ref,
    s_xn, s_xh, s_xw, s_xc,
    s_th, s_tw,
    s_on, s_oh, s_ow, s_oc,
    BP: tl.constexpr,
):
    i_p = tl.program_id(0)
    i_n = tl.program_id(1).to(tl.int64)
    o_p = i_p * BP + tl.arange(0, BP)  # [BP] flat pixel index over H·W
    m_p = o_p < H * W
    i_x = o_p % W
    i_y = o_p // W
    # local contrast from the 4 neighbours (edge pixels repeat)
    p_x = x_ptr + i_n * s_xn
    o_xl = tl.maximum(i_x - 1, 0).to(tl.int64) * s_xw
    o_xr = tl.minimum(i_x + 1, W - 1).to(tl.int64) * s_xw
    o_yu = tl.maximum(i_y - 1, 0).to(tl.int64) * s_xh
    o_yd = tl.minimum(i_y + 1, H - 1).to(tl.int64) * s_xh
    o_x = i_x.to(tl.int64) * s_xw
    o_y = i_y.to(tl.int64) * s_xh
    b_gx = tl.abs(_luma(p_x + o_y + o_xr, s_xc, m_p) - _luma(p_x + o_y + o_xl, s_xc, m_p))
    b_gy = tl.abs(_luma(p_x + o_yd + o_x, s_xc, m_p) - _luma(p_x + o_yu + o_x, s_xc, m_p))
    b_a = (b_gx + b_gy) * 0.5  # [BP]
    # the pattern: periodic bilinear interpolation of the cell table
    x0, x1, tx = _cell_axis(i_x, cell, M)
    y0, y1, ty = _cell_axis(i_y, cell, M)
    w00 = tl.load(t_ptr + y0 * s_th + x0 * s_tw, mask=m_p, other=0.0)
    w01 = tl.load(t_ptr + y0 * s_th + x1 * s_tw, mask=m_p, other=0.0)
    w10 = tl.load(t_ptr + y1 * s_th + x0 * s_tw, mask=m_p, other=0.0)
    w11 = tl.load(t_ptr + y1 * s_th + x1 * s_tw, mask=m_p, other=0.0)
    top = w00 * (1.0 - tx) + w01 * tx
    bottom = w10 * (1.0 - tx) + w11 * tx
    b_w = top * (1.0 - ty) + bottom * ty
    b_d = b_w * (base + gain * tl.minimum(b_a / act_ref, 1.0))  # [BP] luma delta
    p_in = p_x + o_y + o_x
    p_o = out_ptr + i_n * s_on + i_y.to(tl.int64) * s_oh + i_x.to(tl.int64) * s_ow
    for i_c in range(3):
        b_c = tl.load(p_in + i_c * s_xc, mask=m_p, other=0).to(tl.float32)
        b_o = tl.minimum(tl.maximum(tl.floor(b_c + b_d + 0.5), 0.0), 255.0)
        tl.store(p_o + i_c * s_oc, b_o.to(tl.uint8), mask=m_p)


def _launch(frames: torch.Tensor, table: torch.Tensor, cell: int, base: float, gain: float, act_ref: float,
            out: torch.Tensor) -> torch.Tensor:
    N, H, W, _ = frames.shape
    BP = block_size(H * W)
    _watermark_embed_kernel[(triton.cdiv(H * W, BP), N)](
        frames, table, out, H, W, table.shape[0], cell, base, gain, act_ref,
        *frames.stride(), *table.stride(), *out.stride(), BP=BP, num_warps=4,
    )
    return out


@torch.library.custom_op("flashtalk::watermark_embed", mutates_args=())
def _watermark_embed_op(frames: torch.Tensor, table: torch.Tensor, cell: int, base: float, gain: float,
                        act_ref: float) -> torch.Tensor:
    out = torch.empty(frames.shape, dtype=torch.uint8, device=frames.device)
    return _launch(frames, table, cell, base, gain, act_ref, out)


@_watermark_embed_op.register_fake
def _(frames: torch.Tensor, table: torch.Tensor, cell: int, base: float, gain: float, act_ref: float) -> torch.Tensor:
    return frames.new_empty(frames.shape)


def _check_call(frames, table, *, cell, base, gain, act_ref) -> None:
    _check(frames, table, cell)
    if act_ref <= 0:
        raise FlashTalkError(f"watermark_embed: act_ref must be > 0; got {act_ref}")


CONTRACT = OpContract(
    op="watermark_embed",
    signature="frames, table, *, cell, base, gain, act_ref",
    accepts=(
        "frames [N, H, W, 3] uint8, any strides (channel-planar storage, every other frame), sizes down to 1x1",
        "table [M, M] fp32 cell table (M need not divide H or W: the pattern wraps), cell >= 1 pixel",
        "saturated pixels (0 and 255: the result is clamped)",
    ),
    returns="[N, H, W, 3] uint8, a new tensor",
    may_refuse="our kernel serves every valid call",
    check=_check_call,
    outputs=lambda frames, table, **_: [(tuple(frames.shape), torch.uint8)],
    reference=watermark_embed_ref,
    rule="exact",
)


@dispatched(CONTRACT)
def watermark_embed(frames: torch.Tensor, table: torch.Tensor, *, cell: int, base: float, gain: float,
                    act_ref: float) -> torch.Tensor:
    """Add the contrast-masked pattern of cell table `table` [M, M] to frames [N, H, W, 3] uint8; returns a
    new uint8 tensor of the same shape (module docstring)."""
    _check_call(frames, table, cell=cell, base=base, gain=gain, act_ref=act_ref)
    if choose("watermark_embed", frames.device).use_triton:
        return _watermark_embed_op(frames, table, int(cell), float(base), float(gain), float(act_ref))
    return watermark_embed_ref(frames, table, cell=cell, base=base, gain=gain, act_ref=act_ref)


def compile_variants():
    """The launches `flashtalk kernels check` compiles: the provenance watermark on 512² uint8 frames with
    the 32x32 cell table, batch 1 and 16 (the parameters of `flashtalk.provenance.watermark`)."""
    from flashtalk.kernels.check import Variant, meta

    def call(B: int):
        frames, table = meta(B, 512, 512, 3, dtype=torch.uint8), meta(32, 32)
        return lambda: _launch(frames, table, 4, 2.6, 0.3, 16.0, meta(B, 512, 512, 3, dtype=torch.uint8))

    return [Variant(f"watermark B{B} 512x512x3", call(B)) for B in (1, 16)]
