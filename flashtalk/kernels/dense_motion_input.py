"""Dense-motion input: the 110-channel hourglass input of LivePortrait's dense motion network, built
from the keypoints and the compressed 4-channel volume (spec liveportrait §6.1 steps 2-5).

For keypoints k = 0..K-1 and the identity grid G (corner-aligned, last axis (x, y, z), §6.2):
sparse motions S_0 = G, S_{k+1} = G - x_d[k] + x_s[k]; deformed features D_k = grid_sample(c, S_k)
(trilinear, align_corners=False, zeros padding, §9); heatmaps H_0 = 0,
H_{k+1} = exp(-0.5 |G - x_d[k]|² / 0.01) - exp(-0.5 |G - x_s[k]|² / 0.01).
Output channel k·(C+1) + j: j = 0 the heatmap H_k, j = 1..C the C sampled channels of D_k.

The Triton kernel writes the output directly: one program per (batch, tile of voxels) computes G, the
K+1 motions and heatmaps in registers and gathers c's 8 trilinear corners per motion (c stays in cache),
so no [B, K+1, ...] intermediate exists. fp64 inputs run the reference (the kernel computes in fp32).

The reference materialises S and the (K+1)-fold repeated volume, as the original does; the reference
computes coordinates in fp32 (fp64 for fp64 inputs) and samples in fp32, like the original under
autocast. The output has c's dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from flashtalk.errors import FlashTalkError
from flashtalk.kernels.contract import OpContract, dispatched
from flashtalk.kernels.dispatch import choose
from flashtalk.kernels.triton_compat import _jit, block_size, grid_corners, tl, to_element, triton

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


# --------------------------------------------------------------------------------------------- Triton


@_jit
def grid_axis(i, n):
    """Corner-aligned identity coordinate 2·(i / (n - 1)) - 1 of integer index `i` on an axis of size n."""
    return 2.0 * (i.to(tl.float32) / tl.maximum(n - 1, 1).to(tl.float32)) - 1.0


@_jit
def trilinear_corners(gx, gy, gz, D, H, W, s_d, s_h, s_w):
    """The 8 corners of the trilinear sample at (gx, gy, gz): int64 offsets o_zyx (from the strides of the
    sampled volume) and weights w_zyx (0 for corners outside the volume)."""
    x0, x1, wx0, wx1 = grid_corners(gx, W, False)
    y0, y1, wy0, wy1 = grid_corners(gy, H, False)
    z0, z1, wz0, wz1 = grid_corners(gz, D, False)
    ox0 = x0.to(tl.int64) * s_w
    ox1 = x1.to(tl.int64) * s_w
    oy0 = y0.to(tl.int64) * s_h
    oy1 = y1.to(tl.int64) * s_h
    oz0 = z0.to(tl.int64) * s_d
    oz1 = z1.to(tl.int64) * s_d
    return (oz0 + oy0 + ox0, oz0 + oy0 + ox1, oz0 + oy1 + ox0, oz0 + oy1 + ox1,
            oz1 + oy0 + ox0, oz1 + oy0 + ox1, oz1 + oy1 + ox0, oz1 + oy1 + ox1,
            wz0 * wy0 * wx0, wz0 * wy0 * wx1, wz0 * wy1 * wx0, wz0 * wy1 * wx1,
            wz1 * wy0 * wx0, wz1 * wy0 * wx1, wz1 * wy1 * wx0, wz1 * wy1 * wx1)


@_jit
def trilinear_gather(p, m, o000, o001, o010, o011, o100, o101, o110, o111,
                     w000, w001, w010, w011, w100, w101, w110, w111):
    """Σ over the 8 corners of weight · value at pointer p + offset (fp32); a zero weight skips the load."""
    acc = w000 * tl.load(p + o000, mask=m & (w000 != 0.0), other=0.0).to(tl.float32)
    acc += w001 * tl.load(p + o001, mask=m & (w001 != 0.0), other=0.0).to(tl.float32)
    acc += w010 * tl.load(p + o010, mask=m & (w010 != 0.0), other=0.0).to(tl.float32)
    acc += w011 * tl.load(p + o011, mask=m & (w011 != 0.0), other=0.0).to(tl.float32)
    acc += w100 * tl.load(p + o100, mask=m & (w100 != 0.0), other=0.0).to(tl.float32)
    acc += w101 * tl.load(p + o101, mask=m & (w101 != 0.0), other=0.0).to(tl.float32)
    acc += w110 * tl.load(p + o110, mask=m & (w110 != 0.0), other=0.0).to(tl.float32)
    acc += w111 * tl.load(p + o111, mask=m & (w111 != 0.0), other=0.0).to(tl.float32)
    return acc


@_jit
def _motion_channels(p_c, p_o, m_v, gx, gy, gz, heat, C, D, H, W,
                     s_cc, s_cd, s_ch, s_cw, s_oc):
    """Write the heatmap and the C trilinear samples of c at (gx, gy, gz) to channels 0..C from p_o."""
    o000, o001, o010, o011, o100, o101, o110, o111, w000, w001, w010, w011, w100, w101, w110, w111 = \
        trilinear_corners(gx, gy, gz, D, H, W, s_cd, s_ch, s_cw)
    tl.store(p_o, to_element(heat, p_o), mask=m_v)
    for i_c in range(C):
        b_v = trilinear_gather(p_c + i_c * s_cc, m_v, o000, o001, o010, o011, o100, o101, o110, o111,
                               w000, w001, w010, w011, w100, w101, w110, w111)  # [BV]
        p_oc = p_o + (i_c + 1) * s_oc
        tl.store(p_oc, to_element(b_v, p_oc), mask=m_v)


@_jit
def _dense_motion_input_kernel(
    c_ptr, ks_ptr, kd_ptr, out_ptr,
    K, C, D, H, W, inv_var,
    s_cb, s_cc, s_cd, s_ch, s_cw,
    s_ksb, s_ksk, s_ksx,
    s_kdb, s_kdk, s_kdx,
    s_ob, s_oc, s_od, s_oh, s_ow,
    BV: tl.constexpr,
):
    i_v = tl.program_id(0)
    i_b = tl.program_id(1).to(tl.int64)
    o_v = i_v * BV + tl.arange(0, BV)  # [BV] flat voxel index over D·H·W
    m_v = o_v < D * H * W
    i_w = o_v % W
    i_h = (o_v // W) % H
    i_d = o_v // (W * H)
    gx = grid_axis(i_w, W)
    gy = grid_axis(i_h, H)
    gz = grid_axis(i_d, D)
    p_c = c_ptr + i_b * s_cb
    p_o = out_ptr + i_b * s_ob + i_d.to(tl.int64) * s_od + i_h.to(tl.int64) * s_oh + i_w.to(tl.int64) * s_ow
    # background: identity motion, zero heatmap
    _motion_channels(p_c, p_o, m_v, gx, gy, gz, tl.zeros([BV], dtype=tl.float32), C, D, H, W,
                     s_cc, s_cd, s_ch, s_cw, s_oc)
    for i_k in range(K):
        p_s = ks_ptr + i_b * s_ksb + i_k * s_ksk
        p_d = kd_ptr + i_b * s_kdb + i_k * s_kdk
        xs = tl.load(p_s).to(tl.float32)
        ys = tl.load(p_s + s_ksx).to(tl.float32)
        zs = tl.load(p_s + 2 * s_ksx).to(tl.float32)
        xd = tl.load(p_d).to(tl.float32)
        yd = tl.load(p_d + s_kdx).to(tl.float32)
        zd = tl.load(p_d + 2 * s_kdx).to(tl.float32)
        dx = gx - xd
        dy = gy - yd
        dz = gz - zd
        ex = gx - xs
        ey = gy - ys
        ez = gz - zs
        heat = tl.exp(-0.5 * (dx * dx + dy * dy + dz * dz) * inv_var) - tl.exp(-0.5 * (ex * ex + ey * ey + ez * ez) * inv_var)
        _motion_channels(p_c, p_o + (i_k + 1) * (C + 1) * s_oc, m_v, dx + xs, dy + ys, dz + zs, heat, C, D, H, W,
                         s_cc, s_cd, s_ch, s_cw, s_oc)


def _launch(compressed: torch.Tensor, kp_source: torch.Tensor, kp_driving: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Run the kernel into `out` [B, (K+1)·(C+1), D, H, W] (any strides)."""
    B, C, D, H, W = compressed.shape
    K = kp_source.shape[1]
    BV = block_size(D * H * W)
    grid = (triton.cdiv(D * H * W, BV), B)
    _dense_motion_input_kernel[grid](
        compressed, kp_source, kp_driving, out,
        K, C, D, H, W, 1.0 / KP_VARIANCE,
        *compressed.stride(), *kp_source.stride(), *kp_driving.stride(), *out.stride(),
        BV=BV, num_warps=4,
    )
    return out


def volume_format(x: torch.Tensor) -> torch.memory_format:
    """channels_last_3d if the 5-D `x` is stored so (and not also plain contiguous), else contiguous: the
    kernels write their outputs in their input's layout, so a channels-last-3d network stays so."""
    cl = x.dim() == 5 and x.is_contiguous(memory_format=torch.channels_last_3d) and not x.is_contiguous()
    return torch.channels_last_3d if cl else torch.contiguous_format


def _output(compressed: torch.Tensor, kp_source: torch.Tensor) -> torch.Tensor:
    B, C, D, H, W = compressed.shape
    return torch.empty((B, (kp_source.shape[1] + 1) * (C + 1), D, H, W), dtype=compressed.dtype,
                       device=compressed.device, memory_format=volume_format(compressed))


@torch.library.custom_op("flashtalk::dense_motion_input", mutates_args=())
def _dense_motion_input_op(compressed: torch.Tensor, kp_source: torch.Tensor, kp_driving: torch.Tensor) -> torch.Tensor:
    return _launch(compressed, kp_source, kp_driving, _output(compressed, kp_source))


@_dense_motion_input_op.register_fake
def _(compressed: torch.Tensor, kp_source: torch.Tensor, kp_driving: torch.Tensor) -> torch.Tensor:
    return _output(compressed, kp_source)


def _unsupported(*tensors: torch.Tensor) -> str | None:
    if any(t.dtype == torch.float64 for t in tensors):
        return "float64 inputs (the kernel computes in fp32; the reference keeps fp64)"
    return None


CONTRACT = OpContract(
    op="dense_motion_input",
    signature="compressed, kp_source, kp_driving",
    accepts=(
        "compressed [B, C, D, H, W] fp32, fp16, bf16 (fp64: the reference runs), any strides, odd sizes down "
        "to 1x1x1",
        "kp_source, kp_driving [B, K, 3], any float dtype and strides; motions that leave the volume",
    ),
    returns="[B, (K+1)·(C+1), D, H, W] in compressed's dtype: per motion k the heatmap, then the C sampled channels",
    may_refuse="our kernel refuses fp64 inputs (the reference runs)",
    check=lambda compressed, kp_source, kp_driving: _check(compressed, kp_source, kp_driving),
    outputs=lambda compressed, kp_source, kp_driving: [
        ((compressed.shape[0], (kp_source.shape[1] + 1) * (compressed.shape[1] + 1), *compressed.shape[2:]),
         compressed.dtype)
    ],
    reference=dense_motion_input_ref,
)


@dispatched(CONTRACT)
def dense_motion_input(compressed: torch.Tensor, kp_source: torch.Tensor, kp_driving: torch.Tensor) -> torch.Tensor:
    """Hourglass input [B, (K+1)·(C+1), D, H, W] from the compressed volume [B, C, D, H, W] and the
    source / driving keypoints [B, K, 3] (normalised (x, y, z)); see the module docstring."""
    _check(compressed, kp_source, kp_driving)
    if choose("dense_motion_input", compressed.device, _unsupported(compressed, kp_source, kp_driving)).use_triton:
        return _dense_motion_input_op(compressed, kp_source, kp_driving)
    return dense_motion_input_ref(compressed, kp_source, kp_driving)


def compile_variants():
    """The launches `flashtalk kernels check` compiles: the warping network's call at the real volume
    (C=4 compressed channels, 21 keypoints, 16x64x64), batch 1 and 32, in each precision."""
    from flashtalk.kernels.check import Variant, meta

    def call(B: int, dtype: torch.dtype):
        c, xs, xd = meta(B, 4, 16, 64, 64, dtype=dtype), meta(B, 21, 3), meta(B, 21, 3)
        return lambda: _launch(c, xs, xd, meta(B, 22 * 5, 16, 64, 64, dtype=dtype))

    return [Variant(f"warping dense-motion input B{B} volume 16x64x64 {name}", call(B, dtype))
            for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16), ("fp16", torch.float16))
            for B in (1, 32)]
