"""Motion extractor M of the LivePortrait renderer (docs/specs/liveportrait.md §4): a ConvNeXt-V2 backbone and seven linear
heads. Input RGB in [0, 1], no mean/std normalisation. Keys live under `detector.` as in the checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from flashtalk.errors import FlashTalkError

LN_EPS = 1e-6


@dataclass(frozen=True)
class MotionExtractorConfig:
    in_channels: int = 3
    depths: tuple[int, ...] = (3, 3, 9, 3)
    dims: tuple[int, ...] = (96, 192, 384, 768)
    num_kp: int = 21
    num_bins: int = 66
    image_size: int = 256

    @classmethod
    def tiny(cls) -> "MotionExtractorConfig":
        return cls(depths=(1, 1, 2, 1), dims=(8, 16, 24, 32))


class ChannelsFirstLayerNorm(nn.Module):
    """LayerNorm over the channel axis of [B, C, H, W] at every pixel (biased variance, eps 1e-6)."""

    def __init__(self, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=1, keepdim=True)
        var = (x - mean).pow(2).mean(dim=1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + LN_EPS)
        return x * self.weight[:, None, None] + self.bias[:, None, None]


class GRN(nn.Module):
    """Global response normalisation on channels-last [B, H, W, C]."""

    def __init__(self, channels: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1, 1, 1, channels))
        self.beta = nn.Parameter(torch.zeros(1, 1, 1, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = torch.linalg.vector_norm(x, dim=(1, 2), keepdim=True)  # [B, 1, 1, C]
        n = g / (g.mean(dim=-1, keepdim=True) + 1e-6)
        return self.gamma * (x * n) + self.beta + x


class ConvNeXtBlock(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=LN_EPS)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.grn = GRN(4 * dim)
        self.pwconv2 = nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.dwconv(x).permute(0, 2, 3, 1)  # [B, H, W, C]
        h = self.pwconv2(self.grn(F.gelu(self.pwconv1(self.norm(h)))))
        return x + h.permute(0, 3, 1, 2)


class ConvNeXtV2(nn.Module):
    """Backbone plus heads; the module tree matches the checkpoint's `detector.*` keys and their order."""

    def __init__(self, cfg: MotionExtractorConfig):
        super().__init__()
        dims = cfg.dims
        self.downsample_layers = nn.ModuleList(
            [
                nn.Sequential(
                    nn.Conv2d(cfg.in_channels, dims[0], kernel_size=4, stride=4), ChannelsFirstLayerNorm(dims[0])
                )
            ]
            + [
                nn.Sequential(ChannelsFirstLayerNorm(dims[i]), nn.Conv2d(dims[i], dims[i + 1], kernel_size=2, stride=2))
                for i in range(len(dims) - 1)
            ]
        )
        self.stages = nn.ModuleList(
            nn.Sequential(*(ConvNeXtBlock(d) for _ in range(n))) for d, n in zip(dims, cfg.depths)
        )
        self.norm = nn.LayerNorm(dims[-1], eps=LN_EPS)
        k3 = 3 * cfg.num_kp
        self.fc_kp = nn.Linear(dims[-1], k3)
        self.fc_scale = nn.Linear(dims[-1], 1)
        self.fc_pitch = nn.Linear(dims[-1], cfg.num_bins)
        self.fc_yaw = nn.Linear(dims[-1], cfg.num_bins)
        self.fc_roll = nn.Linear(dims[-1], cfg.num_bins)
        self.fc_t = nn.Linear(dims[-1], 3)
        self.fc_exp = nn.Linear(dims[-1], k3)

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """Backbone feature after the global mean pool and the final LayerNorm, [B, dims[-1]]."""
        for down, stage in zip(self.downsample_layers, self.stages):
            x = stage(down(x))
        return self.norm(x.mean(dim=(2, 3)))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        f = self.pooled(x)
        return {
            "kp": self.fc_kp(f),
            "scale": self.fc_scale(f),
            "pitch": self.fc_pitch(f),
            "yaw": self.fc_yaw(f),
            "roll": self.fc_roll(f),
            "t": self.fc_t(f),
            "exp": self.fc_exp(f),
        }


class MotionExtractor(nn.Module):
    """image [B, 3, 256, 256] in [0, 1] -> dict(pitch, yaw, roll: bin logits [B, 66]; t [B, 3]; exp [B, 63];
    scale [B, 1]; kp [B, 63]). No post-processing (see `flashtalk.models.liveportrait.keypoints`)."""

    def __init__(self, cfg: MotionExtractorConfig | None = None):
        super().__init__()
        self.cfg = cfg or MotionExtractorConfig()
        self.detector = ConvNeXtV2(self.cfg)

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        check_image(image, self.cfg.in_channels, self.cfg.image_size, "motion extractor")
        return self.detector(image)


def check_image(image: torch.Tensor, channels: int, size: int, who: str) -> None:
    """Raise FlashTalkError unless `image` is a floating [B, channels, size, size] tensor."""
    if not torch.is_tensor(image) or image.ndim != 4 or tuple(image.shape[1:]) != (channels, size, size):
        shape = tuple(image.shape) if torch.is_tensor(image) else type(image).__name__
        raise FlashTalkError(f"{who}: image must be [B, {channels}, {size}, {size}], got {shape}")
    if not image.is_floating_point():
        raise FlashTalkError(f"{who}: image must be a float tensor with values in [0, 1], got {image.dtype}")
