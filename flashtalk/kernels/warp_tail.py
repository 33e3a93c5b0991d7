"""Fused warping tail (kernel research): the warping network's mask convolution and `deform_warp` in one
kernel, so neither the mask logits nor the deformation reach memory.

    logits = conv3d(prediction, weight, bias, padding=KS // 2)     [B, K+1, D, H, W]  (7×7×7, 142 -> 22)
    M = softmax over the K+1 channels; Φ = Σ_k M_k · S_k (S_0 = G, S_{k+1} = G - x_d[k] + x_s[k])
    warped = grid_sample(feature, Φ) (trilinear, align_corners=False, zeros)  [B, C, D, H, W]

One program per (batch, tile of BM output voxels). The convolution is an implicit GEMM: for each of the
KS³ taps and each chunk of BK input channels, the [BM, BK] tile of shifted input voxels (zero outside the
volume, im2col on the fly) times the [BK, BN] slice of the packed weights accumulates into an fp32
[BM, BN] tile on the tensor cores; the K+1 = 22 output channels are padded to BN = 32 inside the kernel
(`pack_mask_weight` zero-pads the weights once: [KS³, Cin_pad, BN]). The epilogue is `deform_warp`'s:
softmax over the valid columns (fp32), Φ = G + Σ_k M_k (x_s[k] - x_d[k]) (equal to Σ M_k S_k since
Σ M_k = 1), and the trilinear gather of the C feature channels at Φ, written as a [BM, C] tile.

Reference: `warp_tail_ref` = the current modules (conv3d, then `deform_warp_ref`). fp64 inputs run it.
Off by default (`ChannelsLastWarpingNetwork(fused_tail=True)` turns it on) until a GPU run shows it faster than
cuDNN's Conv3d + `deform_warp`. Under the Triton interpreter bf16 dots are wrong, so there the operands
are upcast to fp32 (constexpr DOT_FP32), and one program takes up to 32768 voxels (`tile_m`): the
interpreter's cost is per op, so the compiled tile of 64 would take over two hours on LivePortrait's 65536 voxels
where this takes under three minutes; the code is the same, BM is only its tile constexpr (the tests run both).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from flashtalk.errors import FlashTalkError
from flashtalk.kernels.contract import OpContract, dispatched
from flashtalk.kernels.deform_warp import deform_warp_ref
from flashtalk.kernels.dense_motion_input import (
    check_keypoints,
    grid_axis,
    trilinear_corners,
    trilinear_gather,
    volume_format,
)
from flashtalk.kernels.dispatch import choose, interpreter_enabled
from flashtalk.kernels.triton_compat import _jit, tl, to_element, triton

BN = 32  # output-channel tile: K+1 <= 32 (22 for LivePortrait), padded in the packed weights
BK = 32  # input channels per GEMM step (142 -> 5 steps, 160 with padding)
BM = 64  # output voxels per program: one wgmma M tile per warpgroup of 4 warps
NUM_WARPS, NUM_STAGES = 4, 3
INTERPRETER_NUMEL = 1 << 20  # the interpreter's largest block (triton's TRITON_MAX_TENSOR_NUMEL)


def tile_m(voxels: int, channels: int) -> int:
    """Output voxels per program: BM compiled; under the interpreter the whole volume (a power of two, at
    least BM) in as few programs as its block limit allows for a [tile, `channels`] block."""
    if not interpreter_enabled():
        return BM
    return max(BM, min(triton.next_power_of_2(voxels), INTERPRETER_NUMEL // channels))


def pack_mask_weight(weight: torch.Tensor, bk: int = BK) -> torch.Tensor:
    """Conv weight [K+1, Cin, KS, KS, KS] -> [KS³, Cin_pad, BN] (taps major, zero-padded to a multiple of
    `bk` input channels and BN output channels), in the weight's dtype. Done once per network."""
    k1, cin, ks = weight.shape[0], weight.shape[1], weight.shape[2]
    if k1 > BN:
        raise FlashTalkError(f"warp_tail: at most {BN} mask channels, got {k1}")
    cin_pad = -(-cin // bk) * bk
    packed = weight.new_zeros(ks ** 3, cin_pad, BN)
    packed[:, :cin, :k1] = weight.permute(2, 3, 4, 1, 0).reshape(ks ** 3, cin, k1)
    return packed


def _check(prediction, weight, bias, kp_source, kp_driving, feature) -> None:
    for name, t in (("prediction", prediction), ("weight", weight), ("bias", bias), ("kp_source", kp_source),
                    ("kp_driving", kp_driving), ("feature", feature)):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            got = t.dtype if isinstance(t, torch.Tensor) else type(t).__name__
            raise FlashTalkError(f"warp_tail: {name} must be a floating tensor, got {got}")
        if t.device != prediction.device:
            raise FlashTalkError(f"warp_tail: {name} is on {t.device}, prediction on {prediction.device}")
    if prediction.dim() != 5 or min(prediction.shape) < 1:
        raise FlashTalkError(f"warp_tail: prediction must be a non-empty [B, Cin, D, H, W], got {tuple(prediction.shape)}")
    B, cin = prediction.shape[:2]
    if weight.dim() != 5 or weight.shape[1] != cin or len(set(weight.shape[2:])) != 1 or weight.shape[2] % 2 == 0:
        raise FlashTalkError(f"warp_tail: weight must be [K+1, {cin}, k, k, k] with k odd, got {tuple(weight.shape)}")
    if tuple(bias.shape) != (weight.shape[0],):
        raise FlashTalkError(f"warp_tail: bias must be [{weight.shape[0]}], got {tuple(bias.shape)}")
    check_keypoints("warp_tail", B, kp_source, kp_driving)
    if kp_source.shape[1] + 1 != weight.shape[0]:
        raise FlashTalkError(f"warp_tail: {weight.shape[0]} mask channels need {weight.shape[0] - 1} keypoints, "
                             f"got {kp_source.shape[1]}")
    if feature.dim() != 5 or feature.shape[0] != B or min(feature.shape) < 1:
        raise FlashTalkError(f"warp_tail: feature must be [B={B}, C, Df, Hf, Wf], got {tuple(feature.shape)}")


def warp_tail_ref(prediction: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, kp_source: torch.Tensor,
                  kp_driving: torch.Tensor, feature: torch.Tensor) -> torch.Tensor:
    """The unfused modules: mask logits = conv3d(prediction) (in prediction's dtype, as cuDNN would), then
    `deform_warp_ref` (softmax, Φ and the sample in fp32). Returns warped [B, C, D, H, W] in feature's dtype."""
    logits = F.conv3d(prediction, weight.to(prediction.dtype), bias.to(prediction.dtype), padding=weight.shape[2] // 2)
    return deform_warp_ref(logits, kp_source, kp_driving, feature)[0]


# --------------------------------------------------------------------------------------------- Triton


@_jit
def _mask_logits_tile(
    x_ptr, w_ptr, i_b, i_d, i_h, i_w, m_v, CIN, D, H, W,
    s_xb, s_xc, s_xd, s_xh, s_xw,
    KS: tl.constexpr, CIN_PAD: tl.constexpr, BM: tl.constexpr, BK: tl.constexpr, BN: tl.constexpr,
    DOT_FP32: tl.constexpr,
):
    """Implicit GEMM: Σ over KS³ taps and CIN_PAD / BK channel chunks of x[voxel + tap, chunk] @ w[tap, chunk]."""
    o_k = tl.arange(0, BK)
    o_n = tl.arange(0, BN)
    acc = tl.zeros([BM, BN], dtype=tl.float32)
    p_xb = x_ptr + i_b * s_xb
    for tap in range(KS * KS * KS):
        zz = i_d + (tap // (KS * KS) - KS // 2)
        yy = i_h + ((tap // KS) % KS - KS // 2)
        xx = i_w + (tap % KS - KS // 2)
        m_in = m_v & (zz >= 0) & (zz < D) & (yy >= 0) & (yy < H) & (xx >= 0) & (xx < W)  # [BM]
        p_row = p_xb + (zz.to(tl.int64) * s_xd + yy.to(tl.int64) * s_xh + xx.to(tl.int64) * s_xw)  # [BM]
        for k0 in range(0, CIN_PAD, BK):
            m_a = m_in[:, None] & ((k0 + o_k) < CIN)[None, :]
            b_a = tl.load(p_row[:, None] + (k0 + o_k)[None, :] * s_xc, mask=m_a, other=0.0)  # [BM, BK]
            b_w = tl.load(w_ptr + ((tap * CIN_PAD + k0 + o_k) * BN)[:, None] + o_n[None, :])  # [BK, BN]
            if DOT_FP32:
                b_a = b_a.to(tl.float32)
                b_w = b_w.to(tl.float32)
            acc = tl.dot(b_a, b_w, acc)  # [BM, BK] @ [BK, BN] -> [BM, BN]
    return acc


@_jit
def _warp_tail_kernel(
    x_ptr, w_ptr, bias_ptr, ks_ptr, kd_ptr, f_ptr, out_ptr,
    K, CIN, C, D, H, W, Df, Hf, Wf, V0, V1,
    s_xb, s_xc, s_xd, s_xh, s_xw,
    s_ksb, s_ksk, s_ksx,
    s_kdb, s_kdk, s_kdx,
    s_fb, s_fc, s_fd, s_fh, s_fw,
    s_ob, s_oc, s_od, s_oh, s_ow,
    KS: tl.constexpr, CIN_PAD: tl.constexpr, BM: tl.constexpr, BK: tl.constexpr, BN: tl.constexpr,
    BC: tl.constexpr, DOT_FP32: tl.constexpr,
):
    tl.static_assert(BN >= 16 and BK >= 16 and BM >= 16, "tl.dot needs tiles of at least 16")
    tl.static_assert(CIN_PAD % BK == 0, "the packed weights are padded to whole BK chunks")
    i_v = tl.program_id(0)
    i_b = tl.program_id(1).to(tl.int64)
    o_v = V0 + i_v * BM + tl.arange(0, BM)  # [BM] flat output voxel index over D·H·W, from V0
    m_v = o_v < V1
    i_w = o_v % W
    i_h = (o_v // W) % H
    i_d = o_v // (W * H)
    acc = _mask_logits_tile(x_ptr, w_ptr, i_b, i_d, i_h, i_w, m_v, CIN, D, H, W, s_xb, s_xc, s_xd, s_xh, s_xw,
                            KS, CIN_PAD, BM, BK, BN, DOT_FP32)  # [BM, BN] fp32 logits (no bias yet)

    # epilogue 1: softmax over the K+1 valid columns and Φ = G + Σ_k M_k (x_s[k] - x_d[k]), all fp32
    o_n = tl.arange(0, BN)
    m_n = o_n < K + 1
    b_l = acc + tl.load(bias_ptr + o_n, mask=m_n, other=0.0).to(tl.float32)[None, :]
    b_l = tl.where(m_n[None, :], b_l, float("-inf"))
    b_e = tl.exp(b_l - tl.max(b_l, 1)[:, None])  # [BM, BN], 0 in the padding columns
    b_s = tl.sum(b_e, 1)  # [BM]
    m_kp = (o_n >= 1) & m_n
    o_kp = tl.where(m_kp, o_n - 1, 0).to(tl.int64)  # column n >= 1 moves by keypoint n - 1
    p_s = ks_ptr + i_b * s_ksb + o_kp * s_ksk
    p_d = kd_ptr + i_b * s_kdb + o_kp * s_kdk
    dx = tl.load(p_s, mask=m_kp, other=0.0).to(tl.float32) - tl.load(p_d, mask=m_kp, other=0.0).to(tl.float32)
    dy = tl.load(p_s + s_ksx, mask=m_kp, other=0.0).to(tl.float32) - tl.load(p_d + s_kdx, mask=m_kp, other=0.0).to(tl.float32)
    dz = tl.load(p_s + 2 * s_ksx, mask=m_kp, other=0.0).to(tl.float32) - tl.load(p_d + 2 * s_kdx, mask=m_kp, other=0.0).to(tl.float32)
    phx = grid_axis(i_w, W) + tl.sum(b_e * dx[None, :], 1) / b_s  # [BM]
    phy = grid_axis(i_h, H) + tl.sum(b_e * dy[None, :], 1) / b_s
    phz = grid_axis(i_d, D) + tl.sum(b_e * dz[None, :], 1) / b_s

    # epilogue 2: the trilinear sample of the C feature channels at Φ, one [BM, BC] tile
    o000, o001, o010, o011, o100, o101, o110, o111, w000, w001, w010, w011, w100, w101, w110, w111 = \
        trilinear_corners(phx, phy, phz, Df, Hf, Wf, s_fd, s_fh, s_fw)
    o_c = tl.arange(0, BC).to(tl.int64)
    m_vc = m_v[:, None] & (o_c < C)[None, :]  # [BM, BC]
    b_v = trilinear_gather(f_ptr + i_b * s_fb + o_c[None, :] * s_fc, m_vc,
                           o000[:, None], o001[:, None], o010[:, None], o011[:, None],
                           o100[:, None], o101[:, None], o110[:, None], o111[:, None],
                           w000[:, None], w001[:, None], w010[:, None], w011[:, None],
                           w100[:, None], w101[:, None], w110[:, None], w111[:, None])  # [BM, BC]
    p_o = (out_ptr + i_b * s_ob + (i_d.to(tl.int64) * s_od + i_h.to(tl.int64) * s_oh + i_w.to(tl.int64) * s_ow)[:, None]
           + o_c[None, :] * s_oc)
    tl.store(p_o, to_element(b_v, out_ptr), mask=m_vc)


def _launch(prediction: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor, kp_source: torch.Tensor,
            kp_driving: torch.Tensor, feature: torch.Tensor, out: torch.Tensor, ks: int,
            bm: int | None = None, voxels: tuple[int, int] | None = None) -> torch.Tensor:
    """One launch; `bm`: output voxels per program (default `tile_m`); `voxels`: only the flat output voxels
    [first, end) of D·H·W are written (default all)."""
    B, cin, D, H, W = prediction.shape
    C, Df, Hf, Wf = feature.shape[1:]
    v0, v1 = voxels or (0, D * H * W)
    if not 0 <= v0 < v1 <= D * H * W:
        raise FlashTalkError(f"warp_tail: voxels [{v0}, {v1}) is not a range inside 0..{D * H * W}")
    bc = max(16, triton.next_power_of_2(C))
    bm = bm or tile_m(v1 - v0, max(BN, BK, bc))
    grid = (triton.cdiv(v1 - v0, bm), B)
    _warp_tail_kernel[grid](
        prediction, packed, bias, kp_source, kp_driving, feature, out,
        kp_source.shape[1], cin, C, D, H, W, Df, Hf, Wf, v0, v1,
        *prediction.stride(), *kp_source.stride(), *kp_driving.stride(), *feature.stride(), *out.stride(),
        KS=ks, CIN_PAD=packed.shape[1], BM=bm, BK=BK, BN=BN, BC=bc,
        DOT_FP32=prediction.dtype == torch.bfloat16 and interpreter_enabled(),
        num_warps=NUM_WARPS, num_stages=NUM_STAGES,
    )
    return out


def _output(prediction: torch.Tensor, feature: torch.Tensor) -> torch.Tensor:
    B, _, D, H, W = prediction.shape
    return torch.empty((B, feature.shape[1], D, H, W), dtype=feature.dtype, device=feature.device,
                       memory_format=volume_format(prediction))


@torch.library.custom_op("flashtalk::warp_tail", mutates_args=())
def _warp_tail_op(prediction: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor, kp_source: torch.Tensor,
                  kp_driving: torch.Tensor, feature: torch.Tensor, ks: int) -> torch.Tensor:
    return _launch(prediction, packed, bias, kp_source, kp_driving, feature, _output(prediction, feature), ks)


@_warp_tail_op.register_fake
def _(prediction, packed, bias, kp_source, kp_driving, feature, ks):
    return _output(prediction, feature)


CONTRACT = OpContract(
    op="warp_tail",
    signature="prediction, weight, bias, kp_source, kp_driving, feature, packed=None",
    accepts=(
        "prediction [B, Cin, D, H, W], weight [K+1, Cin, ks, ks, ks] (odd ks), bias [K+1], kp_source and "
        "kp_driving [B, K, 3], feature [B, C, Df, Hf, Wf]; fp32, fp16, bf16 (fp64: the reference runs)",
        "any strides: channels-last-3d, sliced channels; odd sizes; samples past the volume's edges",
        "packed: our kernel's pre-packed weight (another implementation may ignore it)",
    ),
    returns="warped [B, C, D, H, W] in feature's dtype (= deform_warp(conv3d(prediction, weight, bias)))",
    may_refuse=f"our kernel refuses fp64 inputs and more than {BN} mask channels (the reference runs)",
    check=lambda prediction, weight, bias, kp_source, kp_driving, feature, packed=None: _check(
        prediction, weight, bias, kp_source, kp_driving, feature),
    outputs=lambda prediction, weight, bias, kp_source, kp_driving, feature, packed=None: [
        ((prediction.shape[0], feature.shape[1], *prediction.shape[2:]), feature.dtype)
    ],
    reference=lambda prediction, weight, bias, kp_source, kp_driving, feature, packed=None: warp_tail_ref(
        prediction, weight, bias, kp_source, kp_driving, feature),
)


@dispatched(CONTRACT)
def warp_tail(prediction: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, kp_source: torch.Tensor,
              kp_driving: torch.Tensor, feature: torch.Tensor, packed: torch.Tensor | None = None) -> torch.Tensor:
    """warped [B, C, D, H, W] (feature's dtype, prediction's memory format) = deform_warp(conv3d(prediction,
    weight, bias), x_s, x_d, feature) without materialising the logits or Φ; see the module docstring.
    `packed`: `pack_mask_weight(weight)` made once (packed per call when None)."""
    _check(prediction, weight, bias, kp_source, kp_driving, feature)
    tensors = (prediction, weight, kp_source, kp_driving, feature)
    unsupported = None
    if any(t.dtype == torch.float64 for t in tensors):
        unsupported = "float64 inputs (the kernel computes in fp32)"
    elif weight.shape[0] > BN:
        unsupported = f"{weight.shape[0]} mask channels (at most {BN})"
    if choose("warp_tail", prediction.device, unsupported).use_triton:
        if packed is None:
            packed = pack_mask_weight(weight.to(prediction.dtype))
        return _warp_tail_op(prediction, packed.to(prediction.dtype), bias.float(), kp_source, kp_driving, feature,
                             weight.shape[2])
    return warp_tail_ref(prediction, weight, bias, kp_source, kp_driving, feature)


def compile_variants():
    """The launches `flashtalk kernels check` compiles: the fused tail at LivePortrait's size (prediction
    [B, 142, 16, 64, 64] and f_s [B, 32, 16, 64, 64] channels-last-3d, 21 keypoints, 7×7×7), batch 1 and 32,
    in the fast path's precisions. Gated like production although the fused tail is off by default."""
    from flashtalk.kernels.check import Variant, meta

    def cl3d(B: int, C: int, dtype: torch.dtype) -> torch.Tensor:
        return meta(B, 16, 64, 64, C, dtype=dtype).permute(0, 4, 1, 2, 3)  # channels-last-3d [B, C, 16, 64, 64]

    def call(B: int, dtype: torch.dtype):
        pred, feature, out = cl3d(B, 142, dtype), cl3d(B, 32, dtype), cl3d(B, 32, dtype)
        packed = meta(343, -(-142 // BK) * BK, BN, dtype=dtype)
        kps = meta(B, 21, 3)
        return lambda: _launch(pred, packed, meta(BN), kps, kps, feature, out, 7)

    return [Variant(f"warping tail (fused, off by default) B{B} 142->22 7x7x7 16x64x64 {name}", call(B, dtype))
            for name, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)) for B in (1, 32)]
