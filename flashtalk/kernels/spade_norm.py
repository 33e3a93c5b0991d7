"""SPADE normalisation, fused: instance-norm statistics, modulation and the following leaky ReLU in one op.

    mean, var = per (sample, channel) over H·W, in fp32 (two passes: mean, then Σ(x - mean)²)
    y = (x - mean) / sqrt(var + eps) · (1 + γ) + β
    y = leaky_relu(y, negative_slope)            when negative_slope is given (SPADE blocks use 0.2)

x, γ, β are [B, C, H, W] with any strides (NCHW or channels-last, views), any float dtype; the output has
x's dtype and memory format. The statistics and the arithmetic are fp32 whatever the storage dtype: the
variance of a 512-channel activation overflows or loses all precision in fp16 (the reference
implementation's black boxes).

The Triton kernel runs one program per (sample, tile of BC channels) and walks H·W in tiles of BP pixels
three times (mean, centred sum of squares, output), so every tile is a [BP, BC] block that is coalesced
along whichever of the two axes is contiguous. fp64 inputs run the reference.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from flashtalk.errors import FlashTalkError
from flashtalk.kernels.dense_motion_input import _jit, tl, triton
from flashtalk.kernels.dispatch import choose

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
IN_EPS = 1e-5


def _check(x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor) -> None:
    for name, t in (("x", x), ("gamma", gamma), ("beta", beta)):
        if not isinstance(t, torch.Tensor):
            raise FlashTalkError(f"spade_norm: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype not in FLOAT_DTYPES:
            raise FlashTalkError(f"spade_norm: {name} must be floating point; got {t.dtype}")
        if t.device != x.device:
            raise FlashTalkError(f"spade_norm: {name} is on {t.device}, x on {x.device}")
    if x.dim() != 4 or min(x.shape) < 1:
        raise FlashTalkError(f"spade_norm: x must be a non-empty [B, C, H, W]; got {tuple(x.shape)}")
    for name, t in (("gamma", gamma), ("beta", beta)):
        if t.shape != x.shape:
            raise FlashTalkError(f"spade_norm: {name} must have x's shape {tuple(x.shape)}; got {tuple(t.shape)}")


def spade_norm_ref(x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, negative_slope: float | None = None,
                   eps: float = IN_EPS) -> torch.Tensor:
    """InstanceNorm(x) (no affine, fp32 statistics) · (1 + γ) + β, then leaky ReLU if `negative_slope`."""
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    y = F.instance_norm(x.to(compute), eps=eps) * (1 + gamma.to(compute)) + beta.to(compute)
    if negative_slope is not None:
        y = F.leaky_relu(y, negative_slope)
    return y.to(x.dtype)


# --------------------------------------------------------------------------------------------- Triton


@_jit
def _spade_norm_kernel(
    x_ptr, g_ptr, b_ptr, out_ptr,
    C, HW, W, eps, slope,
    s_xb, s_xc, s_xh, s_xw,
    s_gb, s_gc, s_gh, s_gw,
    s_bb, s_bc, s_bh, s_bw,
    s_ob, s_oc, s_oh, s_ow,
    ACT: tl.constexpr, BP: tl.constexpr, BC: tl.constexpr,
):
    i_b = tl.program_id(0).to(tl.int64)
    i_c = tl.program_id(1)
    o_c = (i_c * BC + tl.arange(0, BC)).to(tl.int64)  # [BC]
    m_c = o_c < C
    p_x = x_ptr + i_b * s_xb + o_c[None, :] * s_xc  # [1, BC]
    # pass 1: mean
    b_sum = tl.zeros([BC], dtype=tl.float32)
    for start in range(0, HW, BP):
        o_p = start + tl.arange(0, BP)  # [BP] flat pixel index over H·W
        m = (o_p < HW)[:, None] & m_c[None, :]  # [BP, BC]
        o_x = ((o_p // W).to(tl.int64) * s_xh + (o_p % W).to(tl.int64) * s_xw)[:, None]
        b_sum += tl.sum(tl.load(p_x + o_x, mask=m, other=0.0).to(tl.float32), axis=0)
    mean = b_sum / HW  # [BC]
    # pass 2: centred sum of squares (no cancellation in E[x²] - E[x]²)
    b_sq = tl.zeros([BC], dtype=tl.float32)
    for start in range(0, HW, BP):
        o_p = start + tl.arange(0, BP)
        m = (o_p < HW)[:, None] & m_c[None, :]
        o_x = ((o_p // W).to(tl.int64) * s_xh + (o_p % W).to(tl.int64) * s_xw)[:, None]
        b_d = tl.where(m, tl.load(p_x + o_x, mask=m, other=0.0).to(tl.float32) - mean[None, :], 0.0)
        b_sq += tl.sum(b_d * b_d, axis=0)
    rstd = 1.0 / tl.sqrt(b_sq / HW + eps)  # [BC]
    # pass 3: normalise, modulate, activate
    p_g = g_ptr + i_b * s_gb + o_c[None, :] * s_gc
    p_be = b_ptr + i_b * s_bb + o_c[None, :] * s_bc
    p_o = out_ptr + i_b * s_ob + o_c[None, :] * s_oc
    for start in range(0, HW, BP):
        o_p = start + tl.arange(0, BP)
        m = (o_p < HW)[:, None] & m_c[None, :]
        i_h = (o_p // W).to(tl.int64)[:, None]  # [BP, 1]
        i_w = (o_p % W).to(tl.int64)[:, None]
        b_x = tl.load(p_x + i_h * s_xh + i_w * s_xw, mask=m, other=0.0).to(tl.float32)  # [BP, BC]
        b_g = tl.load(p_g + i_h * s_gh + i_w * s_gw, mask=m, other=0.0).to(tl.float32)
        b_be = tl.load(p_be + i_h * s_bh + i_w * s_bw, mask=m, other=0.0).to(tl.float32)
        b_y = (b_x - mean[None, :]) * rstd[None, :] * (1.0 + b_g) + b_be
        if ACT:
            b_y = tl.where(b_y >= 0, b_y, b_y * slope)
        tl.store(p_o + i_h * s_oh + i_w * s_ow, b_y.to(out_ptr.dtype.element_ty), mask=m)


def _launch(x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, negative_slope: float | None, eps: float,
            out: torch.Tensor) -> torch.Tensor:
    """Run the kernel into `out` (x's shape, any strides)."""
    B, C, H, W = x.shape
    BC = min(16, triton.next_power_of_2(C))
    BP = 128
    _spade_norm_kernel[(B, triton.cdiv(C, BC))](
        x, gamma, beta, out, C, H * W, W, eps, 0.0 if negative_slope is None else negative_slope,
        *x.stride(), *gamma.stride(), *beta.stride(), *out.stride(),
        ACT=negative_slope is not None, BP=BP, BC=BC, num_warps=4,
    )
    return out


def _empty_like_x(x: torch.Tensor) -> torch.Tensor:
    fmt = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous() \
        else torch.contiguous_format
    return torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=fmt)


@torch.library.custom_op("flashtalk::spade_norm", mutates_args=())
def _spade_norm_op(x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, negative_slope: float | None,
                   eps: float) -> torch.Tensor:
    return _launch(x, gamma, beta, negative_slope, eps, _empty_like_x(x))


@_spade_norm_op.register_fake
def _(x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, negative_slope: float | None,
      eps: float) -> torch.Tensor:
    return _empty_like_x(x)


def spade_norm(x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, negative_slope: float | None = None,
               eps: float = IN_EPS) -> torch.Tensor:
    """Fused SPADE normalisation of x [B, C, H, W] with modulation maps γ, β of x's shape; see the module
    docstring. Returns x's dtype and memory format."""
    _check(x, gamma, beta)
    unsupported = "float64 inputs (the kernel computes in fp32)" if x.dtype == torch.float64 else None
    if choose("spade_norm", x.device, unsupported).use_triton:
        return _spade_norm_op(x, gamma, beta, negative_slope, eps)
    return spade_norm_ref(x, gamma, beta, negative_slope, eps)
