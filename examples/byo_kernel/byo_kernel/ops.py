"""Two implementations of FlashTalk kernel ops in plain PyTorch, each following the op's contract
(`flashtalk kernels list`): called with the op's own arguments, returning new tensors, never writing into
the inputs, raising `flashtalk.kernels.Unsupported` for a call it does not serve."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def attention(q, k, v, *, attn_mask=None, key_padding_mask=None, causal=False, scale=None):
    """FlashTalk's attention contract on torch.nn.functional.scaled_dot_product_attention: every mask folded
    into one boolean "may attend" tensor plus an optional additive bias; rows with no allowed key are 0."""
    from flashtalk.kernels import Unsupported

    if q.dtype == torch.float64:
        raise Unsupported("float64 (this example serves fp32 / fp16 / bf16)")
    B, H, Lq, _ = q.shape
    Lk = k.shape[2]
    allow = torch.ones(Lq, Lk, dtype=torch.bool, device=q.device)
    if causal:
        allow = allow.tril(diagonal=Lk - Lq)  # bottom-right aligned
    allow = allow.expand(B, H, Lq, Lk)
    bias = None
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            allow = allow & attn_mask
        else:
            bias = attn_mask.float().expand(B, H, Lq, Lk)
            allow = allow & (bias > float("-inf"))
    if key_padding_mask is not None:
        allow = allow & ~key_padding_mask.view(B, 1, 1, Lk)
    # fp32 math (as FlashTalk's reference); a fully masked row gets a finite bias so SDPA stays NaN-free
    scores_bias = torch.zeros(B, H, Lq, Lk, device=q.device) if bias is None else bias.clone()
    scores_bias = scores_bias.masked_fill(~allow, float("-inf"))
    alive = allow.any(dim=-1, keepdim=True)
    scores_bias = scores_bias.masked_fill(~alive, 0.0)
    out = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=scores_bias, scale=scale)
    return out.masked_fill(~alive, 0.0).to(q.dtype)


def deform_warp(mask_logits, kp_source, kp_driving, feature, *, return_deformation=False):
    """FlashTalk's deform_warp contract on grid_sample: Φ = G + Σ_k softmax_{k+1} · (x_s[k] - x_d[k]) (the
    background motion is the identity grid G and the weights sum to 1), then a trilinear sample of `feature`."""
    from flashtalk.kernels import Unsupported

    if torch.float64 in (mask_logits.dtype, feature.dtype):
        raise Unsupported("float64 (this example serves fp32 / fp16 / bf16)")
    B, _, D, H, W = mask_logits.shape
    weights = mask_logits.float().softmax(dim=1)[:, 1:]  # [B, K, D, H, W], keypoint motions only
    shift = kp_source.float() - kp_driving.float()  # [B, K, 3] (x, y, z)
    axes = [
        torch.linspace(-1.0, 1.0, n, device=feature.device) if n > 1 else torch.full((1,), -1.0, device=feature.device)
        for n in (D, H, W)
    ]
    z, y, x = torch.meshgrid(*axes, indexing="ij")
    grid = torch.stack((x, y, z), dim=-1)  # [D, H, W, 3], corner-aligned identity
    phi = grid + torch.einsum("bkdhw,bkc->bdhwc", weights, shift)
    warped = F.grid_sample(feature.float(), phi, mode="bilinear", padding_mode="zeros", align_corners=False)
    return warped.to(feature.dtype), (phi if return_deformation else None)
