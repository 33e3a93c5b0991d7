"""Warping-stage benchmark cases: the fused ops (dense_motion_input, deform_warp) at the real LivePortrait size
(C=32 -> 4 compressed channels, 21 keypoints, volume 16x64x64) and B in {1, 8, 32}. Shared by `flashtalk bench`
and `benchmarks/bench_warp.py`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


K, C_FEAT, C_COMP, SIZE = 21, 32, 4, (16, 64, 64)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Case:
    op: str  # dense_motion_input | deform_warp
    B: int

    @property
    def name(self) -> str:
        return f"{self.op}-B{self.B}"

    def bytes(self, elem: int) -> float:
        vox = self.B * SIZE[0] * SIZE[1] * SIZE[2]
        if self.op == "dense_motion_input":
            return vox * elem * (C_COMP + (K + 1) * (C_COMP + 1))
        return vox * elem * ((K + 1) + 2 * C_FEAT)  # logits + feature read, warped written


CASES = [Case(op, B) for op in ("dense_motion_input", "deform_warp") for B in (1, 8, 32)]


# ------------------------------------------------------------------ the fused warping tail (kernel research)

C_PRED, KS = 142, 7  # the mask convolution's input channels (hourglass output) and kernel size


def tail_flops(B: int, size: tuple[int, int, int] = SIZE, cin: int = C_PRED, ks: int = KS) -> float:
    """Useful multiply-adds of the mask convolution (K+1 output channels, not the padded 32) as FLOPs."""
    return 2.0 * B * (K + 1) * cin * ks ** 3 * size[0] * size[1] * size[2]


def warp_tail_case(B_gpu: int):
    """`warp_tail` (one kernel) against cuDNN's Conv3d + our `deform_warp` kernel (the production path) and
    the eager modules, at LivePortrait's size on CUDA (channels-last-3d, the fast path's layout), tiny on CPU."""
    def build(setup):
        from flashtalk.bench import registry as R
        from flashtalk.kernels.deform_warp import deform_warp
        from flashtalk.kernels.warp_tail import pack_mask_weight, warp_tail, warp_tail_ref

        cuda = setup.cuda
        size, cin, ks, B = (SIZE, C_PRED, KS, B_gpu) if cuda else ((4, 6, 6), 12, 3, 1)
        dtype = setup.dtype or (torch.bfloat16 if cuda else torch.float32)
        fmt = torch.channels_last_3d
        g = R._gen(setup, 0)
        weight = (torch.randn(K + 1, cin, ks, ks, ks, device=setup.device, generator=g) / (cin * ks ** 3) ** 0.5).to(dtype)
        bias = torch.randn(K + 1, device=setup.device, generator=g).to(dtype)
        packed = pack_mask_weight(weight)
        sets = []
        for seed in range(setup.rotation):
            _, xs, xd, feature = R.warp_inputs("deform_warp", B, size, dtype, setup, seed)
            pred = torch.randn(B, cin, *size, device=setup.device, generator=R._gen(setup, 100 + seed)).to(dtype)
            sets.append((pred.contiguous(memory_format=fmt), weight, bias, xs, xd, feature.contiguous(memory_format=fmt)))

        def fused(pred, w, b, xs, xd, feat):
            return warp_tail(pred, w, b, xs, xd, feat, packed=packed)

        def unfused(pred, w, b, xs, xd, feat):  # the fast path today: cuDNN Conv3d, then the deform_warp kernel
            logits = torch.nn.functional.conv3d(pred, w, b, padding=ks // 2)
            return deform_warp(logits, xs, xd, feat)[0]

        provs = R.kernel_providers(setup, fused, warp_tail_ref, sets)
        provs["cudnn+deform_warp"] = R._rotating(sets, R._kernel_mode("auto", unfused))
        out_bytes = B * C_FEAT * size[0] * size[1] * size[2] * sets[0][0].element_size()
        return R.Built(provs, f"B{B} {cin}->{K + 1} {ks}³ volume {'x'.join(map(str, size))} channels-last-3d",
                       R._dtype_name(dtype), flops=tail_flops(B, size, cin, ks),
                       bytes=R.tensor_bytes(sets[0][0], sets[0][5]) + out_bytes,
                       note="off by default (FLASHTALK_WARP_TAIL=fused) until a GPU run shows it faster")
    return build
