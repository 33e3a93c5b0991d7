"""Scaled dot-product attention: Triton flash-style kernels, launcher, custom op, public op, and the PyTorch
reference.

Conventions (as PyTorch): q [B, H, Lq, D], k and v [B, H, Lk, D], any strides; `attn_mask` boolean
(True = may attend, as in SDPA) or an additive float bias, broadcastable to [B, H, Lq, Lk]; `key_padding_mask`
[B, Lk] boolean (True = padding to ignore, as in nn.MultiheadAttention); `causal` keeps key j for query i
when j <= i + (Lk - Lq) (aligned bottom-right, as the reference's `tril(Lk - Lq)`). A query row whose keys
are all masked returns zeros (SDPA would return NaN); the kernels do the same.

Two kernel variants, picked by shape (`_variant`):

* ``short``: Lk <= 128 (fp32: unmasked and D <= 32). The whole head's K and V fit one tile; one pass, plain softmax,
  no rescaling. This is the motion transformer's case (~110 tokens).
* ``tiled``: flash-style loop over K/V tiles with an online softmax (running max and sum in fp32); no
  Lq x Lk matrix is ever stored. Tiles wholly inside the keys and below the causal diagonal run without
  element masks; only the edge tiles pay for them.

Both accumulate in fp32 (P is rounded to the input dtype before P @ V, as flash attention does); fp32
inputs use full-precision (IEEE, not TF32) dots. Masks are read tile by tile with their own strides
(broadcast dimensions have stride 0), so a [Lq, Lk] or [B, 1, 1, Lk] mask is never expanded in memory.
Forward only: calls that need gradients run the reference.
"""

from __future__ import annotations

import math

import torch

from flashtalk.errors import FlashTalkError
from flashtalk.kernels.contract import OpContract, dispatched
from flashtalk.kernels.dispatch import choose, interpreter_enabled
from flashtalk.kernels.triton_compat import _jit

try:
    import triton
    import triton.language as tl
except ImportError:  # the reference still works; dispatch reports "triton is not installed"
    triton = None

HEAD_DIMS = (16, 32, 64, 128)
DTYPES = (torch.float16, torch.bfloat16, torch.float32)
SHORT_MAX_LK = 128  # the short variant holds all of K/V in one tile up to this length
_LOG2E = 1.4426950408889634
_MAX_GRID_Y = 65535  # CUDA limit on grid dimension 1, which carries B * H

# Launch tables: hand-picked tiles per head dim (BM query rows per program, BN keys per step), warps and
# pipeline stages. Every entry was compiled ahead of time for sm_90 with the launch's specialisation (unit
# strides constant, 16-divisible strides hinted): no register spills, and the fp16 / bf16 ones issue wgmma,
# which needs a tile height of 64 rows per warpgroup (the motion transformer's 110 tokens: two 64-row tiles
# per head). Not yet timed on a GPU; `benchmarks/bench_attention.py --sweep` times the alternatives in _SWEEP.
_TILED: dict[int, dict[str, int]] = {  # fp16 / bf16, no attn_mask, not causal (key padding allowed)
    16: dict(BM=128, BN=64, num_warps=4, num_stages=3),
    32: dict(BM=128, BN=64, num_warps=4, num_stages=3),
    64: dict(BM=128, BN=64, num_warps=4, num_stages=3),
    128: dict(BM=128, BN=64, num_warps=8, num_stages=3),
}
# fp16 / bf16 with an attn_mask or causal: the mask / bias tile and the edge-tile copy of the loop spill at
# 4 warps (216 B - 2 KB of stack per thread at sm_90); 8 warps halve the per-thread share.
_TILED_MASKED: dict[int, dict[str, int]] = {
    16: dict(BM=128, BN=64, num_warps=8, num_stages=3),
    32: dict(BM=128, BN=64, num_warps=8, num_stages=3),
    64: dict(BM=128, BN=64, num_warps=8, num_stages=3),
    128: dict(BM=64, BN=64, num_warps=8, num_stages=2),
}
# fp32 inputs (IEEE dots on CUDA cores, so big tiles buy nothing): small tiles, two stages; larger ones
# spilled 6-10 KB per thread at D >= 64 on sm_90.
_TILED_FP32: dict[int, dict[str, int]] = {
    16: dict(BM=32, BN=32, num_warps=4, num_stages=2),
    32: dict(BM=32, BN=32, num_warps=4, num_stages=2),
    64: dict(BM=32, BN=16, num_warps=4, num_stages=2),
    128: dict(BM=16, BN=16, num_warps=4, num_stages=2),
}
_SHORT: dict[int, dict[str, int]] = {  # fp16 / bf16
    16: dict(BM=64, num_warps=4),
    32: dict(BM=64, num_warps=4),
    64: dict(BM=64, num_warps=4),
    128: dict(BM=64, num_warps=8),
}
_SHORT_FP32: dict[int, dict[str, int]] = {  # unmasked, D <= 32 only by default (64 / 128: when asked for)
    16: dict(BM=16, num_warps=4), 32: dict(BM=16, num_warps=4), 64: dict(BM=16, num_warps=4), 128: dict(BM=16, num_warps=8),
}
SHORT_FP32_MAX_D = 32  # fp32 with a wider head (or a mask) runs tiled: the one-tile kernel would spill
# The pruned alternatives `bench_attention.py --sweep` times (fp16 / bf16 tiled variant; for the short one
# only BM and num_warps apply), each compiled for sm_90 at the production shapes (HuBERT D=64 tiled, motion
# D=32 one-tile): wgmma, no spills; the winners go into the tables above.
_SWEEP: list[dict[str, int]] = [
    dict(BM=128, BN=64, num_warps=4, num_stages=3),
    dict(BM=128, BN=64, num_warps=8, num_stages=3),
    dict(BM=64, BN=64, num_warps=4, num_stages=3),
    dict(BM=128, BN=32, num_warps=4, num_stages=4),
]


def launch_config(variant: str, D: int, dtype: torch.dtype, masked: bool = False) -> dict[str, int]:
    """The table entry a call uses: `masked` = an attn_mask or causal (tiled fp16 / bf16 only)."""
    if variant == "short":
        return dict((_SHORT_FP32 if dtype == torch.float32 else _SHORT)[D])
    if dtype == torch.float32:
        return dict(_TILED_FP32[D])
    return dict((_TILED_MASKED if masked else _TILED)[D])


_NO_MASK, _BOOL_MASK, _ADD_MASK = 0, 1, 2


if triton is not None:

    @_jit
    def _to_output(b_o, p_o, INTERP_BF16: tl.constexpr):
        """Cast an fp32 block to the output dtype. The interpreter truncates fp32 -> bf16 casts (the GPU
        rounds to nearest even), so there we add the rounding bias to the bits first."""
        if INTERP_BF16:
            bits = b_o.to(tl.uint32, bitcast=True)
            bits += 0x7FFF + ((bits >> 16) & 1)
            b_o = tl.where(b_o == 0.0, b_o, bits.to(tl.float32, bitcast=True))  # keep exact zeros exact
        return b_o.to(p_o.dtype.element_ty)

    @_jit
    def _score_tile(
        b_q, p_k, s_kn, s_kd, p_am, s_am, s_an, p_kpm, s_pn,
        o_m, o_n, o_d, Lq, Lk, qk_scale, diag,
        MASK_KIND: tl.constexpr, HAS_KPM: tl.constexpr, CAUSAL: tl.constexpr, EDGE: tl.constexpr,
        INTERP_BF16: tl.constexpr,
    ):
        """Scores of one [BM, BN] tile in log2 units (scale·log2(e) folded in), -inf where not allowed."""
        m_n = o_n < Lk
        b_kt = tl.load(p_k + o_n[None, :] * s_kn + o_d[:, None] * s_kd, mask=m_n[None, :], other=0.0)  # [BD, BN]
        if INTERP_BF16:
            b_kt = b_kt.to(tl.float32)
        b_s = tl.dot(b_q, b_kt, input_precision="ieee") * qk_scale  # [BM, BD] @ [BD, BN] -> [BM, BN]
        if MASK_KIND == 2:
            m_mn = (o_m[:, None] < Lq) & m_n[None, :]
            b_bias = tl.load(p_am + o_m[:, None] * s_am + o_n[None, :] * s_an, mask=m_mn, other=0.0)  # [BM, BN]
            b_s += b_bias.to(tl.float32) * 1.4426950408889634
        if MASK_KIND == 1:
            m_mn = (o_m[:, None] < Lq) & m_n[None, :]
            b_ok = tl.load(p_am + o_m[:, None] * s_am + o_n[None, :] * s_an, mask=m_mn, other=0)  # [BM, BN]
            b_s = tl.where(b_ok != 0, b_s, float("-inf"))
        if HAS_KPM:
            b_pad = tl.load(p_kpm + o_n * s_pn, mask=m_n, other=1)  # [BN]
            b_s = tl.where(b_pad[None, :] == 0, b_s, float("-inf"))
        if EDGE:
            b_s = tl.where(m_n[None, :], b_s, float("-inf"))
            if CAUSAL:
                b_s = tl.where(o_n[None, :] <= o_m[:, None] + diag, b_s, float("-inf"))
        return b_s

    @_jit
    def _online_softmax_steps(
        acc, m_i, l_i, b_q, lo, hi,
        p_k, s_kn, s_kd, p_v, s_vn, s_vd, p_am, s_am, s_an, p_kpm, s_pn,
        o_m, o_d, Lq, Lk, qk_scale, diag,
        BN: tl.constexpr, MASK_KIND: tl.constexpr, HAS_KPM: tl.constexpr, CAUSAL: tl.constexpr,
        EDGE: tl.constexpr, INTERP_BF16: tl.constexpr,
    ):
        """Fold the key tiles [lo, hi) into the running output `acc`, row max `m_i` and row sum `l_i`."""
        for start_n in range(lo, hi, BN):
            o_n = start_n + tl.arange(0, BN).to(tl.int64)
            b_s = _score_tile(
                b_q, p_k, s_kn, s_kd, p_am, s_am, s_an, p_kpm, s_pn, o_m, o_n, o_d, Lq, Lk, qk_scale, diag,
                MASK_KIND, HAS_KPM, CAUSAL, EDGE, INTERP_BF16,
            )  # [BM, BN]
            m_new = tl.maximum(m_i, tl.max(b_s, 1))  # [BM]
            m_use = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row with nothing allowed yet stays at 0
            b_p = tl.math.exp2(b_s - m_use[:, None])  # [BM, BN]
            alpha = tl.math.exp2(m_i - m_use)  # [BM]
            l_i = l_i * alpha + tl.sum(b_p, 1)
            b_v = tl.load(p_v + o_n[:, None] * s_vn + o_d[None, :] * s_vd, mask=(o_n < Lk)[:, None], other=0.0)  # [BN, BD]
            if INTERP_BF16:
                b_v = b_v.to(tl.float32)
            acc = acc * alpha[:, None] + tl.dot(b_p.to(b_v.dtype), b_v, input_precision="ieee")  # [BM, BN] @ [BN, BD] -> [BM, BD]
            m_i = m_new
        return acc, m_i, l_i

    @_jit
    def _attn_fwd_tiled(
        p_q, s_qb, s_qh, s_qm, s_qd,
        p_k, s_kb, s_kh, s_kn, s_kd,
        p_v, s_vb, s_vh, s_vn, s_vd,
        p_am, s_ab, s_ah, s_am, s_an,
        p_kpm, s_pb, s_pn,
        p_o, s_ob, s_oh, s_om, s_od,
        H, Lq, Lk, qk_scale,
        BM: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr,
        MASK_KIND: tl.constexpr, HAS_KPM: tl.constexpr, CAUSAL: tl.constexpr, INTERP_BF16: tl.constexpr,
    ):
        tl.static_assert(BM % BN == 0 or BN % BM == 0, "BM and BN must divide one another")
        tl.static_assert(BD >= 16 and BN >= 16, "tl.dot needs tiles of at least 16")
        i_m = tl.program_id(0)
        i_bh = tl.program_id(1)
        i_b = (i_bh // H).to(tl.int64)
        i_h = (i_bh % H).to(tl.int64)
        p_q += i_b * s_qb + i_h * s_qh
        p_k += i_b * s_kb + i_h * s_kh
        p_v += i_b * s_vb + i_h * s_vh
        p_am += i_b * s_ab + i_h * s_ah
        p_kpm += i_b * s_pb
        p_o += i_b * s_ob + i_h * s_oh

        start_m = i_m * BM
        o_m = start_m + tl.arange(0, BM).to(tl.int64)
        o_d = tl.arange(0, BD).to(tl.int64)
        m_m = o_m < Lq
        b_q = tl.load(p_q + o_m[:, None] * s_qm + o_d[None, :] * s_qd, mask=m_m[:, None], other=0.0)  # [BM, BD]
        if INTERP_BF16:
            b_q = b_q.to(tl.float32)

        acc = tl.zeros([BM, BD], dtype=tl.float32)
        m_i = tl.full([BM], float("-inf"), dtype=tl.float32)
        l_i = tl.zeros([BM], dtype=tl.float32)

        diag = Lk - Lq  # causal: key n is allowed for query m when n <= m + diag
        full_hi = (Lk // BN) * BN  # tiles below this need no bounds mask
        hi = Lk
        if CAUSAL:
            # tiles wholly at or below the diagonal for this block's first row need no causal mask either
            full_hi = tl.minimum(full_hi, (tl.maximum(start_m + diag + 1, 0) // BN) * BN)
            hi = tl.minimum(Lk, tl.maximum(start_m + BM + diag, 0))
        acc, m_i, l_i = _online_softmax_steps(
            acc, m_i, l_i, b_q, 0, full_hi,
            p_k, s_kn, s_kd, p_v, s_vn, s_vd, p_am, s_am, s_an, p_kpm, s_pn,
            o_m, o_d, Lq, Lk, qk_scale, diag, BN, MASK_KIND, HAS_KPM, CAUSAL, False, INTERP_BF16,
        )
        acc, m_i, l_i = _online_softmax_steps(
            acc, m_i, l_i, b_q, full_hi, hi,
            p_k, s_kn, s_kd, p_v, s_vn, s_vd, p_am, s_am, s_an, p_kpm, s_pn,
            o_m, o_d, Lq, Lk, qk_scale, diag, BN, MASK_KIND, HAS_KPM, CAUSAL, True, INTERP_BF16,
        )
        b_o = acc / tl.where(l_i > 0.0, l_i, 1.0)[:, None]  # [BM, BD]; rows with no allowed key stay 0
        tl.store(p_o + o_m[:, None] * s_om + o_d[None, :] * s_od, _to_output(b_o, p_o, INTERP_BF16), mask=m_m[:, None])

    @_jit
    def _attn_fwd_short(
        p_q, s_qb, s_qh, s_qm, s_qd,
        p_k, s_kb, s_kh, s_kn, s_kd,
        p_v, s_vb, s_vh, s_vn, s_vd,
        p_am, s_ab, s_ah, s_am, s_an,
        p_kpm, s_pb, s_pn,
        p_o, s_ob, s_oh, s_om, s_od,
        H, Lq, Lk, qk_scale,
        BM: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr,
        MASK_KIND: tl.constexpr, HAS_KPM: tl.constexpr, CAUSAL: tl.constexpr, INTERP_BF16: tl.constexpr,
    ):
        """All of a head's keys in one [BN] tile (the launcher guarantees Lk <= BN): one pass, no rescaling."""
        tl.static_assert(BD >= 16 and BN >= 16 and BM >= 16, "tl.dot needs tiles of at least 16")
        i_m = tl.program_id(0)
        i_bh = tl.program_id(1)
        i_b = (i_bh // H).to(tl.int64)
        i_h = (i_bh % H).to(tl.int64)
        p_q += i_b * s_qb + i_h * s_qh
        p_k += i_b * s_kb + i_h * s_kh
        p_v += i_b * s_vb + i_h * s_vh
        p_am += i_b * s_ab + i_h * s_ah
        p_kpm += i_b * s_pb
        p_o += i_b * s_ob + i_h * s_oh

        o_m = i_m * BM + tl.arange(0, BM).to(tl.int64)
        o_n = tl.arange(0, BN).to(tl.int64)
        o_d = tl.arange(0, BD).to(tl.int64)
        m_m = o_m < Lq
        b_q = tl.load(p_q + o_m[:, None] * s_qm + o_d[None, :] * s_qd, mask=m_m[:, None], other=0.0)  # [BM, BD]
        if INTERP_BF16:
            b_q = b_q.to(tl.float32)
        b_s = _score_tile(
            b_q, p_k, s_kn, s_kd, p_am, s_am, s_an, p_kpm, s_pn, o_m, o_n, o_d, Lq, Lk, qk_scale, Lk - Lq,
            MASK_KIND, HAS_KPM, CAUSAL, True, INTERP_BF16,
        )  # [BM, BN]
        m_row = tl.max(b_s, 1)  # [BM]
        b_p = tl.math.exp2(b_s - tl.where(m_row == float("-inf"), 0.0, m_row)[:, None])  # [BM, BN]
        l_row = tl.sum(b_p, 1)  # [BM]
        b_v = tl.load(p_v + o_n[:, None] * s_vn + o_d[None, :] * s_vd, mask=(o_n < Lk)[:, None], other=0.0)  # [BN, BD]
        if INTERP_BF16:
            b_v = b_v.to(tl.float32)
        acc = tl.dot(b_p.to(b_v.dtype), b_v, input_precision="ieee")  # [BM, BN] @ [BN, BD] -> [BM, BD]
        b_o = acc / tl.where(l_row > 0.0, l_row, 1.0)[:, None]  # [BM, BD]; rows with no allowed key stay 0
        tl.store(p_o + o_m[:, None] * s_om + o_d[None, :] * s_od, _to_output(b_o, p_o, INTERP_BF16), mask=m_m[:, None])


def _variant(Lk: int, D: int = 0, dtype: torch.dtype = torch.float16, masked: bool = False) -> str:
    """Which kernel serves a call: `short` when one tile holds all keys (fp32: only unmasked calls with
    D <= SHORT_FP32_MAX_D; masks spill its registers at sm_90), else `tiled`. `masked`: any of attn_mask,
    key padding, causal."""
    if dtype == torch.float32 and (D > SHORT_FP32_MAX_D or masked):
        return "tiled"
    return "short" if Lk <= SHORT_MAX_LK else "tiled"


def _unsupported(q, k, v, attn_mask, key_padding_mask) -> str | None:
    """Why the Triton kernels cannot serve this (already checked) call, or None."""
    B, H, Lq, D = q.shape
    Lk = k.shape[2]
    if q.dtype not in DTYPES:
        return f"dtype {q.dtype} is not one of float16, bfloat16, float32"
    if D not in HEAD_DIMS:
        return f"head dim D={D} is not one of {', '.join(map(str, HEAD_DIMS))}"
    if min(B, H, Lq, Lk) == 0:
        return f"an empty dimension (B={B}, H={H}, Lq={Lq}, Lk={Lk})"
    if B * H > _MAX_GRID_Y:
        return f"B*H={B * H} exceeds the grid limit {_MAX_GRID_Y}"
    if torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (q, k, v, attn_mask)
    ):
        return "the kernel is forward-only and an input requires grad"
    return None


def _launch(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_mask: torch.Tensor | None,
    key_padding_mask: torch.Tensor | None,
    causal: bool,
    scale: float,
    *,
    variant: str | None = None,
    config: dict[str, int] | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Run one kernel variant (chosen by shape unless `variant` is given) with its tiles for this head dim
    (or `config`, as the benchmark's sweep does) into `out` (new if None)."""
    B, H, Lq, D = q.shape
    Lk = k.shape[2]
    variant = variant or _variant(Lk, D, q.dtype, attn_mask is not None or key_padding_mask is not None or bool(causal))
    if out is None:
        out = torch.empty((B, H, Lq, D), dtype=q.dtype, device=q.device)
    if attn_mask is None:
        mask_kind, am, am_strides = _NO_MASK, q, (0, 0, 0, 0)
    else:
        am = attn_mask.expand(B, H, Lq, Lk)  # a view: broadcast dims get stride 0
        mask_kind = _BOOL_MASK if am.dtype == torch.bool else _ADD_MASK
        if mask_kind == _BOOL_MASK:
            am = am.view(torch.uint8)
        am_strides = am.stride()
    if key_padding_mask is None:
        has_kpm, kpm, kpm_strides = False, q, (0, 0)
    else:
        has_kpm, kpm = True, key_padding_mask.view(torch.uint8)
        kpm_strides = kpm.stride()
    flags = dict(
        MASK_KIND=mask_kind,
        HAS_KPM=has_kpm,
        CAUSAL=bool(causal),
        # the interpreter's bf16 tl.dot is wrong and its bf16 casts truncate: fp32 dots and rounded stores there
        INTERP_BF16=q.dtype == torch.bfloat16 and interpreter_enabled(),
    )
    if variant == "short":
        if Lk > SHORT_MAX_LK:
            raise AssertionError(f"short variant needs Lk <= {SHORT_MAX_LK}, got {Lk}")
        cfg = dict(config or launch_config("short", D, q.dtype))
        cfg.pop("BN", None)  # one tile holds every key
        kernel, BN = _attn_fwd_short, max(16, triton.next_power_of_2(Lk))
    elif variant == "tiled":
        cfg = dict(config or launch_config("tiled", D, q.dtype, attn_mask is not None or bool(causal)))
        kernel, BN = _attn_fwd_tiled, cfg.pop("BN")
    else:
        raise AssertionError(f"unknown attention variant {variant!r}")
    BM = cfg.pop("BM")
    grid = (triton.cdiv(Lq, BM), B * H)
    kernel[grid](
        q, *q.stride(),
        k, *k.stride(),
        v, *v.stride(),
        am, *am_strides,
        kpm, *kpm_strides,
        out, *out.stride(),
        H, Lq, Lk, scale * _LOG2E,
        BM=BM, BN=BN, BD=D, **flags, **cfg,
    )
    return out


@torch.library.custom_op("flashtalk::attention", mutates_args=())
def attention_op(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_mask: torch.Tensor | None,
    key_padding_mask: torch.Tensor | None,
    causal: bool,
    scale: float,
) -> torch.Tensor:
    """The Triton attention as an opaque op for torch.compile and CUDA graphs (inputs already checked)."""
    return _launch(q, k, v, attn_mask, key_padding_mask, causal, scale)


@attention_op.register_fake
def _attention_fake(q, k, v, attn_mask, key_padding_mask, causal, scale):
    return q.new_empty(q.shape)


def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask, key_padding_mask) -> None:
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise FlashTalkError(
            f"attention expects q, k, v shaped [B, H, L, D]; got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if k.shape != v.shape or q.shape[:2] != k.shape[:2] or q.shape[3] != k.shape[3]:
        raise FlashTalkError(
            f"attention shapes disagree: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)} "
            "(need equal B, H, D and k.shape == v.shape)"
        )
    if not (q.dtype == k.dtype == v.dtype) or q.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        raise FlashTalkError(f"attention needs q, k, v of one floating dtype; got {q.dtype}, {k.dtype}, {v.dtype}")
    devices = {t.device for t in (q, k, v, attn_mask, key_padding_mask) if t is not None}
    if len(devices) > 1:
        raise FlashTalkError(f"attention inputs are on different devices: {sorted(map(str, devices))}")
    B, _, Lq, _ = q.shape
    Lk = k.shape[2]
    if key_padding_mask is not None and (key_padding_mask.dtype != torch.bool or tuple(key_padding_mask.shape) != (B, Lk)):
        raise FlashTalkError(
            f"key_padding_mask must be bool [B, Lk] = [{B}, {Lk}]; got {key_padding_mask.dtype} {tuple(key_padding_mask.shape)}"
        )
    if attn_mask is not None:
        if attn_mask.dtype != torch.bool and not attn_mask.is_floating_point():
            raise FlashTalkError(f"attn_mask must be bool (True = may attend) or a float bias; got {attn_mask.dtype}")
        target = (B, q.shape[1], Lq, Lk)
        try:
            fits = attn_mask.dim() <= 4 and torch.broadcast_shapes(attn_mask.shape, target) == target
        except RuntimeError:
            fits = False
        if not fits:
            raise FlashTalkError(
                f"attn_mask of shape {tuple(attn_mask.shape)} does not broadcast to [B, H, Lq, Lk] = {[B, q.shape[1], Lq, Lk]}"
            )


def attention_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    attn_mask: torch.Tensor | None = None,
    key_padding_mask: torch.Tensor | None = None,
    causal: bool = False,
    scale: float | None = None,
) -> torch.Tensor:
    """Attention computed in fp32 (fp64 for fp64 inputs) by PyTorch's SDPA, with every mask folded into one
    additive bias; causal is bottom-right aligned, and rows whose keys are all masked give zeros."""
    if k.shape[2] == 0:  # no keys at all: every row is all-masked
        return torch.zeros_like(q)
    compute = torch.float64 if q.dtype == torch.float64 else torch.float32
    Lq, Lk = q.shape[2], k.shape[2]
    allowed = None
    bias = None
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            allowed = attn_mask
        else:
            bias = attn_mask.to(compute)
    if key_padding_mask is not None:
        keep = ~key_padding_mask[:, None, None, :]
        allowed = keep if allowed is None else allowed & keep
    if causal:
        lower = torch.ones(Lq, Lk, dtype=torch.bool, device=q.device).tril(Lk - Lq)
        allowed = lower if allowed is None else allowed & lower
    if allowed is not None:
        blocked = torch.zeros(allowed.shape, dtype=compute, device=q.device).masked_fill(~allowed, float("-inf"))
        bias = blocked if bias is None else bias + blocked
    out = torch.nn.functional.scaled_dot_product_attention(
        q.to(compute), k.to(compute), v.to(compute), attn_mask=bias, scale=scale
    )
    if bias is not None:  # SDPA gives NaN where a row has no finite score; define those rows as zeros
        dead = ~(bias > float("-inf")).any(dim=-1, keepdim=True)
        out = out.masked_fill(dead, 0.0)
    return out.to(q.dtype)


CONTRACT = OpContract(
    op="attention",
    signature="q, k, v, *, attn_mask=None, key_padding_mask=None, causal=False, scale=None",
    accepts=(
        "q [B, H, Lq, D], k and v [B, H, Lk, D] of one dtype: fp32, fp16, bf16 (fp64: the reference runs)",
        "any B, H, Lq, Lk >= 0 and D (odd lengths, Lq != Lk, a single query or key), any strides: "
        "transposed ([B, L, H, D] storage), sliced views, stride-0 broadcast dimensions",
        "attn_mask: bool (True = may attend) or an additive float bias (-inf allowed), broadcastable to "
        "[B, H, Lq, Lk] (e.g. [Lq, Lk], [B, 1, 1, Lk]), any strides",
        "key_padding_mask: bool [B, Lk], True = padding to ignore",
        "causal: key j allowed for query i when j <= i + (Lk - Lq) (bottom-right aligned); combines with both masks",
        "scale: a float, or None for 1/sqrt(D)",
    ),
    returns="[B, H, Lq, D] in q's dtype; a query row whose keys are all masked is exactly 0 (not NaN)",
    may_refuse="our kernel serves D in 16/32/64/128, fp16/bf16/fp32, no grad, non-empty, B*H <= 65535 (else the "
    "reference runs, with the reason)",
    check=lambda q, k, v, *, attn_mask=None, key_padding_mask=None, causal=False, scale=None: _check(
        q, k, v, attn_mask, key_padding_mask),
    outputs=lambda q, k, v, **_: [(tuple(q.shape), q.dtype)],
    reference=attention_ref,
)


@dispatched(CONTRACT)
def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    attn_mask: torch.Tensor | None = None,
    key_padding_mask: torch.Tensor | None = None,
    causal: bool = False,
    scale: float | None = None,
) -> torch.Tensor:
    """Attention over [B, H, L, D] tensors; see the module docstring for mask conventions. Runs the Triton
    kernel where dispatch allows it and the call is supported, else `attention_ref` (reason in
    `flashtalk.kernels.last_choice("attention")`)."""
    _check(q, k, v, attn_mask, key_padding_mask)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    choice = choose("attention", q.device, unsupported=_unsupported(q, k, v, attn_mask, key_padding_mask))
    if choice.use_triton:
        return torch.ops.flashtalk.attention(q, k, v, attn_mask, key_padding_mask, bool(causal), scale)
    return attention_ref(q, k, v, attn_mask=attn_mask, key_padding_mask=key_padding_mask, causal=causal, scale=scale)


def compile_variants():
    """The launches `flashtalk kernels check` compiles: the model's calls through `_launch` (so through the
    launch tables above) at the production shapes, and the `_SWEEP` alternatives."""
    from flashtalk.kernels.check import Variant, meta

    def proj(B: int, L: int, H: int, D: int, dtype: torch.dtype) -> torch.Tensor:
        return meta(B, L, H, D, dtype=dtype).transpose(1, 2)  # [B, H, L, D] as a projection writes it

    def call(B, H, Lq, Lk, D, dtype, *, mask=False, padded=False, config=None):
        q, k, v = proj(B, Lq, H, D, dtype), proj(B, Lk, H, D, dtype), proj(B, Lk, H, D, dtype)
        am = meta(Lq, Lk, dtype=torch.bool) if mask else None
        kpm = meta(B, Lk, dtype=torch.bool) if padded else None
        return lambda: _launch(q, k, v, am, kpm, False, D ** -0.5, config=config)

    out = []
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16), ("fp16", torch.float16)):
        for B in (2, 64):  # guidance-batched window of 1 stream / 32 streams
            out.append(Variant(f"motion self-attention B{B} H8 L110 D32 {name}", call(B, 8, 110, 110, 32, dtype)))
            out.append(Variant(f"motion cross-attention (masked) B{B} H8 L110 D32 {name}",
                               call(B, 8, 110, 110, 32, dtype, mask=True)))
        for B in (1, 32):  # one window (2 x 110 frames at 50 Hz) of 1 / 32 streams, padded batches
            out.append(Variant(f"audio-encoder attention B{B} H12 L220 D64 {name}",
                               call(B, 12, 220, 220, 64, dtype, padded=B > 1)))
    for cfg in _SWEEP:
        tag = " ".join(f"{k}={v}" for k, v in cfg.items())
        out.append(Variant(f"sweep audio B32 H12 L220 D64 fp16 {tag}",
                           call(32, 12, 220, 220, 64, torch.float16, padded=True, config=cfg), production=False))
    return out
