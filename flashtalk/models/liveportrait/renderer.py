"""The LivePortrait renderer: appearance extractor F, motion extractor M, warping module W, SPADE decoder G
and the stitching/retargeting MLPs, with the API the runtime uses.

    source = renderer.encode_source(image)              # once per portrait: f_s, x_c, pose, exp, x_s
    x_d = renderer.driving_keypoints(source, pitch=…, yaw=…, roll=…, exp=…, scale=…, t=…)  # per frame
    frames = renderer.render(source, x_d)               # [N, 3, 512, 512] in [0, 1]

Submodule names are the network names of the weights bundle, so `Renderer.state_dict()` keys are exactly
the bundle's `{network}.{key}` tensors. All kernel use goes through `flashtalk.kernels` ops inside the
networks (`use_kernels` semantics apply unchanged).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from flashtalk.constants import PRESETS
from flashtalk.errors import FlashTalkError
from flashtalk.models.liveportrait import keypoints as kpm
from flashtalk.models.liveportrait.appearance import AppearanceConfig, AppearanceFeatureExtractor
from flashtalk.models.liveportrait.motion_extractor import MotionExtractor, MotionExtractorConfig, check_image
from flashtalk.models.liveportrait.spade import SPADEConfig, SPADEDecoder
from flashtalk.models.liveportrait.stitching import StitchingConfig, StitchingRetargeting
from flashtalk.models.liveportrait.warping import WarpingConfig, WarpingNetwork


@dataclass(frozen=True)
class RendererConfig:
    appearance: AppearanceConfig = field(default_factory=AppearanceConfig)
    motion: MotionExtractorConfig = field(default_factory=MotionExtractorConfig)
    warping: WarpingConfig = field(default_factory=WarpingConfig)
    spade: SPADEConfig = field(default_factory=SPADEConfig)
    stitching: StitchingConfig = field(default_factory=StitchingConfig)

    @classmethod
    def from_name(cls, name: str) -> "RendererConfig":
        """Presets: "liveportrait" (the official configuration) and "tiny" (same code, few channels)."""
        if name == "liveportrait":
            return cls()
        if name == "tiny":
            return cls(
                AppearanceConfig.tiny(),
                MotionExtractorConfig.tiny(),
                WarpingConfig.tiny(),
                SPADEConfig.tiny(),
                StitchingConfig.tiny(),
            )
        raise FlashTalkError(f"unknown renderer preset {name!r} (known: {', '.join(PRESETS)})")


# the renderer's networks, by the names of LivePortrait's published files (and of the weights bundle)
NETWORK_NAMES = (
    "appearance_feature_extractor",
    "motion_extractor",
    "warping_module",
    "spade_generator",
    "stitching_retargeting_module",
)


def build_network(network: str, preset: str | RendererConfig = "liveportrait") -> nn.Module:
    """One network of the renderer by its bundle name, with freshly initialised weights, in eval mode."""
    cfg = RendererConfig.from_name(preset) if isinstance(preset, str) else preset
    builders = {
        "appearance_feature_extractor": lambda: AppearanceFeatureExtractor(cfg.appearance),
        "motion_extractor": lambda: MotionExtractor(cfg.motion),
        "warping_module": lambda: WarpingNetwork(cfg.warping),
        "spade_generator": lambda: SPADEDecoder(cfg.spade),
        "stitching_retargeting_module": lambda: StitchingRetargeting(cfg.stitching),
    }
    if network not in builders:
        raise FlashTalkError(f"unknown LivePortrait network {network!r} (known: {', '.join(builders)})")
    return builders[network]().eval()


@dataclass
class SourceState:
    """Everything the renderer keeps per source portrait (batch B, usually 1)."""

    f_s: torch.Tensor  # appearance volume [B, 32, 16, 64, 64]
    x_c: torch.Tensor  # canonical keypoints [B, 21, 3]
    pitch: torch.Tensor  # degrees [B, 1]
    yaw: torch.Tensor
    roll: torch.Tensor
    R: torch.Tensor  # [B, 3, 3], transposed convention (x @ R)
    exp: torch.Tensor  # [B, 21, 3]
    scale: torch.Tensor  # [B, 1]
    t: torch.Tensor  # [B, 3]
    x_s: torch.Tensor  # source keypoints s·(x_c @ R + exp) + t [B, 21, 3]
    ratios: Any = None  # the face's measured eye / lip ratios (LivePortrait landmarks), None when not measured


class Renderer(nn.Module):
    def __init__(self, cfg: RendererConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or RendererConfig()
        for name in NETWORK_NAMES:
            self.add_module(name, build_network(name, cfg))
        self.eval()

    @property
    def num_kp(self) -> int:
        return self.cfg.motion.num_kp

    @torch.no_grad()
    def encode_source(self, image: torch.Tensor) -> SourceState:
        """RGB crop [B, 3, 256, 256] in [0, 1] -> SourceState (runs M and F once)."""
        check_image(image, 3, self.cfg.motion.image_size, "renderer.encode_source")
        lo, hi = torch.aminmax(image)
        if not (math.isfinite(lo.item()) and math.isfinite(hi.item())) or lo.item() < 0 or hi.item() > 1:
            raise FlashTalkError(
                f"renderer.encode_source: image values must lie in [0, 1] (RGB / 255), got "
                f"[{lo.item():.4g}, {hi.item():.4g}]"
            )
        weight = next(self.motion_extractor.parameters())
        image = image.to(weight.device, weight.dtype)
        m = self.motion_extractor(image)
        pitch, yaw, roll = (kpm.bins_to_degrees(m[k]) for k in ("pitch", "yaw", "roll"))
        R = kpm.rotation_from_degrees(pitch, yaw, roll)
        b = image.shape[0]
        x_c, exp = m["kp"].view(b, -1, 3), m["exp"].view(b, -1, 3)
        x_s = kpm.transform_keypoints(x_c, R, exp, m["scale"], m["t"])
        f_s = self.appearance_feature_extractor(image)
        return SourceState(
            f_s=f_s, x_c=x_c, pitch=pitch, yaw=yaw, roll=roll, R=R, exp=exp, scale=m["scale"], t=m["t"], x_s=x_s
        )

    def driving_keypoints(
        self,
        source: SourceState,
        *,
        exp: torch.Tensor,
        scale: torch.Tensor,
        t: torch.Tensor,
        pitch: torch.Tensor | None = None,
        yaw: torch.Tensor | None = None,
        roll: torch.Tensor | None = None,
        R: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Per-frame motion of N frames -> x_d = s·(x_c @ R + exp) + [t_x, t_y, 0], [N, 21, 3].

        Pose is either `R` [N, 3, 3] (transposed convention) or pitch/yaw/roll in degrees ([N] or [N, 1]);
        exp [N, 21, 3] or [N, 63], scale [N, 1], t [N, 3]."""
        if R is None:
            if pitch is None or yaw is None or roll is None:
                raise FlashTalkError("driving_keypoints: give either R or all of pitch, yaw, roll (degrees)")
            R = kpm.rotation_from_degrees(pitch, yaw, roll)
        n = R.shape[0]
        if source.x_c.shape[0] != 1:
            raise FlashTalkError(f"driving_keypoints: expected one source, got a batch of {source.x_c.shape[0]}")
        if tuple(scale.shape) != (n, 1) or tuple(t.shape) != (n, 3):
            raise FlashTalkError(
                f"driving_keypoints: for {n} frames scale must be [{n}, 1] and t [{n}, 3], "
                f"got {tuple(scale.shape)} and {tuple(t.shape)}"
            )
        return kpm.transform_keypoints(source.x_c.expand(n, -1, -1), R, exp, scale, t)

    @torch.no_grad()
    def render(self, source: SourceState, x_d: torch.Tensor, stitching: bool = True) -> torch.Tensor:
        """Frames of one source: x_d [N, 21, 3] -> RGB [N, 3, 8·h, 8·w] in [0, 1] ([N, 3, 512, 512] official).

        f_s and x_s are broadcast over the N frames as views (no copy); stitching corrects x_d first."""
        if not torch.is_tensor(x_d) or x_d.ndim != 3 or tuple(x_d.shape[1:]) != (self.num_kp, 3) or x_d.shape[0] == 0:
            shape = tuple(x_d.shape) if torch.is_tensor(x_d) else type(x_d).__name__
            raise FlashTalkError(f"render: x_d must be driving keypoints [N, {self.num_kp}, 3], got {shape}")
        if source.f_s.shape[0] != 1:
            raise FlashTalkError(f"render: expected one source (batch 1), got a batch of {source.f_s.shape[0]}")
        n = x_d.shape[0]
        x_d = x_d.to(source.x_s.device, source.x_s.dtype)
        x_s = source.x_s.expand(n, -1, -1)
        if stitching:
            x_d = self.stitching_retargeting_module.stitch(x_s, x_d)
        f_s = source.f_s.expand(n, -1, -1, -1, -1)
        feature = self.warping_module(f_s, kp_driving=x_d, kp_source=x_s, return_deformation=False)["out"]
        return self.spade_generator(feature)
