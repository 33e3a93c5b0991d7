"""Warping-stage benchmark cases: the fused ops (dense_motion_input, deform_warp) at the real LivePortrait size
(C=32 -> 4 compressed channels, 21 keypoints, volume 16x64x64) and B in {1, 8, 32}, their inputs and the
registry's builders of them (`warp_case`, `warp_tail_case`). Shared by `flashtalk bench` and
`benchmarks/bench_warp.py`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

import torch

from flashtalk.bench.cases import (
    Built,
    Setup,
    dtype_name,
    kernel_mode,
    kernel_providers,
    rotating,
    seeded,
    tensor_bytes,
)

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


def warp_inputs(op: str, B: int, size: tuple[int, int, int], dtype: torch.dtype, setup: Setup, seed: int) -> tuple:
    """Inputs of the fused warping ops at feature volume `size` (this module's layout, any device / size)."""
    g = seeded(setup, seed)
    dev = setup.device
    xs = (torch.rand(B, K, 3, device=dev, generator=g) * 2 - 1) * 0.8
    xd = xs + (torch.rand(B, K, 3, device=dev, generator=g) * 2 - 1) * 0.15
    if op == "dense_motion_input":
        return (torch.randn(B, C_COMP, *size, device=dev, generator=g).to(dtype), xs, xd)
    logits = torch.randn(B, K + 1, *size, device=dev, generator=g).to(dtype)
    return (logits, xs, xd, torch.randn(B, C_FEAT, *size, device=dev, generator=g).to(dtype))


def warp_case(case: Case) -> Callable[[Setup], Built]:
    """The registry's build of one fused op: the real volume on CUDA, a 4x16x16 one (B <= 2) on the CPU."""

    def build(setup: Setup) -> Built:
        mod = importlib.import_module(f"flashtalk.kernels.{case.op}")
        op, ref = getattr(mod, case.op), getattr(mod, f"{case.op}_ref")
        size = SIZE if setup.cuda else (4, 16, 16)
        B = case.B if setup.cuda else min(case.B, 2)
        dtype = setup.dtype or torch.float32
        sets = [warp_inputs(case.op, B, size, dtype, setup, s) for s in range(setup.rotation)]
        out = ref(*sets[0])
        out = out if torch.is_tensor(out) else out[0]
        return Built(
            kernel_providers(setup, op, ref, sets),
            f"B{B} K{K} volume {'x'.join(map(str, size))}",
            dtype_name(dtype),
            bytes=tensor_bytes(*sets[0], out),
        )

    return build


# ------------------------------------------------------------------ the fused warping tail (kernel research)

C_PRED, KS = 142, 7  # the mask convolution's input channels (hourglass output) and kernel size


def tail_flops(B: int, size: tuple[int, int, int] = SIZE, cin: int = C_PRED, ks: int = KS) -> float:
    """Useful multiply-adds of the mask convolution (K+1 output channels, not the padded 32) as FLOPs."""
    return 2.0 * B * (K + 1) * cin * ks**3 * size[0] * size[1] * size[2]


def warp_tail_case(B_gpu: int) -> Callable[[Setup], Built]:
    """`warp_tail` (one kernel) against cuDNN's Conv3d + our `deform_warp` kernel (the production path) and
    the eager modules, at LivePortrait's size on CUDA (channels-last-3d, the fast path's layout), tiny on CPU."""

    def build(setup: Setup) -> Built:
        from flashtalk.kernels.deform_warp import deform_warp
        from flashtalk.kernels.warp_tail import pack_mask_weight, warp_tail, warp_tail_ref

        cuda = setup.cuda
        size, cin, ks, B = (SIZE, C_PRED, KS, B_gpu) if cuda else ((4, 6, 6), 12, 3, 1)
        dtype = setup.dtype or (torch.bfloat16 if cuda else torch.float32)
        fmt = torch.channels_last_3d
        g = seeded(setup, 0)
        weight = (torch.randn(K + 1, cin, ks, ks, ks, device=setup.device, generator=g) / (cin * ks**3) ** 0.5).to(
            dtype
        )
        bias = torch.randn(K + 1, device=setup.device, generator=g).to(dtype)
        packed = pack_mask_weight(weight)
        sets = []
        for seed in range(setup.rotation):
            _, xs, xd, feature = warp_inputs("deform_warp", B, size, dtype, setup, seed)
            pred = torch.randn(B, cin, *size, device=setup.device, generator=seeded(setup, 100 + seed)).to(dtype)
            sets.append(
                (pred.contiguous(memory_format=fmt), weight, bias, xs, xd, feature.contiguous(memory_format=fmt))
            )

        def fused(pred, w, b, xs, xd, feat):
            return warp_tail(pred, w, b, xs, xd, feat, packed=packed)

        def unfused(pred, w, b, xs, xd, feat):  # the fast path today: cuDNN Conv3d, then the deform_warp kernel
            logits = torch.nn.functional.conv3d(pred, w, b, padding=ks // 2)
            return deform_warp(logits, xs, xd, feat)[0]

        provs = kernel_providers(setup, fused, warp_tail_ref, sets)
        provs["cudnn+deform_warp"] = rotating(sets, kernel_mode("auto", unfused))
        out_bytes = B * C_FEAT * size[0] * size[1] * size[2] * sets[0][0].element_size()
        return Built(
            provs,
            f"B{B} {cin}->{K + 1} {ks}³ volume {'x'.join(map(str, size))} channels-last-3d",
            dtype_name(dtype),
            flops=tail_flops(B, size, cin, ks),
            bytes=tensor_bytes(sets[0][0], sets[0][5]) + out_bytes,
            note="off by default (FLASHTALK_WARP_TAIL=fused) until a GPU run shows it faster",
        )

    return build
