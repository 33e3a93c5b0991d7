"""Renderer fast path: load-time rewrites, a precision policy and `render_frames` (the runtime's
`flashtalk.runtime.graphed_renderer.GraphedRenderer` runs it, through CUDA graphs on CUDA).

    fast = optimize_renderer(renderer, "bf16")      # a rewritten copy; `renderer` is left untouched
    frames = render_frames(fast, f_s, x_s, x_d)

Rewrites (each exact in real arithmetic; fp32 results equal the reference to rounding):
* BatchNorm (eval) after a conv is folded into the conv: W' = W·g/√(v+ε), b' = (b − μ)·g/√(v+ε) + β.
* The SPADE blocks' spectral norm is folded once: plain convs with W_orig / σ.
* `fuse`: the SPADE decoder becomes `FusedSPADEDecoder`: per resolution, the `mlp_shared` convs of all its
  SPADE layers run as one conv on φ (they all read the same resized map), at 128² / 256² computed exactly
  on the 64² map with per-phase 2×2 kernels (docs/specs/liveportrait.md §7 compute note: 4/9 of the MACs); `mlp_gamma` and
  `mlp_beta` of a layer run as one conv; normalisation + modulation + leaky ReLU is the fused
  `spade_norm` op (fp32 statistics).
* `channels_last` for the 2-D convs of the decoder, and channels-last-3d through the whole warping
  network (`flashtalk.models.liveportrait.warping_channels_last`); cuDNN benchmark mode on CUDA.
* Precision: the warping module (fp32 on the CPU, which lacks a bf16 avg_pool3d) and the decoder store weights and activations in bf16 / fp16; keypoints,
  the stitching MLP, softmax / sampling coordinates and norm statistics stay fp32; frames come out fp32.
  The appearance and motion extractors (once per portrait) stay fp32.
"""

from __future__ import annotations

import copy
import os

import torch
import torch.nn.functional as F
from torch import nn

from flashtalk.errors import FlashTalkError
from flashtalk.kernels.spade_norm import spade_norm
from flashtalk.models.liveportrait.renderer import Renderer
from flashtalk.models.liveportrait.spade import LEAKY_SLOPE, SPADEDecoder, SPADEResBlock, SpectralNormConv2d
from flashtalk.models.liveportrait.warping_channels_last import ChannelsLastWarpingNetwork

PRECISIONS: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
UPSAMPLED = (("up_0", 2), ("up_1", 4))  # decoder blocks on φ upsampled ×2 / ×4


def precision_dtype(precision: str) -> torch.dtype:
    if precision not in PRECISIONS:
        raise FlashTalkError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return PRECISIONS[precision]


# ------------------------------------------------------------------------------------------------ folding


@torch.no_grad()
def fold_batchnorm(conv: nn.Module, bn: nn.modules.batchnorm._BatchNorm) -> None:
    """Fold eval-mode `bn` into the preceding `conv` in place (computed in fp64)."""
    scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
    bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(scale)
    weight = conv.weight.double() * scale.view(-1, *([1] * (conv.weight.dim() - 1)))
    conv.weight.copy_(weight.to(conv.weight.dtype))
    new_bias = ((bias - bn.running_mean.double()) * scale + bn.bias.double()).to(conv.weight.dtype)
    if conv.bias is None:
        conv.bias = nn.Parameter(new_bias)
    else:
        conv.bias.copy_(new_bias)


def fold_batchnorms(module: nn.Module) -> int:
    """Fold every conv → BatchNorm pair of the renderer's blocks (`conv`/`norm`, and the dense motion
    network's `compress`/`norm`) and replace the norm by Identity. Returns the number folded."""
    count = 0
    for m in list(module.modules()):
        for conv_name in ("conv", "compress"):
            conv, norm = getattr(m, conv_name, None), getattr(m, "norm", None)
            if isinstance(conv, (nn.Conv2d, nn.Conv3d)) and isinstance(norm, nn.modules.batchnorm._BatchNorm):
                fold_batchnorm(conv, norm)
                m.norm = nn.Identity()
                count += 1
    return count


@torch.no_grad()
def fold_spectral_norms(module: nn.Module) -> int:
    """Replace every SpectralNormConv2d by a plain conv with weight_orig / σ. Returns the number folded."""
    count = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, SpectralNormConv2d):
                w = child.effective_weight()
                conv = nn.Conv2d(w.shape[1], w.shape[0], w.shape[2], padding=child.padding, bias=child.bias is not None)
                conv.to(device=w.device, dtype=w.dtype)
                conv.weight.copy_(w)
                if child.bias is not None:
                    conv.bias.copy_(child.bias)
                setattr(parent, name, conv)
                count += 1
    return count


# ------------------------------------------------------------------------------ per-phase mlp_shared


def _phase_taps(scale: int) -> tuple[torch.Tensor, list[int]]:
    """For each output phase p of a nearest ×scale upsample followed by a 3×3 conv (padding 1): the
    [2, 3] matrix mapping the 3 taps on the upsampled map to 2 taps on the source map, and the window
    start r_p (0: source offsets {-1, 0}; 1: offsets {0, 1})."""
    mats, starts = [], []
    for p in range(scale):
        r = 0 if p == 0 else 1
        a = torch.zeros(2, 3, dtype=torch.float64)
        for dy in range(3):
            delta = (p + dy - 1) // scale  # source-row offset of this tap, in {-1, 0, 1}
            a[delta + 1 - r, dy] = 1.0
        mats.append(a)
        starts.append(r)
    return torch.stack(mats), starts


def phase_weights(weight: torch.Tensor, scale: int) -> tuple[torch.Tensor, list[int]]:
    """3×3 weight [Co, Ci, 3, 3] -> per-phase 2×2 weights [scale·scale·Co, Ci, 2, 2] (phase-major), and the
    window starts per phase."""
    taps, starts = _phase_taps(scale)
    k = torch.einsum("ptd,ocde,que->pqoctu", taps, weight.double(), taps)  # [s, s, Co, Ci, 2, 2]
    return k.reshape(-1, *weight.shape[1:2], 2, 2).to(weight.dtype), starts


def upsampled_conv3x3(
    seg: torch.Tensor,
    weight2: torch.Tensor,
    bias: torch.Tensor | None,
    scale: int,
    starts: list[int],
    channels_last: bool = False,
) -> torch.Tensor:
    """conv3×3(nearest_upsample(seg, scale), padding 1) computed on seg [B, Ci, H, W] with the per-phase
    weights from `phase_weights`: -> [B, Co, scale·H, scale·W]."""
    b, _, h, w = seg.shape
    co = weight2.shape[0] // (scale * scale)
    y = F.conv2d(F.pad(seg, (1, 1, 1, 1)), weight2, None if bias is None else bias.repeat(scale * scale))
    y = y.view(b, scale, scale, co, h + 1, w + 1)
    if channels_last:
        out = seg.new_empty(b, h, scale, w, scale, co).permute(0, 5, 1, 2, 3, 4)
    else:
        out = seg.new_empty(b, co, h, scale, w, scale)
    for p in range(scale):
        for q in range(scale):
            out[:, :, :, p, :, q] = y[:, p, q, :, starts[p] : starts[p] + h, starts[q] : starts[q] + w]
    return out.view(b, co, scale * h, scale * w)


# ------------------------------------------------------------------------------------------ fused decoder


def _cat_convs(convs: list[nn.Conv2d]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.cat([c.weight for c in convs]).detach(), torch.cat([c.bias for c in convs]).detach()


class FusedSPADEBlock(nn.Module):
    """A SPADE residual block whose SPADE layers take precomputed hidden maps `a` (mlp_shared outputs)."""

    def __init__(self, block: SPADEResBlock):
        super().__init__()
        self.learned_shortcut = block.learned_shortcut
        self.conv_0, self.conv_1 = block.conv_0, block.conv_1
        names = ["norm_0", "norm_1"] + (["norm_s"] if self.learned_shortcut else [])
        if self.learned_shortcut:
            self.conv_s = block.conv_s
        for name in names:
            spade = getattr(block, name)
            gb = nn.Conv2d(spade.mlp_gamma.in_channels, 2 * spade.mlp_gamma.out_channels, 3, padding=1)
            w, bias = _cat_convs([spade.mlp_gamma, spade.mlp_beta])
            gb.to(device=w.device, dtype=w.dtype)
            with torch.no_grad():
                gb.weight.copy_(w)
                gb.bias.copy_(bias)
            setattr(self, f"gb_{name.removeprefix('norm_')}", gb)  # [γ; β] of that SPADE layer

    @staticmethod
    def _norm(x: torch.Tensor, gb: torch.Tensor, slope: float | None) -> torch.Tensor:
        gamma, beta = gb.chunk(2, dim=1)
        return spade_norm(x, gamma, beta, slope)

    def forward(self, x: torch.Tensor, actv: list[torch.Tensor]) -> torch.Tensor:
        s = self.conv_s(self._norm(x, self.gb_s(actv[2]), None)) if self.learned_shortcut else x
        h = self.conv_0(self._norm(x, self.gb_0(actv[0]), LEAKY_SLOPE))
        h = self.conv_1(self._norm(h, self.gb_1(actv[1]), LEAKY_SLOPE))
        return s + h


class FusedSPADEDecoder(nn.Module):
    """SPADEDecoder (spectral norm already folded) rewritten: one `mlp_shared` conv per resolution over all
    the SPADE layers there (per-phase 2×2 kernels on the 64² map for the upsampled ones), merged γ/β
    convs, fused `spade_norm`. Same input and output as SPADEDecoder."""

    def __init__(self, dec: SPADEDecoder, channels_last: bool = True):
        super().__init__()
        self.cfg, self.channels_last = dec.cfg, channels_last
        self.fc, self.conv_img = dec.fc, dec.conv_img
        middle = [getattr(dec, f"G_middle_{i}") for i in range(dec.cfg.num_middle)]
        self.middle = nn.ModuleList(FusedSPADEBlock(b) for b in middle)
        self.up_0, self.up_1 = FusedSPADEBlock(dec.up_0), FusedSPADEBlock(dec.up_1)
        self.hidden = dec.cfg.norm_hidden

        def shared(blocks: list[SPADEResBlock]) -> list[nn.Conv2d]:
            names = ("norm_0", "norm_1", "norm_s")
            return [getattr(b, n).mlp_shared[0] for b in blocks for n in names if hasattr(b, n)]

        w, bias = _cat_convs(shared(middle))
        self.register_buffer("shared_mid_w", w)
        self.register_buffer("shared_mid_b", bias)
        self.starts: dict[str, list[int]] = {}
        for name, scale in UPSAMPLED:
            w, bias = _cat_convs(shared([getattr(dec, name)]))
            w2, self.starts[name] = phase_weights(w, scale)
            self.register_buffer(f"shared_{name}_w", w2)
            self.register_buffer(f"shared_{name}_b", bias)

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        cin = self.cfg.input_channels
        if feature.ndim != 4 or feature.shape[1] != cin:
            raise FlashTalkError(f"SPADE decoder: feature must be [B, {cin}, H, W], got {tuple(feature.shape)}")
        if self.channels_last:
            feature = feature.contiguous(memory_format=torch.channels_last)
        seg = feature
        x = self.fc(feature)
        actv = F.relu(F.conv2d(seg, self.shared_mid_w, self.shared_mid_b, padding=1)).split(self.hidden, dim=1)
        for i, block in enumerate(self.middle):
            x = block(x, list(actv[2 * i : 2 * i + 2]))
        for name, scale in UPSAMPLED:
            x = F.interpolate(x, scale_factor=2, mode="nearest")
            w, b = getattr(self, f"shared_{name}_w"), getattr(self, f"shared_{name}_b")
            a = F.relu(upsampled_conv3x3(seg, w, b, scale, self.starts[name], self.channels_last))
            x = getattr(self, name)(x, list(a.split(self.hidden, dim=1)))
        x = self.conv_img(F.leaky_relu(x, LEAKY_SLOPE))
        return torch.sigmoid(x)


# --------------------------------------------------------------------------------------- precision policy


def optimize_renderer(
    renderer: Renderer,
    precision: str = "bf16",
    channels_last: bool = True,
    fuse: bool = True,
    fused_tail: bool | None = None,
) -> Renderer:
    """A rewritten copy of `renderer` for per-frame rendering (see the module docstring); `renderer` is not
    modified. The copy's `.precision` names its policy; render with `render_frames` (or the runtime's `GraphedRenderer`).
    `fused_tail` (None: `FLASHTALK_WARP_TAIL=fused` turns it on): the warping tail as one kernel (research)."""
    dtype = precision_dtype(precision)
    fast = copy.deepcopy(renderer).eval()
    fold_batchnorms(fast)
    fold_spectral_norms(fast.spade_generator)
    if fuse:
        fast.spade_generator = FusedSPADEDecoder(fast.spade_generator, channels_last=channels_last)
    if fused_tail is None:
        fused_tail = os.environ.get("FLASHTALK_WARP_TAIL", "").strip().lower() == "fused"
    fast.warping_module = ChannelsLastWarpingNetwork(fast.warping_module, channels_last, fused_tail)  # channels-last-3d
    device = next(renderer.parameters()).device
    if device.type == "cuda":  # fixed bucket shapes: each conv's cuDNN algorithm search runs once, before capture
        torch.backends.cudnn.benchmark = True
    # PyTorch's CPU avg_pool3d has no bf16/fp16 kernel: on the CPU the warping module stays fp32
    fast.warping_dtype = dtype if device.type != "cpu" else torch.float32
    for name, net_dtype in (("warping_module", fast.warping_dtype), ("spade_generator", dtype)):
        net = getattr(fast, name).to(net_dtype)
        if channels_last:  # 2-D conv weights (and the decoder's merged mlp_shared weights)
            for t in [m.weight for m in net.modules() if isinstance(m, nn.Conv2d)] + list(net.buffers()):
                if t.dim() == 4:
                    t.data = t.data.contiguous(memory_format=torch.channels_last)
    fast.precision = precision
    return fast


def render_frames(
    fast: Renderer, f_s: torch.Tensor, x_s: torch.Tensor, x_d: torch.Tensor, stitching: bool = True
) -> torch.Tensor:
    """The per-frame renderer on an `optimize_renderer` copy: f_s [1 or N, C, D, H, W], x_s [1 or N, K, 3]
    (one source broadcast, or one per frame), x_d [N, K, 3] (fp32 keypoints) -> frames [N, 3, 8H, 8W] fp32.
    Pure tensor code (graph-capturable)."""
    n = x_d.shape[0]
    x_s = x_s.expand(n, -1, -1)
    if stitching:
        x_d = fast.stitching_retargeting_module.stitch(x_s, x_d)
    dtype = PRECISIONS[fast.precision]
    feature = fast.warping_module(
        f_s.to(fast.warping_dtype).expand(n, -1, -1, -1, -1), kp_driving=x_d, kp_source=x_s, return_deformation=False
    )["out"]
    return fast.spade_generator(feature.to(dtype)).float()
