"""Scaled dot-product attention: public op and its PyTorch reference.

The flash-style Triton kernel is added here (issue 6); until then every call runs the reference.

Conventions (as PyTorch): q [B, H, Lq, D], k and v [B, H, Lk, D]; `attn_mask` boolean (True = may
attend, as in SDPA) or an additive float bias, broadcastable to [B, H, Lq, Lk]; `key_padding_mask`
[B, Lk] boolean (True = padding to ignore, as in nn.MultiheadAttention). A query row whose keys are all
masked returns zeros (SDPA would return NaN).
"""

from __future__ import annotations

import math

import torch

from flashtalk.errors import FlashTalkError
from flashtalk.kernels.dispatch import choose


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
    B, _, Lq, _ = q.shape
    Lk = k.shape[2]
    if key_padding_mask is not None and (key_padding_mask.dtype != torch.bool or tuple(key_padding_mask.shape) != (B, Lk)):
        raise FlashTalkError(
            f"key_padding_mask must be bool [B, Lk] = [{B}, {Lk}]; got {key_padding_mask.dtype} {tuple(key_padding_mask.shape)}"
        )
    if attn_mask is not None:
        try:
            torch.broadcast_shapes(attn_mask.shape, (B, q.shape[1], Lq, Lk))
        except RuntimeError:
            raise FlashTalkError(
                f"attn_mask of shape {tuple(attn_mask.shape)} does not broadcast to [B, H, Lq, Lk] = {[B, q.shape[1], Lq, Lk]}"
            ) from None


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
    """Plain attention computed in fp32 (fp64 for fp64 inputs); fully masked rows give zeros."""
    compute = torch.float64 if q.dtype == torch.float64 else torch.float32
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    s = torch.matmul(q.to(compute), k.to(compute).transpose(-1, -2)) * scale  # [B, H, Lq, Lk]
    allowed = torch.ones(s.shape, dtype=torch.bool, device=s.device)
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            allowed = allowed & attn_mask
        else:
            s = s + attn_mask.to(compute)
    if key_padding_mask is not None:
        allowed = allowed & ~key_padding_mask[:, None, None, :]
    if causal:
        Lq, Lk = s.shape[-2:]
        allowed = allowed & torch.ones(Lq, Lk, dtype=torch.bool, device=s.device).tril(Lk - Lq)
    s = s.masked_fill(~allowed, float("-inf"))
    row_max = s.amax(dim=-1, keepdim=True)
    p = torch.exp(s - torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max)))
    denom = p.sum(dim=-1, keepdim=True)
    p = p / torch.where(denom > 0, denom, torch.ones_like(denom))
    return torch.matmul(p, v.to(compute)).to(q.dtype)


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
    """Attention over [B, H, L, D] tensors; see the module docstring for mask conventions."""
    _check(q, k, v, attn_mask, key_padding_mask)
    choose("attention", q.device, unsupported="the Triton attention kernel is not written yet")
    return attention_ref(q, k, v, attn_mask=attn_mask, key_padding_mask=key_padding_mask, causal=causal, scale=scale)
