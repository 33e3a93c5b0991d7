"""Deformation + feature warp: the softmax-weighted sum of the sparse motions (spec liveportrait §6.1
step 8) and the trilinear sample of the feature volume at it (§6.3 step 1, call site #2 of §9).

mask_logits [B, K+1, D, H, W] (channel 0 = background) -> M = softmax over K+1;
Φ = Σ_k M_k · S_k with S_0 = G, S_{k+1} = G - x_d[k] + x_s[k] (G the corner-aligned identity grid);
warped = grid_sample(feature, Φ) (trilinear, align_corners=False, zeros padding per corner).

The reference computes softmax, Φ and the sample in fp32 (fp64 for fp64 inputs), like the original under
autocast; `warped` has feature's dtype and Φ is fp32 (fp64 for fp64 inputs).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from flashtalk.errors import FlashTalkError
from flashtalk.kernels.dense_motion_input import FLOAT_DTYPES, check_keypoints, identity_grid, sparse_motions
from flashtalk.kernels.dispatch import choose


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


def deform_warp(
    mask_logits: torch.Tensor,
    kp_source: torch.Tensor,
    kp_driving: torch.Tensor,
    feature: torch.Tensor,
    *,
    return_deformation: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Softmax over the K+1 mask channels, deformation Φ = Σ_k softmax_k · S_k, and the trilinear warp of
    `feature` [B, C, D, H, W] at Φ. Returns (warped, Φ [B, D, H, W, 3] fp32, or None unless asked)."""
    _check(mask_logits, kp_source, kp_driving, feature)
    choose("deform_warp", mask_logits.device, unsupported="the Triton kernel is not written yet")
    return deform_warp_ref(mask_logits, kp_source, kp_driving, feature, return_deformation=return_deformation)
