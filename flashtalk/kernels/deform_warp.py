"""Deformation + feature warp: the softmax-weighted sum of the sparse motions (spec liveportrait §6.1
step 8) and the trilinear sample of the feature volume at it (§6.3 step 1, call site #2 of §9).

mask_logits [B, K+1, D, H, W] (channel 0 = background) -> M = softmax over K+1;
Φ = Σ_k M_k · S_k with S_0 = G, S_{k+1} = G - x_d[k] + x_s[k] (G the corner-aligned identity grid);
warped = grid_sample(feature, Φ) (trilinear, align_corners=False, zeros padding per corner).

The Triton kernel does it in one pass per (batch, tile of voxels): an online softmax over the K+1
logits (each read once) accumulates Φ in registers, then the C channels are gathered at Φ; Φ is written
only when asked. The feature volume may have its own spatial size. `warped` is written in mask_logits'
memory format (channels-last-3d in the fast path). fp64 inputs run the reference.

The reference computes softmax, Φ and the sample in fp32 (fp64 for fp64 inputs), like the original under
autocast; `warped` has feature's dtype and Φ is fp32 (fp64 for fp64 inputs).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from flashtalk.errors import FlashTalkError
from flashtalk.kernels.contract import OpContract, dispatched
from flashtalk.kernels.dense_motion_input import (
    FLOAT_DTYPES,
    check_keypoints,
    grid_axis,
    identity_grid,
    sparse_motions,
    trilinear_corners,
    trilinear_gather,
    volume_format,
)
from flashtalk.kernels.dispatch import choose
from flashtalk.kernels.triton_compat import _jit, block_size, tl, to_element, triton


def _compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _check(mask_logits: torch.Tensor, kp_source: torch.Tensor, kp_driving: torch.Tensor, feature: torch.Tensor) -> None:
    if mask_logits.dim() != 5 or min(mask_logits.shape) < 1:
        raise FlashTalkError(f"deform_warp: mask_logits must be [B, K+1, D, H, W]; got {tuple(mask_logits.shape)}")
    if feature.dim() != 5 or min(feature.shape) < 1:
        raise FlashTalkError(f"deform_warp: feature must be [B, C, D, H, W]; got {tuple(feature.shape)}")
    B, K1, D, H, W = mask_logits.shape
    if feature.shape[0] != B:
        raise FlashTalkError(f"deform_warp: feature batch {feature.shape[0]} != mask_logits batch {B}")
    for name, t in (("mask_logits", mask_logits), ("feature", feature)):
        if t.dtype not in FLOAT_DTYPES:
            raise FlashTalkError(f"deform_warp: {name} must be floating point; got {t.dtype}")
    check_keypoints("deform_warp", B, kp_source, kp_driving)
    if kp_source.shape[1] + 1 != K1:
        raise FlashTalkError(
            f"deform_warp: mask_logits has {K1} channels but there are {kp_source.shape[1]} keypoints (need K+1)"
        )
    for name, t in (("kp_source", kp_source), ("kp_driving", kp_driving), ("feature", feature)):
        if t.device != mask_logits.device:
            raise FlashTalkError(f"deform_warp: {name} is on {t.device}, mask_logits on {mask_logits.device}")


def deform_warp_ref(
    mask_logits: torch.Tensor,
    kp_source: torch.Tensor,
    kp_driving: torch.Tensor,
    feature: torch.Tensor,
    *,
    return_deformation: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(warped [B, C, D, H, W], Φ [B, D, H, W, 3] or None); see the module docstring."""
    compute = _compute_dtype(mask_logits, feature)
    B, _, D, H, W = mask_logits.shape
    G = identity_grid(D, H, W, compute, mask_logits.device)
    S = sparse_motions(G, kp_source.to(compute), kp_driving.to(compute))  # [B, K+1, D, H, W, 3]
    mask = torch.softmax(mask_logits.to(compute), dim=1)  # [B, K+1, D, H, W]
    deformation = (mask[..., None] * S).sum(dim=1)  # [B, D, H, W, 3]
    warped = F.grid_sample(feature.to(compute), deformation, mode="bilinear", padding_mode="zeros", align_corners=False)
    return warped.to(feature.dtype), (deformation if return_deformation else None)


# --------------------------------------------------------------------------------------------- Triton


@_jit
def _deform_warp_kernel(
    l_ptr, ks_ptr, kd_ptr, f_ptr, out_ptr, phi_ptr,
    K, C, D, H, W, Df, Hf, Wf,
    s_lb, s_lk, s_ld, s_lh, s_lw,
    s_ksb, s_ksk, s_ksx,
    s_kdb, s_kdk, s_kdx,
    s_fb, s_fc, s_fd, s_fh, s_fw,
    s_ob, s_oc, s_od, s_oh, s_ow,
    s_pb, s_pd, s_ph, s_pw, s_px,
    BV: tl.constexpr,
    WRITE_PHI: tl.constexpr,
):
    i_v = tl.program_id(0)
    i_b = tl.program_id(1).to(tl.int64)
    o_v = i_v * BV + tl.arange(0, BV)  # [BV] flat voxel index over D·H·W
    m_v = o_v < D * H * W
    i_w = (o_v % W).to(tl.int64)
    i_h = ((o_v // W) % H).to(tl.int64)
    i_d = (o_v // (W * H)).to(tl.int64)
    gx = grid_axis(i_w, W)
    gy = grid_axis(i_h, H)
    gz = grid_axis(i_d, D)
    p_l = l_ptr + i_b * s_lb + i_d * s_ld + i_h * s_lh + i_w * s_lw
    # online softmax over k: running max b_m, sum b_s and Σ e_k·S_k (b_x, b_y, b_z), rescaled as b_m grows
    b_m = tl.load(p_l, mask=m_v, other=0.0).to(tl.float32)  # background logit (k = 0, S_0 = G)
    b_s = tl.full([BV], 1.0, dtype=tl.float32)
    b_x = gx
    b_y = gy
    b_z = gz
    for i_k in range(K):
        b_l = tl.load(p_l + (i_k + 1) * s_lk, mask=m_v, other=0.0).to(tl.float32)  # [BV]
        p_s = ks_ptr + i_b * s_ksb + i_k * s_ksk
        p_d = kd_ptr + i_b * s_kdb + i_k * s_kdk
        sx = (gx - tl.load(p_d).to(tl.float32)) + tl.load(p_s).to(tl.float32)
        sy = (gy - tl.load(p_d + s_kdx).to(tl.float32)) + tl.load(p_s + s_ksx).to(tl.float32)
        sz = (gz - tl.load(p_d + 2 * s_kdx).to(tl.float32)) + tl.load(p_s + 2 * s_ksx).to(tl.float32)
        m_new = tl.maximum(b_m, b_l)
        alpha = tl.exp(b_m - m_new)
        e = tl.exp(b_l - m_new)
        b_s = b_s * alpha + e
        b_x = b_x * alpha + e * sx
        b_y = b_y * alpha + e * sy
        b_z = b_z * alpha + e * sz
        b_m = m_new
    phx = b_x / b_s
    phy = b_y / b_s
    phz = b_z / b_s
    if WRITE_PHI:
        p_p = phi_ptr + i_b * s_pb + i_d * s_pd + i_h * s_ph + i_w * s_pw
        tl.store(p_p, phx, mask=m_v)
        tl.store(p_p + s_px, phy, mask=m_v)
        tl.store(p_p + 2 * s_px, phz, mask=m_v)
    o000, o001, o010, o011, o100, o101, o110, o111, w000, w001, w010, w011, w100, w101, w110, w111 = \
        trilinear_corners(phx, phy, phz, Df, Hf, Wf, s_fd, s_fh, s_fw)
    p_f = f_ptr + i_b * s_fb
    p_o = out_ptr + i_b * s_ob + i_d * s_od + i_h * s_oh + i_w * s_ow
    for i_c in range(C):
        b_v = trilinear_gather(p_f + i_c * s_fc, m_v, o000, o001, o010, o011, o100, o101, o110, o111,
                               w000, w001, w010, w011, w100, w101, w110, w111)  # [BV]
        p_oc = p_o + i_c * s_oc
        tl.store(p_oc, to_element(b_v, p_oc), mask=m_v)


def _launch(mask_logits: torch.Tensor, kp_source: torch.Tensor, kp_driving: torch.Tensor, feature: torch.Tensor,
            out: torch.Tensor, phi: torch.Tensor | None) -> None:
    """Run the kernel into `out` [B, C, D, H, W] and, when given, `phi` [B, D, H, W, 3] fp32 (any strides)."""
    B, K1, D, H, W = mask_logits.shape
    C, Df, Hf, Wf = feature.shape[1:]
    BV = block_size(D * H * W)
    grid = (triton.cdiv(D * H * W, BV), B)
    _deform_warp_kernel[grid](
        mask_logits, kp_source, kp_driving, feature, out, out if phi is None else phi,
        K1 - 1, C, D, H, W, Df, Hf, Wf,
        *mask_logits.stride(), *kp_source.stride(), *kp_driving.stride(), *feature.stride(), *out.stride(),
        *((0,) * 5 if phi is None else phi.stride()),
        BV=BV, WRITE_PHI=phi is not None, num_warps=4,
    )


def _output_shapes(mask_logits: torch.Tensor, feature: torch.Tensor, return_deformation: bool):
    B, _, D, H, W = mask_logits.shape
    return (B, feature.shape[1], D, H, W), ((B, D, H, W, 3) if return_deformation else (0,))


@torch.library.custom_op("flashtalk::deform_warp", mutates_args=())
def _deform_warp_op(mask_logits: torch.Tensor, kp_source: torch.Tensor, kp_driving: torch.Tensor,
                    feature: torch.Tensor, return_deformation: bool) -> tuple[torch.Tensor, torch.Tensor]:
    out_shape, phi_shape = _output_shapes(mask_logits, feature, return_deformation)
    out = torch.empty(out_shape, dtype=feature.dtype, device=feature.device, memory_format=volume_format(mask_logits))
    phi = torch.empty(phi_shape, dtype=torch.float32, device=feature.device)
    _launch(mask_logits, kp_source, kp_driving, feature, out, phi if return_deformation else None)
    return out, phi


@_deform_warp_op.register_fake
def _(mask_logits, kp_source, kp_driving, feature, return_deformation):
    out_shape, phi_shape = _output_shapes(mask_logits, feature, return_deformation)
    out = torch.empty(out_shape, dtype=feature.dtype, device=feature.device, memory_format=volume_format(mask_logits))
    return out, feature.new_empty(phi_shape, dtype=torch.float32)


CONTRACT = OpContract(
    op="deform_warp",
    signature="mask_logits, kp_source, kp_driving, feature, *, return_deformation=False",
    accepts=(
        "mask_logits [B, K+1, D, H, W] (channel 0 = background), feature [B, C, Df, Hf, Wf] (its own spatial "
        "size), kp_source and kp_driving [B, K, 3] (x, y, z in [-1, 1] and beyond)",
        "float dtypes fp32, fp16, bf16 (fp64: the reference runs); keypoints in any float dtype",
        "any strides: channels-last-3d, permuted, sliced views; odd sizes down to 1x1x1",
        "sample points outside the volume (zeros padding per corner, align_corners=False)",
    ),
    returns="(warped [B, C, D, H, W] in feature's dtype, Φ [B, D, H, W, 3] fp32 (fp64 for fp64 inputs) or None "
    "unless return_deformation)",
    may_refuse="our kernel refuses fp64 inputs (the reference runs)",
    check=lambda mask_logits, kp_source, kp_driving, feature, **_: _check(mask_logits, kp_source, kp_driving, feature),
    outputs=lambda mask_logits, kp_source, kp_driving, feature, *, return_deformation=False: [
        ((mask_logits.shape[0], feature.shape[1], *mask_logits.shape[2:]), feature.dtype),
        ((mask_logits.shape[0], *mask_logits.shape[2:], 3), _compute_dtype(mask_logits, feature))
        if return_deformation else None,
    ],
    reference=deform_warp_ref,
)


@dispatched(CONTRACT)
def deform_warp(
    mask_logits: torch.Tensor,
    kp_source: torch.Tensor,
    kp_driving: torch.Tensor,
    feature: torch.Tensor,
    *,
    return_deformation: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Softmax over the K+1 mask channels, deformation Φ = Σ_k softmax_k · S_k, and the trilinear warp of
    `feature` [B, C, Df, Hf, Wf] at Φ. Returns (warped [B, C, D, H, W] in feature's dtype, Φ [B, D, H, W, 3]
    fp32 (fp64 for fp64 inputs), or None unless asked)."""
    _check(mask_logits, kp_source, kp_driving, feature)
    tensors = (mask_logits, kp_source, kp_driving, feature)
    unsupported = "float64 inputs (the kernel computes in fp32)" if any(t.dtype == torch.float64 for t in tensors) else None
    if choose("deform_warp", mask_logits.device, unsupported).use_triton:
        out, phi = _deform_warp_op(mask_logits, kp_source, kp_driving, feature, return_deformation)
        return out, (phi if return_deformation else None)
    return deform_warp_ref(mask_logits, kp_source, kp_driving, feature, return_deformation=return_deformation)


def compile_variants():
    """The launches `flashtalk kernels check` compiles: the warping network's call at the real size (22 mask
    channels, 32-channel 16x64x64 feature volume), batch 1 and 32, with and without Φ, in each precision."""
    from flashtalk.kernels.check import Variant, meta

    def call(B: int, dtype: torch.dtype, with_phi: bool):
        logits, xs, xd = meta(B, 22, 16, 64, 64, dtype=dtype), meta(B, 21, 3), meta(B, 21, 3)
        feature, out = meta(B, 32, 16, 64, 64, dtype=dtype), meta(B, 32, 16, 64, 64, dtype=dtype)
        phi = meta(B, 16, 64, 64, 3, dtype=dtype) if with_phi else None
        return lambda: _launch(logits, xs, xd, feature, out, phi)

    return [Variant(f"warping deform+sample B{B} 32x16x64x64{' +phi' if phi else ''} {name}", call(B, dtype, phi))
            for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16), ("fp16", torch.float16))
            for B in (1, 32) for phi in (False, True)]
