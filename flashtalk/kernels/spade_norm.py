"""SPADE normalisation, fused: instance-norm statistics, modulation and the following leaky ReLU in one op.

    mean, var = per (sample, channel) over H·W, in fp32 (two passes: mean, then Σ(x - mean)²)
    y = (x - mean) / sqrt(var + eps) · (1 + γ) + β
    y = leaky_relu(y, negative_slope)            when negative_slope is given (SPADE blocks use 0.2)

x, γ, β are [B, C, H, W] with any strides (NCHW or channels-last, views), any float dtype; the output has
x's dtype and memory format. The statistics and the arithmetic are fp32 whatever the storage dtype: the
variance of a 512-channel activation overflows or loses all precision in fp16 (the reference
implementation's black boxes).

Two Triton kernels over a grid of (sample, tile of BC channels, chunk of H·W pixels), the chunk sized so the
grid has a few programs per SM (`chunk_size`), so a batch-1 frame fills the GPU at every resolution: the
first writes each chunk's fp32 mean and centred sum of squares (two passes over
the chunk, which stays in cache); the second merges the chunks' statistics exactly (Chan's parallel
formula, no E[x²] − E[x]² cancellation) and writes its chunk normalised, modulated and activated. Every
tile is a [BP, BC] block, coalesced along whichever of pixels / channels is contiguous. fp64 inputs run
the reference.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from flashtalk.errors import FlashTalkError
from flashtalk.kernels.contract import OpContract, dispatched
from flashtalk.kernels.dispatch import choose
from flashtalk.kernels.triton_compat import _jit, tl, to_element, triton

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
def _tile_offsets(o_p, W, s_h, s_w):
    """[BP] flat pixel indices over H·W -> [BP, 1] element offsets (int64) with strides s_h, s_w."""
    return ((o_p // W).to(tl.int64) * s_h + (o_p % W).to(tl.int64) * s_w)[:, None]


@_jit
def _spade_stats_kernel(
    x_ptr, mean_ptr, m2_ptr,
    C, HW, W, CHUNK, NS,
    s_xb, s_xc, s_xh, s_xw,
    BP: tl.constexpr, BC: tl.constexpr,
):
    """Per (sample, BC channels, chunk of CHUNK pixels): the chunk's mean and centred sum of squares (two
    passes over the chunk, fp32) -> mean / m2 [B, C, NS]."""
    i_b = tl.program_id(0).to(tl.int64)
    i_c = tl.program_id(1)
    i_s = tl.program_id(2)
    o_c = (i_c * BC + tl.arange(0, BC)).to(tl.int64)  # [BC]
    m_c = o_c < C
    lo = i_s * CHUNK
    hi = tl.minimum(lo + CHUNK, HW)
    p_x = x_ptr + i_b * s_xb + o_c[None, :] * s_xc  # [1, BC]
    # shifted sum: Σ(x − x_first) keeps the partial sums small when |mean| >> std
    o_first = tl.full([1], 0, tl.int32) + lo
    b_shift = tl.sum(tl.load(p_x + _tile_offsets(o_first, W, s_xh, s_xw), mask=m_c[None, :], other=0.0).to(tl.float32), axis=0)
    b_sum = tl.zeros([BC], dtype=tl.float32)
    for start in range(lo, hi, BP):
        o_p = start + tl.arange(0, BP)  # [BP]
        m = (o_p < hi)[:, None] & m_c[None, :]  # [BP, BC]
        b_x = tl.load(p_x + _tile_offsets(o_p, W, s_xh, s_xw), mask=m, other=0.0).to(tl.float32)
        b_sum += tl.sum(tl.where(m, b_x - b_shift[None, :], 0.0), axis=0)
    mean = b_shift + b_sum / (hi - lo).to(tl.float32)  # [BC]
    b_m2 = tl.zeros([BC], dtype=tl.float32)
    for start in range(lo, hi, BP):
        o_p = start + tl.arange(0, BP)
        m = (o_p < hi)[:, None] & m_c[None, :]
        b_x = tl.load(p_x + _tile_offsets(o_p, W, s_xh, s_xw), mask=m, other=0.0).to(tl.float32)
        b_d = tl.where(m, b_x - mean[None, :], 0.0)  # [BP, BC]
        b_m2 += tl.sum(b_d * b_d, axis=0)
    o_st = (i_b * C + o_c) * NS + i_s  # [BC]
    tl.store(mean_ptr + o_st, mean, mask=m_c)
    tl.store(m2_ptr + o_st, b_m2, mask=m_c)


@_jit
def _spade_apply_kernel(
    x_ptr, g_ptr, b_ptr, out_ptr, mean_ptr, m2_ptr,
    C, HW, W, CHUNK, NS, eps, slope,
    s_xb, s_xc, s_xh, s_xw,
    s_gb, s_gc, s_gh, s_gw,
    s_bb, s_bc, s_bh, s_bw,
    s_ob, s_oc, s_oh, s_ow,
    ACT: tl.constexpr, BP: tl.constexpr, BC: tl.constexpr, BS: tl.constexpr,
):
    """Per (sample, BC channels, chunk): merge the NS chunk statistics (Chan et al.: M2 = Σ M2_s +
    n_s·(mean_s − mean)²), then normalise, modulate and activate the chunk."""
    i_b = tl.program_id(0).to(tl.int64)
    i_c = tl.program_id(1)
    i_s = tl.program_id(2)
    o_c = (i_c * BC + tl.arange(0, BC)).to(tl.int64)  # [BC]
    m_c = o_c < C
    p_st = (i_b * C + o_c[None, :]) * NS  # [1, BC]
    n_tot = HW.to(tl.float32)
    b_shift = tl.load(mean_ptr + p_st, mask=m_c[None, :], other=0.0)  # [1, BC] chunk 0's mean
    b_mean = tl.zeros([BC], dtype=tl.float32)
    for s0 in range(0, NS, BS):
        o_s = s0 + tl.arange(0, BS)  # [BS]
        m = (o_s < NS)[:, None] & m_c[None, :]  # [BS, BC]
        n_s = (tl.minimum(o_s * CHUNK + CHUNK, HW) - o_s * CHUNK).to(tl.float32)[:, None]  # [BS, 1]
        b_dm = tl.load(mean_ptr + p_st + o_s[:, None], mask=m, other=0.0) - b_shift
        b_mean += tl.sum(tl.where(m, b_dm * n_s, 0.0), axis=0)
    b_mean = tl.sum(b_shift, axis=0) + b_mean / n_tot
    b_m2 = tl.zeros([BC], dtype=tl.float32)
    for s0 in range(0, NS, BS):
        o_s = s0 + tl.arange(0, BS)
        m = (o_s < NS)[:, None] & m_c[None, :]
        n_s = (tl.minimum(o_s * CHUNK + CHUNK, HW) - o_s * CHUNK).to(tl.float32)[:, None]
        b_d = tl.load(mean_ptr + p_st + o_s[:, None], mask=m, other=0.0) - b_mean[None, :]  # [BS, BC]
        b_m2 += tl.sum(tl.where(m, tl.load(m2_ptr + p_st + o_s[:, None], mask=m, other=0.0) + n_s * b_d * b_d, 0.0), axis=0)
    rstd = 1.0 / tl.sqrt(b_m2 / n_tot + eps)  # [BC]
    lo = i_s * CHUNK
    hi = tl.minimum(lo + CHUNK, HW)
    p_x = x_ptr + i_b * s_xb + o_c[None, :] * s_xc
    p_g = g_ptr + i_b * s_gb + o_c[None, :] * s_gc
    p_be = b_ptr + i_b * s_bb + o_c[None, :] * s_bc
    p_o = out_ptr + i_b * s_ob + o_c[None, :] * s_oc
    for start in range(lo, hi, BP):
        o_p = start + tl.arange(0, BP)  # [BP]
        m = (o_p < hi)[:, None] & m_c[None, :]  # [BP, BC]
        b_x = tl.load(p_x + _tile_offsets(o_p, W, s_xh, s_xw), mask=m, other=0.0).to(tl.float32)
        b_g = tl.load(p_g + _tile_offsets(o_p, W, s_gh, s_gw), mask=m, other=0.0).to(tl.float32)
        b_be = tl.load(p_be + _tile_offsets(o_p, W, s_bh, s_bw), mask=m, other=0.0).to(tl.float32)
        b_y = (b_x - b_mean[None, :]) * rstd[None, :] * (1.0 + b_g) + b_be  # [BP, BC]
        if ACT:
            b_y = tl.where(b_y >= 0, b_y, b_y * slope)
        tl.store(p_o + _tile_offsets(o_p, W, s_oh, s_ow), to_element(b_y, out_ptr), mask=m)


BC_MAX, BP, BS = 16, 128, 16  # channels per tile, pixels per tile row block, chunk statistics per merge step
MAX_CHUNK = 4096  # pixels per program at most
MIN_CHUNK = 2 * BP  # at least two tile steps per program, so a program does more than its merge
PROGRAMS_PER_SM = 4  # the grid aims at this many programs per SM (a few waves keep every SM busy)
DEFAULT_SMS = 132  # H100 SXM / H200; used where no CUDA device answers (CPU, AOT checks)


@functools.cache
def _sm_count(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return DEFAULT_SMS


def chunk_size(B: int, C: int, HW: int, sms: int = DEFAULT_SMS) -> int:
    """Pixels per program: split H·W into enough chunks that the grid (B, C / BC, chunks) has about
    PROGRAMS_PER_SM · sms programs (at least that many unless chunks would go below MIN_CHUNK), within
    [MIN_CHUNK, MAX_CHUNK] and a multiple of BP. At batch 1,
    C = 512, 64²: 16 chunks of 256 pixels, 512 programs (one chunk, 32 programs, before)."""
    cdiv = lambda a, b: -(-a // b)  # noqa: E731
    tiles = B * cdiv(C, min(BC_MAX, 1 << (C - 1).bit_length()))
    chunks = cdiv(PROGRAMS_PER_SM * sms, tiles)
    chunk = HW // chunks // BP * BP  # rounded down: at least `chunks` chunks
    return max(MIN_CHUNK, min(MAX_CHUNK, chunk))


def _launch(x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, negative_slope: float | None, eps: float,
            out: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
    """Run the two kernels into `out` (x's shape, any strides); `chunk` pixels per program (default
    `chunk_size` for this device; tests use small chunks to exercise the merge of many partial statistics)."""
    B, C, H, W = x.shape
    BC = min(BC_MAX, triton.next_power_of_2(C))
    if chunk is None:
        chunk = chunk_size(B, C, H * W, _sm_count(x.device))
    ns = triton.cdiv(H * W, chunk)
    mean = torch.empty(B, C, ns, dtype=torch.float32, device=x.device)
    m2 = torch.empty_like(mean)
    grid = (B, triton.cdiv(C, BC), ns)
    _spade_stats_kernel[grid](x, mean, m2, C, H * W, W, chunk, ns, *x.stride(), BP=BP, BC=BC, num_warps=4)
    _spade_apply_kernel[grid](
        x, gamma, beta, out, mean, m2, C, H * W, W, chunk, ns, eps, 0.0 if negative_slope is None else negative_slope,
        *x.stride(), *gamma.stride(), *beta.stride(), *out.stride(),
        ACT=negative_slope is not None, BP=BP, BC=BC, BS=BS, num_warps=8,
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


CONTRACT = OpContract(
    op="spade_norm",
    signature="x, gamma, beta, negative_slope=None, eps=1e-5",
    accepts=(
        "x, gamma, beta [B, C, H, W] of one float dtype: fp32, fp16, bf16 (fp64: the reference runs)",
        "any strides and mixed layouts across the three: NCHW, channels-last, sliced views; odd C, H, W",
        "negative_slope: None (no activation) or a float (leaky ReLU); activations with a large mean or "
        "|x| ~ 3e3 in fp16 (statistics must stay fp32)",
    ),
    returns="[B, C, H, W] in x's dtype (x's memory format preferred, any accepted)",
    may_refuse="our kernel refuses fp64 inputs (the reference runs)",
    check=lambda x, gamma, beta, negative_slope=None, eps=IN_EPS: _check(x, gamma, beta),
    outputs=lambda x, *_, **__: [(tuple(x.shape), x.dtype)],
    reference=spade_norm_ref,
)


@dispatched(CONTRACT)
def spade_norm(x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, negative_slope: float | None = None,
               eps: float = IN_EPS) -> torch.Tensor:
    """Fused SPADE normalisation of x [B, C, H, W] with modulation maps γ, β of x's shape; see the module
    docstring. Returns x's dtype and memory format."""
    _check(x, gamma, beta)
    unsupported = "float64 inputs (the kernel computes in fp32)" if x.dtype == torch.float64 else None
    if choose("spade_norm", x.device, unsupported).use_triton:
        return _spade_norm_op(x, gamma, beta, negative_slope, eps)
    return spade_norm_ref(x, gamma, beta, negative_slope, eps)


def compile_variants():
    """The launches `flashtalk kernels check` compiles: the SPADE decoder's normalisations (channels-last,
    the fast renderer's layout) from 64² to 512², batch 1 and 32, with and without the leaky ReLU."""
    from flashtalk.kernels.check import Variant, meta

    def cl(B: int, C: int, S: int, dtype: torch.dtype) -> torch.Tensor:
        return meta(B, S, S, C, dtype=dtype).permute(0, 3, 1, 2)  # channels-last [B, C, S, S]

    def call(B: int, C: int, S: int, dtype: torch.dtype, slope: float | None):
        x, g, b, out = (cl(B, C, S, dtype) for _ in range(4))
        return lambda: _launch(x, g, b, slope, IN_EPS, out)

    return [Variant(f"SPADE norm B{B} C{C} {S}² {'lrelu' if slope else 'plain'} {name}", call(B, C, S, dtype, slope))
            for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16), ("fp16", torch.float16))
            for B in (1, 32) for C, S in ((512, 64), (256, 128), (128, 256), (64, 512)) for slope in (0.2, None)]
