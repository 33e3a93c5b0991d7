"""LivePortrait appearance feature extractor F: RGB crop in [0,1] → 3-D appearance volume f_s
(docs/specs/liveportrait.md §3). Computed once per source portrait.

    image [B,3,256,256] → first (conv3 BN ReLU) → down_blocks (conv3 BN ReLU avgpool2) ×2
      → second (conv 1×1 to reshape_channel·reshape_depth) → view [B,32,16,64,64] (channel c·16+d → (c,d))
      → resblocks_3d.3dr0..5 → f_s
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from flashtalk.errors import FlashTalkError
from flashtalk.models.layers import Conv2d, ConvNormAct2d, DownBlock2d, ResBlock3d


@dataclass(frozen=True)
class AppearanceConfig:
    """Field names and defaults as `appearance_feature_extractor` in LivePortrait's models.yaml."""

    image_channel: int = 3
    block_expansion: int = 64
    num_down_blocks: int = 2
    max_features: int = 512
    reshape_channel: int = 32
    reshape_depth: int = 16
    num_resblocks: int = 6

    def __post_init__(self) -> None:
        if self.reshape_channel * self.reshape_depth != self.max_features:
            raise FlashTalkError(
                f"AppearanceConfig: reshape_channel·reshape_depth = {self.reshape_channel}·{self.reshape_depth} "
                f"must equal max_features = {self.max_features}"
            )

    @classmethod
    def tiny(cls) -> "AppearanceConfig":
        """Same architecture with few channels, for fast end-to-end tests (f_s [B,4,8,H/4,W/4])."""
        return cls(block_expansion=4, max_features=32, reshape_channel=4, reshape_depth=8, num_resblocks=2)

    def width(self, level: int) -> int:
        """Channels at resolution level `level` (0: full resolution, after `first`)."""
        return min(self.max_features, self.block_expansion * 2**level)


class AppearanceFeatureExtractor(nn.Module):
    """forward(image [B,3,H,W] RGB in [0,1], H and W divisible by 2**num_down_blocks)
    → f_s [B, reshape_channel, reshape_depth, H/4, W/4]. Built in eval mode (BatchNorm running stats)."""

    def __init__(self, cfg: AppearanceConfig | None = None):
        super().__init__()
        cfg = cfg or AppearanceConfig()
        self.cfg = cfg
        self.first = ConvNormAct2d(cfg.image_channel, cfg.block_expansion, 3, padding=1)
        self.down_blocks = nn.ModuleList(
            DownBlock2d(cfg.width(i), cfg.width(i + 1)) for i in range(cfg.num_down_blocks)
        )
        self.second = Conv2d(cfg.width(cfg.num_down_blocks), cfg.max_features, 1)
        self.resblocks_3d = nn.Sequential()
        for i in range(cfg.num_resblocks):
            self.resblocks_3d.add_module(f"3dr{i}", ResBlock3d(cfg.reshape_channel))
        self.eval()

    def check_input(self, image: torch.Tensor) -> None:
        """Raise FlashTalkError naming what is wrong with `image` (shape, dtype, value range)."""
        cfg, factor = self.cfg, 2**self.cfg.num_down_blocks
        if not isinstance(image, torch.Tensor):
            raise FlashTalkError(f"appearance extractor: image must be a torch.Tensor, got {type(image).__name__}")
        if image.dim() != 4 or image.shape[1] != cfg.image_channel:
            raise FlashTalkError(
                f"appearance extractor: image must have shape [B, {cfg.image_channel}, H, W] (RGB, NCHW), "
                f"got {tuple(image.shape)}"
            )
        if (
            image.shape[0] == 0
            or image.shape[2] % factor
            or image.shape[3] % factor
            or image.shape[2] == 0
            or image.shape[3] == 0
        ):
            raise FlashTalkError(
                f"appearance extractor: image batch must be non-empty and H, W positive multiples of {factor} "
                f"(256×256 for the released weights), got {tuple(image.shape)}"
            )
        if not image.is_floating_point():
            raise FlashTalkError(
                f"appearance extractor: image must be a floating tensor with values in [0, 1], got {image.dtype}"
            )
        if image.device != self.second.weight.device:
            raise FlashTalkError(
                f"appearance extractor: image is on {image.device} but the network is on {self.second.weight.device}"
            )
        if not torch.compiler.is_compiling():
            lo, hi = torch.aminmax(image)
            lo, hi = float(lo), float(hi)
            if not (lo >= 0.0 and hi <= 1.0):  # also catches NaN
                raise FlashTalkError(
                    f"appearance extractor: image values must be in [0, 1] (RGB, no mean/std normalisation), "
                    f"got min {lo:.4g}, max {hi:.4g}"
                )

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        self.check_input(image)
        out = self.first(image)
        for block in self.down_blocks:
            out = block(out)
        out = self.second(out)
        b, _, h, w = out.shape
        f_s = out.view(b, self.cfg.reshape_channel, self.cfg.reshape_depth, h, w)  # channel c·D + d → (c, d)
        return self.resblocks_3d(f_s)
