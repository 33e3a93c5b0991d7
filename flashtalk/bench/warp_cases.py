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
