"""Stitching and eye / lip retargeting MLPs of the LivePortrait renderer (docs/specs/liveportrait.md §8), and the pipeline
helpers that apply them to keypoints.

`StitchingRetargeting` holds the three MLPs under the checkpoint's sub-dict names, so its state-dict keys
are `retarget_shoulder.mlp.0.weight`, `retarget_mouth.…`, `retarget_eye.…` (the published file's keys
after the DDP `module.` prefix is stripped).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from flashtalk.errors import FlashTalkError


@dataclass(frozen=True)
class MLPConfig:
    input_size: int
    hidden_sizes: tuple[int, ...]
    output_size: int


@dataclass(frozen=True)
class StitchingConfig:
    num_kp: int = 21
    stitching: MLPConfig = field(default_factory=lambda: MLPConfig(126, (128, 128, 64), 65))
    lip: MLPConfig = field(default_factory=lambda: MLPConfig(65, (128, 128, 64), 63))
    eye: MLPConfig = field(default_factory=lambda: MLPConfig(66, (256, 256, 128, 128, 64), 63))

    @classmethod
    def tiny(cls) -> "StitchingConfig":
        """Same input/output sizes (they are fixed by K = 21), narrower hidden layers."""
        return cls(
            stitching=MLPConfig(126, (16, 8), 65), lip=MLPConfig(65, (16, 8), 63), eye=MLPConfig(66, (16, 8), 63)
        )


class MLP(nn.Module):
    """Linear → ReLU → … → Linear; keys `mlp.{0,2,4,…}` (the ReLUs take the odd indices)."""

    def __init__(self, cfg: MLPConfig):
        super().__init__()
        sizes = (cfg.input_size, *cfg.hidden_sizes, cfg.output_size)
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers.append(nn.Linear(a, b))
            if i < len(sizes) - 2:
                layers.append(nn.ReLU())
        self.mlp = nn.Sequential(*layers)
        self.input_size = cfg.input_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 2 or x.shape[1] != self.input_size:
            raise FlashTalkError(f"MLP input must be [B, {self.input_size}], got {tuple(x.shape)}")
        return self.mlp(x)


class StitchingRetargeting(nn.Module):
    """S (`retarget_shoulder`), R_lip (`retarget_mouth`) and R_eyes (`retarget_eye`)."""

    def __init__(self, cfg: StitchingConfig | None = None):
        super().__init__()
        cfg = cfg or StitchingConfig()
        self.num_kp = cfg.num_kp
        self.retarget_shoulder = MLP(cfg.stitching)
        self.retarget_mouth = MLP(cfg.lip)
        self.retarget_eye = MLP(cfg.eye)

    def stitch_delta(self, x_s: torch.Tensor, x_d: torch.Tensor) -> torch.Tensor:
        """Raw stitching output Δ [B, 65] from concat(x_s, x_d) flattened row-major."""
        _check_kp("x_s", x_s, self.num_kp)
        _check_kp("x_d", x_d, self.num_kp)
        x_s = x_s.expand(x_d.shape[0], -1, -1)
        return self.retarget_shoulder(torch.cat([x_s.reshape(x_d.shape[0], -1), x_d.reshape(x_d.shape[0], -1)], 1))

    def stitch(self, x_s: torch.Tensor, x_d: torch.Tensor) -> torch.Tensor:
        """x_d + Δ[:, :63] as [B, 21, 3], plus the shared (tx, ty) = Δ[:, 63:65] on x and y of every point.
        x_s may be [1, 21, 3] (one source for B driving frames)."""
        delta = self.stitch_delta(x_s, x_d)
        k3 = 3 * self.num_kp
        out = x_d + delta[:, :k3].reshape(-1, self.num_kp, 3)
        shift = torch.cat([delta[:, k3 : k3 + 2], torch.zeros_like(delta[:, :1])], dim=1)
        return out + shift[:, None, :]

    def retarget_eye_delta(self, x_s: torch.Tensor, eye_ratio: torch.Tensor) -> torch.Tensor:
        """Δ_eye [B, 21, 3] from x_s and [c_s_eyeL, c_s_eyeR, c_d_eye] [B, 3]."""
        return self._retarget(self.retarget_eye, x_s, eye_ratio, 3, "eye_ratio")

    def retarget_lip_delta(self, x_s: torch.Tensor, lip_ratio: torch.Tensor) -> torch.Tensor:
        """Δ_lip [B, 21, 3] from x_s and [c_s_lip, c_d_lip] [B, 2]."""
        return self._retarget(self.retarget_mouth, x_s, lip_ratio, 2, "lip_ratio")

    def _retarget(self, mlp: MLP, x_s: torch.Tensor, ratio: torch.Tensor, width: int, name: str) -> torch.Tensor:
        _check_kp("x_s", x_s, self.num_kp)
        if ratio.ndim != 2 or ratio.shape[1] != width:
            raise FlashTalkError(f"{name} must be [B, {width}], got {tuple(ratio.shape)}")
        b = ratio.shape[0]
        feat = torch.cat([x_s.expand(b, -1, -1).reshape(b, -1), ratio.to(x_s.dtype)], dim=1)
        return mlp(feat).reshape(b, self.num_kp, 3)


def _check_kp(name: str, x: torch.Tensor, num_kp: int) -> None:
    if x.ndim != 3 or x.shape[1:] != (num_kp, 3):
        raise FlashTalkError(f"{name} must be [B, {num_kp}, 3] keypoints, got {tuple(x.shape)}")
