"""JoyVASA motion generator: a diffusion transformer that predicts clean LivePortrait motion (70-d per
frame: 63 expression deltas, scale, translation, pitch/yaw/roll; normalised) for a window of frames from
audio features, conditioned on the previous window's motion and audio (docs/specs/joyvasa.md §4).

State-dict keys follow the released checkpoint (`golden/joyvasa/manifest.json`) minus `audio_encoder.*`
(the HuBERT lives in `audio_encoder.py`) and minus `denoising_net.TE.pe`, which the official loader also
drops and recomputes (a non-persistent buffer here).

The cross-attention mask lets motion token i see only memory token i, so softmax over one key is exactly
1 and the block is the per-frame map out_proj(v_proj(memory)): the default path. The masked-attention
path (`cross_attention="masked"`) computes the same numbers through the attention op.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from flashtalk.errors import FlashTalkError
from flashtalk.kernels.attention import attention
from flashtalk.models.layers import FP32LayerNorm
from flashtalk.samplers import Schedule, cosine_schedule

PE_MODES = ("buggy", "fixed")
CROSS_ATTENTION_MODES = ("diagonal", "masked")

# Checkpoint args the official constructor reads; everything else in the config is hard-coded there (docs/specs/joyvasa.md §4.1).
ARGS_READ = ("motion_feat_dim", "n_motions", "n_prev_motions", "feature_dim", "n_diff_steps", "fps", "pad_mode")


@dataclass(frozen=True)
class MotionGeneratorConfig:
    """JoyVASA's diffusion transformer over windows of LivePortrait motion (docs/specs/joyvasa.md §4).

    pe_mode "buggy" adds the single sinusoid row `pe[L]` to every token (the code the released checkpoint
    was trained with, the default); "fixed" adds rows 0..L-1 per position (JoyVASA HEAD since 2025-12-09).
    cross_attention "diagonal" computes the diagonal-masked cross-attention as the exact per-frame
    projection out_proj(v_proj(memory)); "masked" runs real masked attention (same numbers, slower).
    """

    motion_feat_dim: int = 70
    n_motions: int = 100
    n_prev_motions: int = 10
    feature_dim: int = 256
    n_layers: int = 8
    n_heads: int = 8
    ffn_dim: int = 1024
    n_diff_steps: int = 50
    audio_dim: int = 768
    head_hidden: int = 128  # motion_dec hidden width
    te_rows: int = 501  # timestep sinusoid table rows (the original's max of 500 steps + 1)
    pe_rows: int = 600  # positional sinusoid table rows
    fps: float = 25.0
    sample_rate: int = 16000
    pad_mode: str = "zero"
    pe_mode: str = "buggy"
    cross_attention: str = "diagonal"

    def __post_init__(self) -> None:
        if self.pe_mode not in PE_MODES:
            raise FlashTalkError(f"pe_mode must be one of {PE_MODES}, not {self.pe_mode!r}")
        if self.cross_attention not in CROSS_ATTENTION_MODES:
            raise FlashTalkError(
                f"cross_attention must be one of {CROSS_ATTENTION_MODES}, not {self.cross_attention!r}"
            )
        if self.feature_dim % self.n_heads:
            raise FlashTalkError(f"feature_dim {self.feature_dim} is not divisible by n_heads {self.n_heads}")
        if self.feature_dim % 2:
            raise FlashTalkError(f"feature_dim {self.feature_dim} must be even (sinusoid tables)")
        if self.n_diff_steps >= self.te_rows:
            raise FlashTalkError(f"n_diff_steps {self.n_diff_steps} needs te_rows > n_diff_steps (have {self.te_rows})")
        if self.seq_len >= self.pe_rows:
            raise FlashTalkError(
                f"window of {self.seq_len} tokens needs pe_rows > {self.seq_len} (have {self.pe_rows})"
            )
        samples = self.sample_rate * self.n_motions / self.fps
        if samples != int(samples):
            raise FlashTalkError(
                f"{self.n_motions} frames at {self.fps} fps is not a whole number of {self.sample_rate} Hz samples"
            )

    @property
    def seq_len(self) -> int:
        """Tokens per denoiser call: context frames + window frames."""
        return self.n_prev_motions + self.n_motions

    @property
    def window_samples(self) -> int:
        """Audio samples per window (64000 for 100 frames at 25 fps, 16 kHz)."""
        return int(self.sample_rate * self.n_motions / self.fps)

    @property
    def samples_per_frame(self) -> int:
        return int(self.sample_rate / self.fps)

    @classmethod
    def from_args(
        cls, args: Any, base: "MotionGeneratorConfig | None" = None, **overrides: Any
    ) -> "MotionGeneratorConfig":
        """Config from a checkpoint's training args (argparse.Namespace or dict). Only the fields the
        official constructor reads are taken (docs/specs/joyvasa.md §4.1); the rest (layers, heads, FFN, ...) come from
        `base` (the released architecture by default), whatever the args say."""
        values: Mapping[str, Any] = args if isinstance(args, Mapping) else vars(args)
        base = base or cls()
        known = {f.name for f in fields(cls)}
        picked: dict[str, Any] = {}
        for name in ARGS_READ:
            if name in values and values[name] is not None:
                default = getattr(base, name)
                try:
                    picked[name] = type(default)(values[name])
                except (TypeError, ValueError):
                    raise FlashTalkError(
                        f"checkpoint args: {name}={values[name]!r} is not a valid {type(default).__name__}"
                    ) from None
        for name in overrides:
            if name not in known:
                raise FlashTalkError(f"unknown MotionGeneratorConfig field {name!r}")
        return replace(base, **{**picked, **overrides})

    @classmethod
    def tiny(cls, **overrides: Any) -> "MotionGeneratorConfig":
        """Same architecture, small sizes: fast tests of the full code path."""
        base = dict(
            motion_feat_dim=10,
            n_motions=8,
            n_prev_motions=3,
            feature_dim=32,
            n_layers=2,
            n_heads=4,
            ffn_dim=64,
            n_diff_steps=6,
            audio_dim=24,
            head_hidden=16,
            te_rows=16,
            pe_rows=24,
        )
        return cls(**{**base, **overrides})


def sinusoid_table(rows: int, dim: int, *, device=None, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """pe[p, 2i] = sin(p w_i), pe[p, 2i+1] = cos(p w_i), w_i = 10000^(-2i/dim); computed in float64, [1, rows, dim]."""
    pos = torch.arange(rows, dtype=torch.float64)[:, None]
    w = torch.exp(torch.arange(0, dim, 2, dtype=torch.float64) * (-math.log(10000.0) / dim))
    pe = torch.zeros(rows, dim, dtype=torch.float64)
    pe[:, 0::2] = torch.sin(pos * w)
    pe[:, 1::2] = torch.cos(pos * w)
    return pe[None].to(device=device, dtype=dtype)


class _Table(nn.Module):
    """Holds one sinusoid table under the checkpoint's `.pe` key."""

    def __init__(self, rows: int, dim: int, persistent: bool, device=None, dtype=None) -> None:
        super().__init__()
        self.register_buffer(
            "pe",
            sinusoid_table(rows, dim, device=device, dtype=dtype or torch.get_default_dtype()),
            persistent=persistent,
        )


class _ScheduleBuffers(nn.Module):
    """The checkpoint's `diffusion_sched.*` tables (loaded from the file; cosine by default)."""

    def __init__(self, n_steps: int, device=None, dtype=None) -> None:
        super().__init__()
        sched = cosine_schedule(n_steps, device=device, dtype=dtype or torch.get_default_dtype())
        for name, value in sched._asdict().items():
            self.register_buffer(name, value)

    def schedule(self) -> Schedule:
        return Schedule(self.betas, self.alphas, self.alpha_bars, self.sigmas_flex, self.sigmas_inflex)


class MultiheadAttention(nn.Module):
    """nn.MultiheadAttention's parameter layout (packed in_proj [3d, d]) over `flashtalk.kernels.attention`."""

    def __init__(self, dim: int, n_heads: int, device=None, dtype=None) -> None:
        super().__init__()
        kw = dict(device=device, dtype=dtype)
        self.n_heads = n_heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim, **kw))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim, **kw))
        self.out_proj = nn.Linear(dim, dim, **kw)
        nn.init.xavier_uniform_(self.in_proj_weight)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:  # [B, L, d] -> [B, H, L, d/H]
        B, L, d = x.shape
        return x.view(B, L, self.n_heads, d // self.n_heads).transpose(1, 2)

    def forward(
        self, x: torch.Tensor, memory: torch.Tensor | None = None, attn_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Attention of x [B, Lq, d] over memory [B, Lk, d] (x itself when None); attn_mask True = may attend."""
        d = x.shape[-1]
        if memory is None:
            q, k, v = F.linear(x, self.in_proj_weight, self.in_proj_bias).split(d, dim=-1)
        else:
            w, b = self.in_proj_weight, self.in_proj_bias
            q = F.linear(x, w[:d], b[:d])
            k, v = F.linear(memory, w[d:], b[d:]).split(d, dim=-1)
        o = attention(self._heads(q), self._heads(k), self._heads(v), attn_mask=attn_mask)  # [B, H, Lq, d/H]
        return self.out_proj(o.transpose(1, 2).reshape(x.shape))

    def per_frame(self, memory: torch.Tensor) -> torch.Tensor:
        """Output when every query sees exactly its own memory token: out_proj(v_proj(memory))."""
        d = memory.shape[-1]
        return self.out_proj(F.linear(memory, self.in_proj_weight[2 * d :], self.in_proj_bias[2 * d :]))


class DecoderLayer(nn.Module):
    """nn.TransformerDecoderLayer (batch_first, post-norm, exact GELU, eps 1e-5) with the diagonal cross-attention."""

    def __init__(self, cfg: MotionGeneratorConfig, device=None, dtype=None) -> None:
        super().__init__()
        kw = dict(device=device, dtype=dtype)
        d = cfg.feature_dim
        self.self_attn = MultiheadAttention(d, cfg.n_heads, **kw)
        self.multihead_attn = MultiheadAttention(d, cfg.n_heads, **kw)
        self.linear1 = nn.Linear(d, cfg.ffn_dim, **kw)
        self.linear2 = nn.Linear(cfg.ffn_dim, d, **kw)
        self.norm1 = FP32LayerNorm(d, eps=1e-5, **kw)
        self.norm2 = FP32LayerNorm(d, eps=1e-5, **kw)
        self.norm3 = FP32LayerNorm(d, eps=1e-5, **kw)

    def forward(self, h: torch.Tensor, memory: torch.Tensor, memory_mask: torch.Tensor | None = None) -> torch.Tensor:
        """memory_mask None: the diagonal fast path; else a bool [L, L] mask (True = may attend)."""
        h = self.norm1(h + self.self_attn(h))
        cross = (
            self.multihead_attn.per_frame(memory)
            if memory_mask is None
            else self.multihead_attn(h, memory, memory_mask)
        )
        h = self.norm2(h + cross)
        return self.norm3(h + self.linear2(F.gelu(self.linear1(h))))


class _Layers(nn.Module):
    def __init__(self, cfg: MotionGeneratorConfig, device=None, dtype=None) -> None:
        super().__init__()
        self.layers = nn.ModuleList(DecoderLayer(cfg, device, dtype) for _ in range(cfg.n_layers))


class DenoisingNetwork(nn.Module):
    """x0 prediction for [prev motion ; noisy window] given [prev audio ; window audio] and the step (docs/specs/joyvasa.md §4.3)."""

    def __init__(self, cfg: MotionGeneratorConfig, device=None, dtype=None) -> None:
        super().__init__()
        kw = dict(device=device, dtype=dtype)
        d, L = cfg.feature_dim, cfg.seq_len
        self.cfg = cfg
        self.pe_mode = cfg.pe_mode
        self.cross_attention = cfg.cross_attention
        self.register_buffer("alignment_mask", ~torch.eye(L, dtype=torch.bool, device=device))  # True = blocked
        self.TE = _Table(cfg.te_rows, d, persistent=False, **kw)
        self.diff_step_map = nn.Sequential(nn.Linear(d, d, **kw), nn.GELU(), nn.Linear(d, d, **kw))
        self.PE = _Table(cfg.pe_rows, d, persistent=True, **kw)
        self.feature_proj = nn.Linear(cfg.motion_feat_dim, d, **kw)
        self.transformer = _Layers(cfg, device, dtype)
        self.motion_dec = nn.Sequential(
            nn.Linear(d, cfg.head_hidden, **kw), nn.GELU(), nn.Linear(cfg.head_hidden, cfg.motion_feat_dim, **kw)
        )

    def time_embedding(self, step: torch.Tensor) -> torch.Tensor:
        """step [N] integer -> e_t [N, d]."""
        return self.diff_step_map(self.TE.pe[0, step])

    def positional(self, length: int) -> torch.Tensor:
        """[length, d]: rows 0..length-1 ("fixed") or row `length` repeated ("buggy", the trained model)."""
        pe = self.PE.pe[0]
        if self.pe_mode == "fixed":
            return pe[:length]
        if self.pe_mode == "buggy":
            return pe[length].expand(length, -1)
        raise FlashTalkError(f"pe_mode must be 'buggy' or 'fixed', not {self.pe_mode!r}")

    def input_tokens(
        self, motion_feat: torch.Tensor, prev_motion_feat: torch.Tensor, step: torch.Tensor
    ) -> torch.Tensor:
        h = self.feature_proj(torch.cat([prev_motion_feat, motion_feat], dim=1))  # [N, L, d]
        return h + self.positional(h.shape[1]) + self.time_embedding(step)[:, None]

    def memory_mask(self) -> torch.Tensor | None:
        if self.cross_attention == "diagonal":
            return None
        if self.cross_attention == "masked":
            return ~self.alignment_mask
        raise FlashTalkError(f"cross_attention must be 'diagonal' or 'masked', not {self.cross_attention!r}")

    def forward(
        self,
        motion_feat: torch.Tensor,
        audio_feat: torch.Tensor,
        prev_motion_feat: torch.Tensor,
        prev_audio_feat: torch.Tensor,
        step: torch.Tensor,
    ) -> torch.Tensor:
        """motion_feat [N, W, 70], audio_feat [N, W, d], prev_* [N, P, 70 / d], step [N] -> [N, P + W, 70].
        Runs in the dtype of its weights (bf16 / fp16 after `set_compute_dtype`; norms in fp32) and returns
        motion_feat's dtype, so the sampler around it stays fp32."""
        dtype, out_dtype = self.feature_proj.weight.dtype, motion_feat.dtype
        motion_feat, audio_feat, prev_motion_feat, prev_audio_feat = (
            t.to(dtype) for t in (motion_feat, audio_feat, prev_motion_feat, prev_audio_feat)
        )
        h = self.input_tokens(motion_feat, prev_motion_feat, step)
        memory = torch.cat([prev_audio_feat, audio_feat], dim=1)
        mask = self.memory_mask()
        for layer in self.transformer.layers:
            h = layer(h, memory, mask)
        return self.motion_dec(h).to(out_dtype)


class MotionGenerator(nn.Module):
    """Audio features (25 fps, audio_dim wide) -> normalised motion windows; the checkpoint's non-HuBERT part."""

    def __init__(self, cfg: MotionGeneratorConfig | None = None, device=None, dtype=None) -> None:
        super().__init__()
        cfg = cfg or MotionGeneratorConfig()
        kw = dict(device=device, dtype=dtype)
        self.cfg = cfg
        d, P = cfg.feature_dim, cfg.n_prev_motions
        self.start_audio_feat = nn.Parameter(torch.randn(1, P, d, **kw))
        self.start_motion_feat = nn.Parameter(torch.randn(1, P, cfg.motion_feat_dim, **kw))
        self.null_audio_feat = nn.Parameter(torch.randn(1, 1, d, **kw))
        self.audio_feature_map = nn.Linear(cfg.audio_dim, d, **kw)
        self.denoising_net = DenoisingNetwork(cfg, **kw)
        self.diffusion_sched = _ScheduleBuffers(cfg.n_diff_steps, **kw)

    def schedule(self) -> Schedule:
        return self.diffusion_sched.schedule()

    def start_context(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(prev_motion [N, P, 70], prev_audio [N, P, d]) of the first window: the learned start tokens."""
        return (self.start_motion_feat.expand(batch, -1, -1), self.start_audio_feat.expand(batch, -1, -1))

    def guided_x0_fn(
        self,
        audio_feat: torch.Tensor,
        prev_motion_feat: torch.Tensor,
        prev_audio_feat: torch.Tensor,
        cfg_scale: float | torch.Tensor,
    ):
        """x0_fn(x_t [N, W, 70], t [N]) for the samplers: one denoiser call on the doubled batch
        [unconditional (null audio token) ; conditional], x0 = out_u + s (out_c - out_u) over the W window frames."""
        N, W, _ = audio_feat.shape
        self._check_window(audio_feat, prev_motion_feat, prev_audio_feat)
        audio2 = torch.cat([self.null_audio_feat.expand(N, W, -1), audio_feat])
        prev_m2, prev_a2 = torch.cat([prev_motion_feat] * 2), torch.cat([prev_audio_feat] * 2)
        net = self.denoising_net

        def x0_fn(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            out = net(torch.cat([x_t, x_t]), audio2, prev_m2, prev_a2, torch.cat([t, t]))[:, -W:]
            out_u, out_c = out[:N], out[N:]
            return out_u + cfg_scale * (out_c - out_u)

        return x0_fn

    def _check_window(
        self, audio_feat: torch.Tensor, prev_motion_feat: torch.Tensor, prev_audio_feat: torch.Tensor
    ) -> None:
        cfg = self.cfg
        N = audio_feat.shape[0]
        want = {
            "audio_feat": (audio_feat, (N, cfg.n_motions, cfg.feature_dim)),
            "prev_motion_feat": (prev_motion_feat, (N, cfg.n_prev_motions, cfg.motion_feat_dim)),
            "prev_audio_feat": (prev_audio_feat, (N, cfg.n_prev_motions, cfg.feature_dim)),
        }
        for name, (t, shape) in want.items():
            if tuple(t.shape) != shape:
                raise FlashTalkError(f"{name} must be shaped {list(shape)}, got {list(t.shape)}")
