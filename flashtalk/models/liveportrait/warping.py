"""LivePortrait warping module W: moves the source appearance volume f_s from the source keypoints to the
driving keypoints and projects it to the 2-D feature map the decoder reads (docs/specs/liveportrait.md §6).

    dense motion network (`dense_motion_network.*`):
      c = ReLU(norm(compress(f_s)))                              [B,4,16,64,64]
      h = dense_motion_input(c, x_s, x_d)                        [B,110,16,64,64] (sparse motions, heatmaps)
      P = hourglass(h)                                           [B,142,16,64,64]
      mask logits = mask(P) (7×7×7)                              [B,22,16,64,64]
      occlusion = sigmoid(occlusion(P viewed [B,142·16,64,64]))  [B,1,64,64]
    warped, Φ = deform_warp(mask logits, x_s, x_d, f_s)          softmax, Φ = Σ M_k S_k, trilinear sample
    out = fourth(third(warped viewed [B,32·16,64,64])) · occlusion   [B,256,64,64]
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from flashtalk.errors import FlashTalkError
from flashtalk.kernels.deform_warp import deform_warp
from flashtalk.kernels.dense_motion_input import dense_motion_input
from flashtalk.models.layers import Conv2d, Conv3d, ConvNormAct2d, Hourglass3d

THIRD_NEGATIVE_SLOPE = 0.01  # `third` uses PyTorch's default LeakyReLU slope


@dataclass(frozen=True)
class DenseMotionConfig:
    """`dense_motion_params` of LivePortrait's models.yaml."""

    block_expansion: int = 32
    max_features: int = 1024
    num_blocks: int = 5
    reshape_depth: int = 16
    compress: int = 4


@dataclass(frozen=True)
class WarpingConfig:
    """Field names and defaults as `warping_module` in LivePortrait's models.yaml (occlusion always on)."""

    num_kp: int = 21
    block_expansion: int = 64
    max_features: int = 512
    num_down_blocks: int = 2
    reshape_channel: int = 32
    dense_motion_params: DenseMotionConfig = field(default_factory=DenseMotionConfig)

    def __post_init__(self) -> None:
        depth = self.dense_motion_params.reshape_depth
        if self.reshape_channel * depth != self.max_features:
            raise FlashTalkError(
                f"WarpingConfig: reshape_channel·reshape_depth = {self.reshape_channel}·{depth} must equal "
                f"max_features = {self.max_features}"
            )

    @classmethod
    def tiny(cls) -> "WarpingConfig":
        """Same architecture with few channels and a short hourglass, for fast end-to-end tests: f_s
        [B,4,8,H,W] (H, W multiples of 8) → out [B,16,H,W]. Pairs with AppearanceConfig.tiny()."""
        return cls(
            block_expansion=4,
            max_features=32,
            reshape_channel=4,
            dense_motion_params=DenseMotionConfig(
                block_expansion=4, max_features=32, num_blocks=3, reshape_depth=8, compress=2
            ),
        )

    @property
    def out_channels(self) -> int:
        return self.block_expansion * 2**self.num_down_blocks


class DenseMotionNetwork(nn.Module):
    """f_s, x_s, x_d → (mask logits [B,K+1,D,H,W], occlusion map [B,1,H,W]). The softmax over the mask and
    the deformation it defines are computed by `deform_warp`, fused with the warp."""

    def __init__(self, cfg: WarpingConfig):
        super().__init__()
        dm = cfg.dense_motion_params
        self.hourglass = Hourglass3d(
            dm.block_expansion, (cfg.num_kp + 1) * (dm.compress + 1), dm.num_blocks, dm.max_features
        )
        self.mask = Conv3d(self.hourglass.out_channels, cfg.num_kp + 1, 7, padding=3)
        self.compress = Conv3d(cfg.reshape_channel, dm.compress, 1)
        self.norm = nn.BatchNorm3d(dm.compress)
        self.occlusion = Conv2d(self.hourglass.out_channels * dm.reshape_depth, 1, 7, padding=3)

    def forward(
        self, feature: torch.Tensor, kp_driving: torch.Tensor, kp_source: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        compressed = torch.relu(self.norm(self.compress(feature)))
        prediction = self.hourglass(dense_motion_input(compressed, kp_source, kp_driving))
        mask_logits = self.mask(prediction)
        b, c, d, h, w = prediction.shape
        occlusion_map = torch.sigmoid(self.occlusion(prediction.view(b, c * d, h, w)))  # channel c·D + d
        return mask_logits, occlusion_map


class WarpingNetwork(nn.Module):
    """forward(feature_3d [B,C,D,H,W], kp_driving [B,K,3], kp_source [B,K,3]) → dict(out [B,256,H,W],
    deformation [B,D,H,W,3] (None when `return_deformation=False`), occlusion_map [B,1,H,W]).
    Positional order as the official class: feature, kp_driving, kp_source. Built in eval mode."""

    def __init__(self, cfg: WarpingConfig | None = None):
        super().__init__()
        cfg = cfg or WarpingConfig()
        self.cfg = cfg
        self.dense_motion_network = DenseMotionNetwork(cfg)
        self.third = ConvNormAct2d(
            cfg.max_features, cfg.out_channels, 3, padding=1, negative_slope=THIRD_NEGATIVE_SLOPE
        )
        self.fourth = Conv2d(cfg.out_channels, cfg.out_channels, 1)
        self.eval()

    def check_input(self, feature_3d: torch.Tensor, kp_driving: torch.Tensor, kp_source: torch.Tensor) -> None:
        """Raise FlashTalkError naming what is wrong with the inputs (shape, dtype, device)."""
        cfg = self.cfg
        depth, factor = cfg.dense_motion_params.reshape_depth, 2**cfg.dense_motion_params.num_blocks
        for name, t in (("feature_3d", feature_3d), ("kp_driving", kp_driving), ("kp_source", kp_source)):
            if not isinstance(t, torch.Tensor):
                raise FlashTalkError(f"warping network: {name} must be a torch.Tensor, got {type(t).__name__}")
            if not t.is_floating_point():
                raise FlashTalkError(f"warping network: {name} must be a floating tensor, got {t.dtype}")
        shape = tuple(feature_3d.shape)
        if (
            feature_3d.dim() != 5
            or shape[0] == 0
            or shape[1:3] != (cfg.reshape_channel, depth)
            or shape[3] == 0
            or shape[4] == 0
            or shape[3] % factor
            or shape[4] % factor
        ):
            raise FlashTalkError(
                f"warping network: feature_3d must have shape [B, {cfg.reshape_channel}, {depth}, H, W] with H and W "
                f"positive multiples of {factor} ([B, 32, 16, 64, 64] from the appearance extractor), got {shape}"
            )
        for name, kp in (("kp_driving", kp_driving), ("kp_source", kp_source)):
            if tuple(kp.shape) != (shape[0], cfg.num_kp, 3):
                raise FlashTalkError(
                    f"warping network: {name} must have shape [B={shape[0]}, {cfg.num_kp}, 3], got {tuple(kp.shape)}"
                )
        device = self.fourth.weight.device
        for name, t in (("feature_3d", feature_3d), ("kp_driving", kp_driving), ("kp_source", kp_source)):
            if t.device != device:
                raise FlashTalkError(f"warping network: {name} is on {t.device} but the network is on {device}")

    def forward(
        self,
        feature_3d: torch.Tensor,
        kp_driving: torch.Tensor,
        kp_source: torch.Tensor,
        *,
        return_deformation: bool = True,
    ) -> dict[str, torch.Tensor | None]:
        self.check_input(feature_3d, kp_driving, kp_source)
        mask_logits, occlusion_map = self.dense_motion_network(feature_3d, kp_driving, kp_source)
        warped, deformation = deform_warp(
            mask_logits, kp_source, kp_driving, feature_3d, return_deformation=return_deformation
        )
        b, c, d, h, w = warped.shape
        out = self.fourth(self.third(warped.view(b, c * d, h, w)))  # channel c·D + d
        return {"out": out * occlusion_map, "deformation": deformation, "occlusion_map": occlusion_map}
