"""SPADE decoder G of the LivePortrait renderer (docs/specs/liveportrait.md §7): feature φ [B, 256, 64, 64] -> RGB [B, 3, 512, 512]
in (0, 1). φ is also the SPADE "segmentation map" of every normalisation layer.

The residual convs keep the checkpoint's spectral-norm triplets (`weight_orig`, `weight_u`, `weight_v`);
the weight used is weight_orig / σ with σ = u·(W_mat v) from the stored vectors (eval mode: no power
iteration). Written plainly: folding σ into the weights and fusing the SPADE norm are fast-path work.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from flashtalk.errors import FlashTalkError

LEAKY_SLOPE = 0.2
IN_EPS = 1e-5


@dataclass(frozen=True)
class SPADEConfig:
    block_expansion: int = 64
    max_features: int = 512
    num_down_blocks: int = 2
    upscale: int = 2
    out_channels: int = 64  # channels of the last SPADE block (the class default; not in models.yaml)
    num_middle: int = 6
    norm_hidden: int = 128  # hidden width of every SPADE modulation MLP
    image_channels: int = 3

    @property
    def input_channels(self) -> int:
        return min(self.max_features, self.block_expansion * 2**self.num_down_blocks)

    @classmethod
    def tiny(cls) -> "SPADEConfig":
        return cls(block_expansion=4, max_features=32, out_channels=8, num_middle=2, norm_hidden=8)


class SpectralNormConv2d(nn.Module):
    """Conv2d whose weight is weight_orig / σ, σ = u·(weight_orig.reshape(out, -1) @ v), from stored u, v.

    State-dict order matches torch's legacy spectral_norm: bias (if any), weight_orig, weight_u, weight_v.
    """

    def __init__(self, cin: int, cout: int, kernel_size: int, padding: int = 0, bias: bool = True):
        super().__init__()
        self.padding = padding
        self.bias = nn.Parameter(torch.zeros(cout)) if bias else None
        self.weight_orig = nn.Parameter(torch.empty(cout, cin, kernel_size, kernel_size))
        self.register_buffer("weight_u", torch.empty(cout))
        self.register_buffer("weight_v", torch.empty(cin * kernel_size * kernel_size))
        nn.init.kaiming_uniform_(self.weight_orig, a=5**0.5)
        self.weight_u.copy_(F.normalize(torch.randn(cout), dim=0))
        self.weight_v.copy_(F.normalize(torch.randn(cin * kernel_size * kernel_size), dim=0))

    def sigma(self) -> torch.Tensor:
        w_mat = self.weight_orig.reshape(self.weight_orig.shape[0], -1)
        return torch.dot(self.weight_u, w_mat @ self.weight_v)

    def effective_weight(self) -> torch.Tensor:
        return self.weight_orig / self.sigma()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.effective_weight(), self.bias, padding=self.padding)


class SPADE(nn.Module):
    """n = InstanceNorm(x) (no affine); a = ReLU(conv(resize(φ))); out = n·(1 + γ(a)) + β(a)."""

    def __init__(self, channels: int, label_channels: int, hidden: int):
        super().__init__()
        self.mlp_shared = nn.Sequential(nn.Conv2d(label_channels, hidden, 3, padding=1), nn.ReLU())
        self.mlp_gamma = nn.Conv2d(hidden, channels, 3, padding=1)
        self.mlp_beta = nn.Conv2d(hidden, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, segmap: torch.Tensor) -> torch.Tensor:
        normalized = F.instance_norm(x, eps=IN_EPS)
        segmap = F.interpolate(segmap, size=x.shape[2:], mode="nearest")
        actv = self.mlp_shared(segmap)
        return normalized * (1 + self.mlp_gamma(actv)) + self.mlp_beta(actv)


class SPADEResBlock(nn.Module):
    def __init__(self, fin: int, fout: int, label_channels: int, hidden: int):
        super().__init__()
        fmid = min(fin, fout)
        self.learned_shortcut = fin != fout
        self.conv_0 = SpectralNormConv2d(fin, fmid, 3, padding=1)
        self.conv_1 = SpectralNormConv2d(fmid, fout, 3, padding=1)
        if self.learned_shortcut:
            self.conv_s = SpectralNormConv2d(fin, fout, 1, bias=False)
        self.norm_0 = SPADE(fin, label_channels, hidden)
        self.norm_1 = SPADE(fmid, label_channels, hidden)
        if self.learned_shortcut:
            self.norm_s = SPADE(fin, label_channels, hidden)

    def forward(self, x: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
        s = self.conv_s(self.norm_s(x, seg)) if self.learned_shortcut else x
        h = self.conv_0(F.leaky_relu(self.norm_0(x, seg), LEAKY_SLOPE))
        h = self.conv_1(F.leaky_relu(self.norm_1(h, seg), LEAKY_SLOPE))
        return s + h


class SPADEDecoder(nn.Module):
    """feature [B, C_in, H, W] (C_in = 256 official) -> image [B, 3, 8H, 8W] in (0, 1)."""

    def __init__(self, cfg: SPADEConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or SPADEConfig()
        cin, hidden = cfg.input_channels, cfg.norm_hidden
        self.fc = nn.Conv2d(cin, 2 * cin, 3, padding=1)
        for i in range(cfg.num_middle):
            self.add_module(f"G_middle_{i}", SPADEResBlock(2 * cin, 2 * cin, cin, hidden))
        self.up_0 = SPADEResBlock(2 * cin, cin, cin, hidden)
        self.up_1 = SPADEResBlock(cin, cfg.out_channels, cin, hidden)
        self.conv_img = nn.Sequential(
            nn.Conv2d(cfg.out_channels, cfg.image_channels * cfg.upscale**2, 3, padding=1),
            nn.PixelShuffle(cfg.upscale),
        )

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        cin = self.cfg.input_channels
        if feature.ndim != 4 or feature.shape[1] != cin:
            raise FlashTalkError(f"SPADE decoder: feature must be [B, {cin}, H, W], got {tuple(feature.shape)}")
        seg = feature
        x = self.fc(feature)
        for i in range(self.cfg.num_middle):
            x = getattr(self, f"G_middle_{i}")(x, seg)
        x = self.up_0(F.interpolate(x, scale_factor=2, mode="nearest"), seg)
        x = self.up_1(F.interpolate(x, scale_factor=2, mode="nearest"), seg)
        x = self.conv_img(F.leaky_relu(x, LEAKY_SLOPE))
        return torch.sigmoid(x)
