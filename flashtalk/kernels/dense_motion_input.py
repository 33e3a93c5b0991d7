"""Dense-motion input: the 110-channel hourglass input of LivePortrait's dense motion network, built
from the keypoints and the compressed 4-channel volume (spec liveportrait §6.1 steps 2-5).

For keypoints k = 0..K-1 and the identity grid G (corner-aligned, last axis (x, y, z), §6.2):
sparse motions S_0 = G, S_{k+1} = G - x_d[k] + x_s[k]; deformed features D_k = grid_sample(c, S_k)
(trilinear, align_corners=False, zeros padding, §9); heatmaps H_0 = 0,
H_{k+1} = exp(-0.5 |G - x_d[k]|² / 0.01) - exp(-0.5 |G - x_s[k]|² / 0.01).
Output channel k·(C+1) + j: j = 0 the heatmap H_k, j = 1..C the C sampled channels of D_k.

The reference materialises S and the (K+1)-fold repeated volume, as the original does; the reference
computes coordinates in fp32 (fp64 for fp64 inputs) and samples in fp32, like the original under
autocast. The output has c's dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from flashtalk.errors import FlashTalkError
from flashtalk.kernels.dispatch import choose

KP_VARIANCE = 0.01  # Gaussian heatmap variance in normalised units (std 0.1)
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def identity_grid(D: int, H: int, W: int, dtype: torch.dtype, device: torch.device | str) -> torch.Tensor:
    """[D, H, W, 3] grid of (x, y, z), each axis 2·(i / (N - 1)) - 1 (a size-1 axis is -1)."""

    def axis(n: int) -> torch.Tensor:
        i = torch.arange(n, dtype=dtype, device=device)
        return 2 * (i / max(n - 1, 1)) - 1

    z, y, x = torch.meshgrid(axis(D), axis(H), axis(W), indexing="ij")
    return torch.stack([x, y, z], dim=-1)


def sparse_motions(G: torch.Tensor, kp_source: torch.Tensor, kp_driving: torch.Tensor) -> torch.Tensor:
    """[B, K+1, D, H, W, 3]: S_0 = G and S_{k+1} = G - x_d[k] + x_s[k]."""
    B = kp_source.shape[0]
    d = kp_driving[:, :, None, None, None, :]
    s = kp_source[:, :, None, None, None, :]
    moved = G[None, None] - d + s  # [B, K, D, H, W, 3]
    return torch.cat([G[None, None].expand(B, 1, *G.shape), moved], dim=1)


def check_keypoints(op: str, B: int, kp_source: torch.Tensor, kp_driving: torch.Tensor) -> None:
    for name, kp in (("kp_source", kp_source), ("kp_driving", kp_driving)):
        if kp.dim() != 3 or kp.shape[0] != B or kp.shape[2] != 3:
            raise FlashTalkError(f"{op}: {name} must be [B={B}, K, 3]; got {tuple(kp.shape)}")
        if kp.dtype not in FLOAT_DTYPES:
            raise FlashTalkError(f"{op}: {name} must be floating point; got {kp.dtype}")
    if kp_source.shape != kp_driving.shape:
        raise FlashTalkError(
            f"{op}: kp_source {tuple(kp_source.shape)} and kp_driving {tuple(kp_driving.shape)} differ in shape"
        )


def _check(compressed: torch.Tensor, kp_source: torch.Tensor, kp_driving: torch.Tensor) -> None:
    if compressed.dim() != 5 or min(compressed.shape) < 1:
        raise FlashTalkError(f"dense_motion_input: compressed must be [B, C, D, H, W]; got {tuple(compressed.shape)}")
    if compressed.dtype not in FLOAT_DTYPES:
        raise FlashTalkError(f"dense_motion_input: compressed must be floating point; got {compressed.dtype}")
    check_keypoints("dense_motion_input", compressed.shape[0], kp_source, kp_driving)
    if kp_source.shape[1] < 1:
        raise FlashTalkError("dense_motion_input: need at least one keypoint (K >= 1)")
    for name, t in (("kp_source", kp_source), ("kp_driving", kp_driving)):
        if t.device != compressed.device:
            raise FlashTalkError(f"dense_motion_input: {name} is on {t.device}, compressed on {compressed.device}")


def dense_motion_input_ref(compressed: torch.Tensor, kp_source: torch.Tensor, kp_driving: torch.Tensor) -> torch.Tensor:
    """[B, C, D, H, W] volume + [B, K, 3] keypoints -> [B, (K+1)·(C+1), D, H, W] hourglass input."""
    compute = torch.float64 if compressed.dtype == torch.float64 else torch.float32
    B, C, D, H, W = compressed.shape
    K = kp_source.shape[1]
    G = identity_grid(D, H, W, compute, compressed.device)
    xs, xd = kp_source.to(compute), kp_driving.to(compute)
    S = sparse_motions(G, xs, xd)  # [B, K+1, D, H, W, 3]
    volume = compressed.to(compute)[:, None].expand(B, K + 1, C, D, H, W).reshape(B * (K + 1), C, D, H, W)
    deformed = F.grid_sample(volume, S.reshape(B * (K + 1), D, H, W, 3), mode="bilinear", padding_mode="zeros",
                             align_corners=False).view(B, K + 1, C, D, H, W)
    g = G[None, None]
    heat_d = torch.exp(-0.5 * ((g - xd[:, :, None, None, None, :]) ** 2).sum(-1) / KP_VARIANCE)
    heat_s = torch.exp(-0.5 * ((g - xs[:, :, None, None, None, :]) ** 2).sum(-1) / KP_VARIANCE)
    heat = torch.cat([torch.zeros_like(heat_d[:, :1]), heat_d - heat_s], dim=1)  # [B, K+1, D, H, W]
    out = torch.cat([heat[:, :, None], deformed], dim=2)  # [B, K+1, C+1, D, H, W]
    return out.reshape(B, (K + 1) * (C + 1), D, H, W).to(compressed.dtype)


def dense_motion_input(compressed: torch.Tensor, kp_source: torch.Tensor, kp_driving: torch.Tensor) -> torch.Tensor:
    """Hourglass input [B, (K+1)·(C+1), D, H, W] from the compressed volume [B, C, D, H, W] and the
    source / driving keypoints [B, K, 3] (normalised (x, y, z)); see the module docstring."""
    _check(compressed, kp_source, kp_driving)
    choose("dense_motion_input", compressed.device, unsupported="the Triton kernel is not written yet")
    return dense_motion_input_ref(compressed, kp_source, kp_driving)
