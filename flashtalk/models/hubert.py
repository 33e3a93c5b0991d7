"""HuBERT / wav2vec2 speech encoder (16 kHz waveform -> 50 Hz hidden states), and JoyVASA's frontend.

Architecture (Hugging Face `HubertModel` / `Wav2Vec2Model`, eval mode; docs/specs/joyvasa.md §2.2):
  feature CNN: 7 Conv1d layers (512 ch, kernels 10,3,3,3,3,2,2, strides 5,2,2,2,2,2,2 = 320 samples per
    frame), GELU after each; "group" norm = GroupNorm(512 groups) after the first conv only (base models),
    "layer" norm = LayerNorm over channels after every conv (large "stable layer norm" models);
  feature projection: LayerNorm(512) -> Linear(512 -> 768);
  positional conv: Conv1d(768, 768, 128 taps, padding 64, 16 groups) with weight norm over the taps,
    last output frame dropped, GELU, added to the input;
  transformer: post-LN ("base": LayerNorm first, then h = LN(h + MHSA(h)); h = LN(h + FFN(h))) or pre-LN
    with a final LayerNorm (`do_stable_layer_norm`); attention runs through `flashtalk.kernels.attention`.

Module and parameter names follow the Hugging Face state dict (e.g. `encoder.layers.3.attention.q_proj.weight`,
`encoder.pos_conv_embed.conv.parametrizations.weight.original0`), so checkpoints load without renaming;
`flashtalk.weights.hubert` holds the loaders.

Batches of different lengths: pass `lengths` (samples per row). Each row then gives exactly what it
gives alone: the first GroupNorm takes its statistics over the row's valid frames only, padded frames
are zeroed before the positional conv, attention ignores them, and they come out as zeros. (Hugging
Face instead tells users not to pass an attention mask to group-norm models, so its padded rows differ.)

JoyVASA frontend (§2.3): `joyvasa_pad_audio` (the double reflect padding), `resample_frames` (linear,
align_corners=False; 50 -> 25 Hz is the mean of frame pairs) and `joyvasa_audio_features`, which chains
them around the encoder and returns the 25 Hz 768-d features (the 768 -> 256 `audio_feature_map` belongs
to the motion model).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

import torch
import torch.nn.functional as F
from torch import nn

from flashtalk.errors import FlashTalkError
from flashtalk.kernels.attention import attention
from flashtalk.models.layers import FP32GroupNorm, FP32LayerNorm

_ACTIVATIONS = {"gelu": F.gelu, "relu": F.relu}  # "gelu" is the exact erf form, as in Hugging Face


@dataclass(frozen=True)
class HubertConfig:
    """Architecture of a HuBERT / wav2vec2 encoder (field names as in the Hugging Face config.json).
    The defaults are HuBERT-base / wav2vec2-base (= TencentGameMate/chinese-hubert-base, JoyVASA's)."""

    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    conv_dim: tuple[int, ...] = (512,) * 7
    conv_kernel: tuple[int, ...] = (10, 3, 3, 3, 3, 2, 2)
    conv_stride: tuple[int, ...] = (5, 2, 2, 2, 2, 2, 2)
    conv_bias: bool = False
    feat_extract_norm: str = "group"  # "group": GroupNorm after conv 0 only; "layer": LayerNorm after every conv
    feat_extract_activation: str = "gelu"
    feat_proj_layer_norm: bool = True
    num_conv_pos_embeddings: int = 128
    num_conv_pos_embedding_groups: int = 16
    layer_norm_eps: float = 1e-5
    do_stable_layer_norm: bool = False  # pre-LN transformer with a final LayerNorm (large models)
    model_type: str = "hubert"
    sampling_rate: int = 16000
    extra: dict = field(default_factory=dict, compare=False, repr=False)  # unused config.json entries

    def __post_init__(self):
        object.__setattr__(self, "conv_dim", tuple(int(c) for c in self.conv_dim))
        object.__setattr__(self, "conv_kernel", tuple(int(c) for c in self.conv_kernel))
        object.__setattr__(self, "conv_stride", tuple(int(c) for c in self.conv_stride))
        problems = []
        if not (len(self.conv_dim) == len(self.conv_kernel) == len(self.conv_stride) >= 1):
            problems.append(
                f"conv_dim/conv_kernel/conv_stride lengths differ ({len(self.conv_dim)}, {len(self.conv_kernel)}, "
                f"{len(self.conv_stride)})"
            )
        if self.hidden_size % self.num_attention_heads:
            problems.append(f"hidden_size {self.hidden_size} is not divisible by {self.num_attention_heads} heads")
        if self.hidden_size % self.num_conv_pos_embedding_groups:
            problems.append(
                f"hidden_size {self.hidden_size} is not divisible by {self.num_conv_pos_embedding_groups} pos-conv groups"
            )
        if self.feat_extract_norm not in ("group", "layer"):
            problems.append(f"feat_extract_norm must be 'group' or 'layer', not {self.feat_extract_norm!r}")
        for name in ("hidden_act", "feat_extract_activation"):
            if getattr(self, name) not in _ACTIVATIONS:
                problems.append(f"{name} {getattr(self, name)!r} is not supported (known: {', '.join(_ACTIVATIONS)})")
        if self.model_type not in ("hubert", "wav2vec2"):
            problems.append(f"model_type {self.model_type!r} is not a HuBERT / wav2vec2 model")
        if problems:
            raise FlashTalkError("invalid audio encoder config: " + "; ".join(problems))

    @property
    def samples_per_frame(self) -> int:
        return math.prod(self.conv_stride)

    @classmethod
    def from_hf_config(cls, cfg: dict) -> "HubertConfig":
        """From a Hugging Face HubertConfig / Wav2Vec2Config dict (config.json). Features this encoder does
        not implement (adapters, batch-norm positional conv, ...) are rejected by name."""
        unsupported = {
            "add_adapter": "a wav2vec2 adapter after the encoder",
            "conv_pos_batch_norm": "a BatchNorm positional conv instead of weight norm",
        }
        bad = [f"{k} ({why})" for k, why in unsupported.items() if cfg.get(k)]
        if bad:
            raise FlashTalkError("audio encoder config uses unsupported features: " + ", ".join(bad))
        model_type = cfg.get("model_type", "hubert")
        if model_type not in ("hubert", "wav2vec2"):
            raise FlashTalkError(f"config.json model_type {model_type!r} is not a HuBERT / wav2vec2 model")
        names = {f.name for f in fields(cls)} - {"extra"}
        kwargs = {k: (tuple(v) if isinstance(v, list) else v) for k, v in cfg.items() if k in names}
        if model_type == "wav2vec2":
            kwargs["feat_proj_layer_norm"] = True  # wav2vec2 always normalises before the projection
        n_conv = cfg.get("num_feat_extract_layers")
        if n_conv is not None and n_conv != len(kwargs.get("conv_dim", cls.conv_dim)):
            raise FlashTalkError(
                f"config.json: num_feat_extract_layers={n_conv} but conv_dim has {len(kwargs['conv_dim'])} entries"
            )
        return cls(**kwargs, extra={k: v for k, v in cfg.items() if k not in names})

    @classmethod
    def tiny(cls) -> "HubertConfig":
        """Same architecture, small sizes, for fast tests (20 samples per frame)."""
        return cls(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            conv_dim=(16, 16, 16), conv_kernel=(10, 3, 2), conv_stride=(5, 2, 2),
            num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=4,
        )  # fmt: skip


# --------------------------------------------------------------------------------------------- layers


class ConvLayer(nn.Module):
    """Conv1d, optional norm (GroupNorm with one group per channel, or LayerNorm over channels), activation."""

    def __init__(self, cfg: HubertConfig, i: int, norm: str | None):
        super().__init__()
        c_in = 1 if i == 0 else cfg.conv_dim[i - 1]
        c_out = cfg.conv_dim[i]
        self.conv = nn.Conv1d(c_in, c_out, cfg.conv_kernel[i], stride=cfg.conv_stride[i], bias=cfg.conv_bias)
        self.norm_kind = norm
        if norm == "group":
            self.layer_norm = FP32GroupNorm(c_out, c_out, affine=True)  # HF: default eps 1e-5
        elif norm == "layer":
            self.layer_norm = FP32LayerNorm(c_out, elementwise_affine=True)
        self.act = _ACTIVATIONS[cfg.feat_extract_activation]

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
        """x [B, C_in, T_in] -> [B, C_out, T_out]; valid [B, T_out] bool marks each row's real frames."""
        x = self.conv(x)
        if self.norm_kind == "group" and valid is None:
            x = self.layer_norm(x)
        elif self.norm_kind == "group":
            x = self._masked_instance_norm(x, valid)
        elif self.norm_kind == "layer":
            x = self.layer_norm(x.transpose(1, 2)).transpose(1, 2)
        return self.act(x)

    def _masked_instance_norm(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """GroupNorm with one channel per group, statistics (in fp32 at least) over each row's valid frames only."""
        dtype = x.dtype
        x = x.to(torch.promote_types(dtype, torch.float32))
        pad = ~valid[:, None, :]  # [B, 1, T]
        count = valid.sum(dim=1).to(x.dtype)[:, None, None]  # [B, 1, 1]
        mean = x.masked_fill(pad, 0.0).sum(dim=2, keepdim=True) / count
        var = (x - mean).masked_fill(pad, 0.0).pow(2).sum(dim=2, keepdim=True) / count
        x = (x - mean) * torch.rsqrt(var + self.layer_norm.eps)
        return (x * self.layer_norm.weight[None, :, None] + self.layer_norm.bias[None, :, None]).to(dtype)


class FeatureExtractor(nn.Module):
    def __init__(self, cfg: HubertConfig):
        super().__init__()
        norms = [
            ("group" if i == 0 else None) if cfg.feat_extract_norm == "group" else "layer"
            for i in range(len(cfg.conv_dim))
        ]
        self.conv_layers = nn.ModuleList(ConvLayer(cfg, i, norm) for i, norm in enumerate(norms))


class FeatureProjection(nn.Module):
    def __init__(self, cfg: HubertConfig):
        super().__init__()
        self.layer_norm = FP32LayerNorm(cfg.conv_dim[-1], eps=cfg.layer_norm_eps) if cfg.feat_proj_layer_norm else None
        self.projection = nn.Linear(cfg.conv_dim[-1], cfg.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection(self.layer_norm(x) if self.layer_norm is not None else x)


class PositionalConv(nn.Module):
    """Grouped conv over time with weight norm over the taps (g [1, 1, K], v [C, C/groups, K])."""

    def __init__(self, cfg: HubertConfig):
        super().__init__()
        k = cfg.num_conv_pos_embeddings
        conv = nn.Conv1d(cfg.hidden_size, cfg.hidden_size, k, padding=k // 2, groups=cfg.num_conv_pos_embedding_groups)
        self.conv = nn.utils.parametrizations.weight_norm(conv, name="weight", dim=2)
        self.trim = 1 if k % 2 == 0 else 0  # an even kernel with padding k/2 yields one extra frame
        self.act = _ACTIVATIONS[cfg.feat_extract_activation]

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """h [B, T, C] -> positional embedding [B, T, C]."""
        y = self.conv(h.transpose(1, 2))
        if self.trim:
            y = y[:, :, : -self.trim]
        return self.act(y).transpose(1, 2)


class SelfAttention(nn.Module):
    def __init__(self, cfg: HubertConfig):
        super().__init__()
        d = cfg.hidden_size
        self.heads = cfg.num_attention_heads
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(d, d) for _ in range(4))

    def forward(self, h: torch.Tensor, key_padding_mask: torch.Tensor | None) -> torch.Tensor:
        B, T, d = h.shape
        q, k, v = (
            p(h).view(B, T, self.heads, d // self.heads).transpose(1, 2)
            for p in (self.q_proj, self.k_proj, self.v_proj)
        )
        o = attention(q, k, v, key_padding_mask=key_padding_mask)  # [B, H, T, D], scale 1/sqrt(D)
        return self.out_proj(o.transpose(1, 2).reshape(B, T, d))


class FeedForward(nn.Module):
    def __init__(self, cfg: HubertConfig):
        super().__init__()
        self.intermediate_dense = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.output_dense = nn.Linear(cfg.intermediate_size, cfg.hidden_size)
        self.act = _ACTIVATIONS[cfg.hidden_act]

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.output_dense(self.act(self.intermediate_dense(h)))


class EncoderLayer(nn.Module):
    def __init__(self, cfg: HubertConfig):
        super().__init__()
        self.pre_norm = cfg.do_stable_layer_norm
        self.attention = SelfAttention(cfg)
        self.layer_norm = FP32LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.feed_forward = FeedForward(cfg)
        self.final_layer_norm = FP32LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, h: torch.Tensor, key_padding_mask: torch.Tensor | None) -> torch.Tensor:
        if self.pre_norm:
            h = h + self.attention(self.layer_norm(h), key_padding_mask)
            return h + self.feed_forward(self.final_layer_norm(h))
        h = self.layer_norm(h + self.attention(h, key_padding_mask))
        return self.final_layer_norm(h + self.feed_forward(h))


class Encoder(nn.Module):
    def __init__(self, cfg: HubertConfig):
        super().__init__()
        self.pre_norm = cfg.do_stable_layer_norm
        self.pos_conv_embed = PositionalConv(cfg)
        self.layer_norm = FP32LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.num_hidden_layers))


# --------------------------------------------------------------------------------------------- model


class AudioEncoder(nn.Module):
    """HuBERT / wav2vec2 encoder: audio [B, N] at 16 kHz -> last hidden state [B, T, hidden] at 50 Hz."""

    def __init__(self, cfg: HubertConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or HubertConfig()
        self.feature_extractor = FeatureExtractor(cfg)
        self.feature_projection = FeatureProjection(cfg)
        self.encoder = Encoder(cfg)

    def frame_lengths(self, n_samples: torch.Tensor) -> torch.Tensor:
        """Number of CNN output frames for inputs of `n_samples` samples (elementwise)."""
        n = torch.as_tensor(n_samples)
        for k, s in zip(self.cfg.conv_kernel, self.cfg.conv_stride):
            n = torch.div(n - k, s, rounding_mode="floor") + 1
        return n.clamp(min=0)

    def _check_audio(self, audio: torch.Tensor, lengths) -> tuple[torch.Tensor, torch.Tensor | None]:
        if not isinstance(audio, torch.Tensor) or audio.dim() != 2:
            raise FlashTalkError(
                f"audio encoder expects a tensor [batch, samples] at {self.cfg.sampling_rate} Hz, "
                f"got {tuple(audio.shape) if isinstance(audio, torch.Tensor) else type(audio).__name__}"
            )
        if not audio.is_floating_point():
            raise FlashTalkError(f"audio must be floating point, got {audio.dtype}")
        B, N = audio.shape
        min_len = N
        for k, s in zip(self.cfg.conv_kernel, self.cfg.conv_stride):  # plain ints: no tensor, no sync
            min_len = max((min_len - k) // s + 1, 0)
        if min_len < 1:
            raise FlashTalkError(f"audio of {N} samples is too short for the encoder (needs >= {self._min_samples()})")
        if lengths is None:
            return audio, None
        lengths = torch.as_tensor(lengths, device=audio.device).long()
        if lengths.shape != (B,):
            raise FlashTalkError(f"lengths must have shape [{B}] (one per row), got {tuple(lengths.shape)}")
        if bool((lengths > N).any()) or bool((lengths < self._min_samples()).any()):
            raise FlashTalkError(
                f"lengths {lengths.tolist()} must lie in [{self._min_samples()}, {N}] (the padded audio length)"
            )
        return audio, lengths

    def _min_samples(self) -> int:
        n = 1
        for k, s in reversed(list(zip(self.cfg.conv_kernel, self.cfg.conv_stride))):
            n = (n - 1) * s + k
        return n

    def extract_features(self, audio: torch.Tensor, lengths=None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Feature CNN: audio [B, N] -> (features [B, C, T], valid-frame mask [B, T] or None)."""
        audio, lengths = self._check_audio(audio, lengths)
        dtype = self.feature_extractor.conv_layers[0].conv.weight.dtype
        x = audio.to(dtype)[:, None, :]
        n = lengths if lengths is not None and bool((lengths < audio.shape[1]).any()) else None
        valid = None
        for layer in self.feature_extractor.conv_layers:
            if n is not None:  # valid outputs of a conv depend on valid inputs only: one mask per layer
                k, s = layer.conv.kernel_size[0], layer.conv.stride[0]
                n = torch.div(n - k, s, rounding_mode="floor") + 1
                valid = torch.arange((x.shape[2] - k) // s + 1, device=x.device)[None, :] < n[:, None]
            x = layer(x, valid)
        return x, valid

    def project(self, features: torch.Tensor) -> torch.Tensor:
        """features [B, C, T] -> [B, T, hidden]."""
        return self.feature_projection(features.transpose(1, 2))

    def encode(self, h: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """Transformer: projected features [B, T, hidden] -> last hidden state [B, T, hidden]."""
        enc = self.encoder
        pad = None
        if valid is not None:
            pad = ~valid
            h = h.masked_fill(pad[:, :, None], 0.0)
        h = h + enc.pos_conv_embed(h)
        if not enc.pre_norm:
            h = enc.layer_norm(h)
        for layer in enc.layers:
            h = layer(h, pad)
        if enc.pre_norm:
            h = enc.layer_norm(h)
        return h if pad is None else h.masked_fill(pad[:, :, None], 0.0)

    def forward(self, audio: torch.Tensor, lengths=None) -> torch.Tensor:
        """audio [B, N] at 16 kHz (rows zero-padded to N; `lengths` = real samples per row) ->
        last hidden state [B, T, hidden] at 50 Hz in audio's dtype (computed in the weights' dtype: bf16 / fp16
        after `set_compute_dtype`, norms in fp32); frames past a row's length are zeros."""
        features, valid = self.extract_features(audio, lengths)
        return self.encode(self.project(features), valid).to(audio.dtype)


# --------------------------------------------------------------------------------------------- JoyVASA frontend

JOYVASA_UNIT = 320  # samples per 50 Hz frame
JOYVASA_PAD_THRESHOLD = 80
JOYVASA_SAMPLES_PER_FRAME = 640  # one 25 fps motion frame


def joyvasa_pad_audio(
    audio: torch.Tensor, unit: int = JOYVASA_UNIT, threshold: int = JOYVASA_PAD_THRESHOLD
) -> torch.Tensor:
    """JoyVASA's pad_audio: side = ceil((unit * floor(N / unit) + threshold - N) / 2); if side >= 0, reflect-pad
    side // 2 samples on both ends TWICE in a row, then replicate-pad 1 sample on both ends if side is odd.
    For N = 64000: 20 + 20 reflected samples per end -> 64080 samples. audio [B, N] -> [B, N']."""
    if audio.dim() != 2:
        raise FlashTalkError(f"joyvasa_pad_audio expects audio [batch, samples], got shape {tuple(audio.shape)}")
    N = audio.shape[1]
    side = math.ceil((unit * (N // unit) + threshold - N) / 2)
    if side < 0:
        return audio
    r = side // 2
    x = audio[:, None, :]
    if r > 0:
        if r >= N:
            raise FlashTalkError(f"audio of {N} samples is too short for JoyVASA's reflect padding of {r} samples")
        x = F.pad(F.pad(x, (r, r), mode="reflect"), (r, r), mode="reflect")
    if side % 2:
        x = F.pad(x, (1, 1), mode="replicate")
    return x[:, 0, :]


def resample_frames(h: torch.Tensor, n_out: int) -> torch.Tensor:
    """Linear resampling over time (align_corners=False): h [B, T, C] -> [B, n_out, C].
    T = 2 * n_out (50 -> 25 Hz) gives exactly the mean of each pair of frames."""
    if h.shape[1] == n_out:
        return h
    return F.interpolate(h.transpose(1, 2), size=n_out, mode="linear", align_corners=False).transpose(1, 2)


def joyvasa_audio_features(
    encoder: AudioEncoder, audio: torch.Tensor, n_frames: int | None = None, intermediates: bool = False
):
    """JoyVASA's audio path up to the 768-d features at 25 fps (before audio_feature_map).

    audio [B, N] at 16 kHz (a 4-s window: N = 64000, n_frames = 100). Steps: `joyvasa_pad_audio`, feature
    CNN (50 Hz), keep the first 4 * n_frames CNN frames and linearly resample them to 2 * n_frames (both
    no-ops for a 64000-sample window), projection + transformer, `resample_frames` to n_frames.
    Returns [B, n_frames, hidden], or with `intermediates=True` a dict with audio_padded, cnn_features
    [B, C, 2L], projected [B, 2L, hidden], hubert_last_hidden [B, 2L, hidden], hubert_resampled [B, L, hidden]."""
    if n_frames is None:
        n_frames = audio.shape[-1] // JOYVASA_SAMPLES_PER_FRAME
    if n_frames < 1:
        raise FlashTalkError(f"n_frames must be >= 1, got {n_frames} (audio of {audio.shape[-1]} samples)")
    padded = joyvasa_pad_audio(audio)
    cnn, _ = encoder.extract_features(padded)
    cnn = cnn[:, :, : 4 * n_frames]
    cnn = resample_frames(cnn.transpose(1, 2), 2 * n_frames).transpose(1, 2)
    projected = encoder.project(cnn)
    hidden = encoder.encode(projected)
    resampled = resample_frames(hidden, n_frames).to(audio.dtype)  # the weights' dtype inside, audio's out
    if not intermediates:
        return resampled
    return {
        "audio_padded": padded,
        "cnn_features": cnn,
        "projected": projected,
        "hubert_last_hidden": hidden,
        "hubert_resampled": resampled,
    }
