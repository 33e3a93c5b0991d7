"""Audio features -> LivePortrait motion with the JoyVASA motion generator (docs/specs/joyvasa.md §1, §3, §5.3).

* `MotionStream`: window-by-window generation. Each window of `n_motions` frames is sampled with the
  previous window's last `n_prev_motions` frames of motion and audio as context (the learned start tokens
  for the first window) and the same initial noise x_T for every window, as the original wrapper does.
* `generate_motion`: the original offline flow on a waveform: 2 frames of leading and 1 of trailing
  silence, whole windows of zero-padded audio, concatenation, cut to the clip's frame count.
* `motion_to_renderer`: de-normalisation with the motion template, EMA smoothing of the pose, rotation
  matrices: the renderer's per-frame inputs. `relative_driving` maps them onto a source portrait (§3.6).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any, NamedTuple

import torch

from flashtalk.errors import FlashTalkError
from flashtalk.models.joyvasa.denoiser import MotionGenerator
from flashtalk.models.liveportrait.keypoints import Motion, compose_relative, rotation_from_degrees
from flashtalk.samplers import ddim_sample, ddpm_sample, dpmpp_2m_sample

SAMPLERS = ("ddpm", "ddim", "dpmpp_2m")
LEAD_FRAMES, TRAIL_FRAMES = 2, 1  # silence added before / after the clip (80 ms / 40 ms at 25 fps)


@dataclass
class MotionTemplate:
    """The statistics of JoyVASA's motion_template.pkl that inference uses (float32 tensors)."""

    mean_exp: torch.Tensor  # [63]
    std_exp: torch.Tensor  # [63]
    min_scale: torch.Tensor  # [1]
    max_scale: torch.Tensor
    min_t: torch.Tensor  # [3]
    max_t: torch.Tensor
    min_pitch: torch.Tensor  # [1]
    max_pitch: torch.Tensor
    min_yaw: torch.Tensor
    max_yaw: torch.Tensor
    min_roll: torch.Tensor
    max_roll: torch.Tensor

    @classmethod
    def from_dict(cls, d: Mapping, source: str = "motion template") -> "MotionTemplate":
        sizes = {"exp": 63, "scale": 1, "t": 3, "pitch": 1, "yaw": 1, "roll": 1}
        values = {}
        for f in fields(cls):
            if f.name not in d:
                raise FlashTalkError(
                    f"{source}: missing {f.name!r} (have {', '.join(sorted(map(str, d))) or 'nothing'})"
                )
            try:
                v = torch.as_tensor(d[f.name], dtype=torch.float32).reshape(-1)
            except (TypeError, ValueError, RuntimeError):
                raise FlashTalkError(f"{source}: {f.name!r} is not a numeric array") from None
            want = sizes[f.name.split("_", 1)[1]]
            if v.numel() != want:
                raise FlashTalkError(f"{source}: {f.name!r} has {v.numel()} values, expected {want}")
            values[f.name] = v
        return cls(**values)

    def pose_range(self, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """(min, max) of [scale, tx, ty, tz, pitch, yaw, roll], [7] each."""
        lo = torch.cat([self.min_scale, self.min_t, self.min_pitch, self.min_yaw, self.min_roll])
        hi = torch.cat([self.max_scale, self.max_t, self.max_pitch, self.max_yaw, self.max_roll])
        return lo.to(device=device, dtype=dtype), hi.to(device=device, dtype=dtype)


@dataclass
class GeneratedMotion:
    """Renderer inputs per frame, leading dims [..., N]: exp [..., N, 21, 3], scale [..., N, 1], t [..., N, 3],
    pitch / yaw / roll [..., N] in degrees, R [..., N, 3, 3] = (Rz Ry Rx)^T (keypoints are row vectors, x @ R)."""

    exp: torch.Tensor
    scale: torch.Tensor
    t: torch.Tensor
    pitch: torch.Tensor
    yaw: torch.Tensor
    roll: torch.Tensor
    R: torch.Tensor

    def frames(self) -> Motion:
        """Flattened over the leading dims: the renderer's `Motion` of B = prod(leading) frames."""
        return Motion(
            R=self.R.reshape(-1, 3, 3),
            exp=self.exp.reshape(-1, 21, 3),
            scale=self.scale.reshape(-1, 1),
            t=self.t.reshape(-1, 3),
        )


def denormalize(coef: torch.Tensor, template: MotionTemplate) -> tuple[torch.Tensor, torch.Tensor]:
    """coef [..., 70] -> (exp [..., 63], pose [..., 7] = scale, tx, ty, tz, pitch, yaw, roll), float32 (no eps)."""
    if coef.shape[-1] != 70:
        raise FlashTalkError(f"motion coefficients must have 70 channels, got {list(coef.shape)}")
    mean, std = (v.to(device=coef.device, dtype=coef.dtype) for v in (template.mean_exp, template.std_exp))
    lo, hi = template.pose_range(coef.device, coef.dtype)
    exp = coef[..., :63] * std + mean
    pose = coef[..., 63:] * (hi - lo) + lo
    return exp.float(), pose.float()


def ema_smooth(x: torch.Tensor, alpha: float, previous: torch.Tensor | None = None) -> torch.Tensor:
    """s_k = alpha x_k + (1 - alpha) s_{k-1} over dim -2 of x [..., N, C]; s_{-1} = `previous` [..., C], or
    x_0 when None (so s_0 = x_0). Computed as one lower-triangular matrix product (in float64)."""
    if not 0.0 < alpha <= 1.0:
        raise FlashTalkError(f"EMA alpha must be in (0, 1], got {alpha}")
    n = x.shape[-2]
    wide = x.double()
    k = torch.arange(n, device=x.device, dtype=torch.float64)
    lag = k[:, None] - k[None, :]
    weights = torch.where(lag >= 0, alpha * (1 - alpha) ** lag.clamp_min(0), torch.zeros_like(lag))  # [N, N]
    start = wide[..., :1, :] if previous is None else previous.double()[..., None, :]
    carry = (1 - alpha) ** (k + 1)  # [N]
    return (weights @ wide + carry[:, None] * start).to(x.dtype)


def motion_to_renderer(
    coef: torch.Tensor,
    template: MotionTemplate,
    *,
    ema_alpha: float | None = 0.01,
    ema_previous: torch.Tensor | None = None,
) -> GeneratedMotion:
    """Normalised motion [..., N, 70] -> renderer inputs; pose EMA-smoothed unless ema_alpha is None
    (`ema_previous` [..., 7]: the smoothed pose of the frame before, for streaming)."""
    exp, pose = denormalize(coef, template)
    if ema_alpha is not None:
        pose = ema_smooth(pose, ema_alpha, ema_previous)
    lead = pose.shape[:-1]
    pitch, yaw, roll = pose[..., 4], pose[..., 5], pose[..., 6]
    R = rotation_from_degrees(pitch, yaw, roll).reshape(*lead, 3, 3)
    return GeneratedMotion(
        exp=exp.reshape(*lead, 21, 3), scale=pose[..., :1], t=pose[..., 1:4], pitch=pitch, yaw=yaw, roll=roll, R=R
    )


def relative_driving(
    x_c: torch.Tensor, source: Motion, generated: Motion, reference: Motion, lip_absolute: bool = True
) -> torch.Tensor:
    """Driving keypoints of JoyVASA's human pipeline (docs/specs/joyvasa.md §3.6) for B generated frames -> [B, 21, 3]:
    `flashtalk.models.liveportrait.keypoints.compose_relative` with the lip keypoints absolute when `lip_absolute`."""
    return compose_relative(x_c, source, generated, reference, lips_absolute=lip_absolute)


@dataclass(frozen=True)
class SamplerConfig:
    """Which sampler generates each window: "ddpm" (the reference: all T steps, ancestral), "ddim" or
    "dpmpp_2m" (few-step; `steps` model calls). cfg_scale: classifier-free guidance on audio."""

    name: str = "ddpm"
    steps: int | None = None  # None: all T steps (ddpm always uses T)
    eta: float = 0.0  # ddim only
    cfg_scale: float = 2.0

    def __post_init__(self) -> None:
        if self.name not in SAMPLERS:
            raise FlashTalkError(f"sampler must be one of {SAMPLERS}, not {self.name!r}")
        if self.steps is not None and self.steps < 1:
            raise FlashTalkError(f"sampler steps must be >= 1, got {self.steps}")

    def noise_draws(self, n_train_steps: int) -> int:
        """Per-step noise tensors one window consumes."""
        if self.name == "ddpm":
            return n_train_steps - 1
        if self.name == "ddim" and self.eta:
            return (self.steps or n_train_steps) - 1
        return 0


def sample_window(
    model: MotionGenerator,
    sampler: SamplerConfig,
    audio: torch.Tensor,
    prev_motion: torch.Tensor,
    prev_audio: torch.Tensor,
    x_T: torch.Tensor,
    *,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """THE sampler dispatch: one window's whole sampling loop for a batch of streams. Projected audio
    [B, W, d], context (prev_motion [B, P, 70], prev_audio [B, P, d]), x_T [B, W, 70]; per-step noise
    ([draws, B, W, 70], else drawn from `generator`) -> normalised motion coef [B, W, 70]. Guidance is
    batched inside the model call. Pure tensor code when `noise` is given (graph-capturable)."""
    x0_fn = model.guided_x0_fn(audio, prev_motion, prev_audio, sampler.cfg_scale)
    sched, steps = model.schedule(), sampler.steps or model.cfg.n_diff_steps
    if sampler.name == "ddpm":
        return ddpm_sample(x0_fn, x_T, sched, noise=noise, generator=generator)
    if sampler.name == "ddim":
        return ddim_sample(x0_fn, x_T, sched, steps, eta=sampler.eta, noise=noise, generator=generator)
    return dpmpp_2m_sample(x0_fn, x_T, sched, steps)


def next_context(
    prev_motion: torch.Tensor, prev_audio: torch.Tensor, coef: torch.Tensor, audio: torch.Tensor, made: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The context after a window of which the first `made` frames are kept: the last P frames of
    (context, kept frames). For a whole window (made = W >= P) that is the window's own last P frames."""
    P = prev_motion.shape[1]
    return (
        torch.cat([prev_motion, coef[:, :made]], dim=1)[:, -P:],
        torch.cat([prev_audio, audio[:, :made]], dim=1)[:, -P:],
    )


def advance_window(
    state: Any,
    coef: torch.Tensor,
    audio: torch.Tensor,
    made: int,
    template: MotionTemplate,
    ema_alpha: float | None,
    n_valid: int | None = None,
) -> GeneratedMotion:
    """THE window-state advance: after a sampled window (coef [B, W, 70], projected audio [B, W, d]) keep
    its first `made` frames as the next context, smooth the pose of its first `n_valid` (default `made`)
    frames on from the last one emitted, and return their renderer motion. `state` has `prev_motion`,
    `prev_audio` and `ema_last` ([B, 7] or None), updated in place."""
    n = made if n_valid is None else n_valid
    state.prev_motion, state.prev_audio = next_context(state.prev_motion, state.prev_audio, coef, audio, made)
    motion = motion_to_renderer(coef[:, :n], template, ema_alpha=ema_alpha, ema_previous=state.ema_last)
    state.ema_last = torch.cat(
        [motion.scale, motion.t, motion.pitch[..., None], motion.yaw[..., None], motion.roll[..., None]], dim=-1
    )[:, -1]
    return motion


class WindowOutput(NamedTuple):
    coef: torch.Tensor  # [B, W, 70] normalised motion of the window
    motion: GeneratedMotion | None  # renderer inputs of the valid frames (when the stream has a template)


class MotionStream:
    """Generates motion one window at a time from audio-encoder features (25 fps, audio_dim wide).

    The stream keeps the context (last frames of motion and projected audio), the initial noise shared by
    all windows and the EMA state of the pose, so consecutive `push` calls continue one another exactly
    as the offline flow does."""

    def __init__(
        self,
        model: MotionGenerator,
        *,
        batch: int = 1,
        sampler: SamplerConfig = SamplerConfig(),
        template: MotionTemplate | None = None,
        ema_alpha: float | None = 0.01,
        x_T: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        cfg = model.cfg
        p = next(model.parameters())
        self.model, self.sampler, self.template, self.ema_alpha = model, sampler, template, ema_alpha
        self.generator = generator
        shape = (batch, cfg.n_motions, cfg.motion_feat_dim)
        if x_T is None:
            x_T = torch.randn(shape, generator=generator, device=p.device, dtype=p.dtype)
        elif tuple(x_T.shape) != shape:
            raise FlashTalkError(f"x_T must be shaped {list(shape)}, got {list(x_T.shape)}")
        self.x_T = x_T.to(device=p.device, dtype=p.dtype)
        self.prev_motion, self.prev_audio = model.start_context(batch)
        self.ema_last: torch.Tensor | None = None  # [B, 7] smoothed pose of the last emitted frame
        self.windows = 0

    @torch.no_grad()
    def push(
        self, features: torch.Tensor, *, noise: torch.Tensor | None = None, n_valid: int | None = None
    ) -> WindowOutput:
        """features [B, W, audio_dim] of one window -> its motion. noise: the window's per-step noise
        ([steps - 1, B, W, 70] for the stochastic samplers), else drawn from the stream's generator.
        n_valid: frames of this window that are real (the last window of a clip); the rest are dropped
        from the renderer output (they still count as context, as in the original)."""
        model, cfg, s = self.model, self.model.cfg, self.sampler
        want = (self.x_T.shape[0], cfg.n_motions, cfg.audio_dim)
        if tuple(features.shape) != want:
            raise FlashTalkError(
                f"audio features of one window must be shaped {list(want)}, got {list(features.shape)}"
            )
        audio = model.audio_feature_map(features.to(self.x_T.dtype))
        coef = sample_window(
            model, s, audio, self.prev_motion, self.prev_audio, self.x_T, noise=noise, generator=self.generator
        )
        self.windows += 1
        motion = None
        if self.template is not None:
            motion = advance_window(self, coef, audio, cfg.n_motions, self.template, self.ema_alpha, n_valid)
        else:
            self.prev_motion, self.prev_audio = next_context(
                self.prev_motion, self.prev_audio, coef, audio, cfg.n_motions
            )
        return WindowOutput(coef, motion)


def clip_layout(n_samples: int, samples_per_frame: int, n_motions: int) -> tuple[int, int]:
    """(frames, windows) of a clip of n_samples after the leading/trailing silence (docs/specs/joyvasa.md §1)."""
    n_frames = (n_samples + (LEAD_FRAMES + TRAIL_FRAMES) * samples_per_frame) // samples_per_frame
    return n_frames, 1 if n_frames <= n_motions else math.ceil(n_frames / n_motions)


@torch.no_grad()
def generate_motion(
    model: MotionGenerator,
    features_fn: Callable[[torch.Tensor], torch.Tensor],
    audio: torch.Tensor,
    *,
    sampler: SamplerConfig | None = None,
    cfg_scale: float | None = None,
    x_T: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The original offline flow: audio [B, S] at 16 kHz -> normalised motion [B, n_frames, 70].

    features_fn maps one window of audio [B, window_samples] to encoder features [B, n_motions, audio_dim].
    noise: [n_windows, draws, B, W, 70] per-window step noise (drawn from `generator` when None)."""
    cfg = model.cfg
    if audio.ndim != 2 or audio.shape[1] == 0:
        raise FlashTalkError(f"audio must be [B, samples] with samples > 0, got {list(audio.shape)}")
    sampler = sampler or SamplerConfig()
    if cfg_scale is not None:
        sampler = SamplerConfig(sampler.name, sampler.steps, sampler.eta, cfg_scale)
    spf, win = cfg.samples_per_frame, cfg.window_samples
    n_frames, n_windows = clip_layout(audio.shape[1], spf, cfg.n_motions)
    padded = audio.new_zeros(audio.shape[0], n_windows * win)
    body = audio[:, : n_windows * win - LEAD_FRAMES * spf]
    padded[:, LEAD_FRAMES * spf : LEAD_FRAMES * spf + body.shape[1]] = body
    draws = sampler.noise_draws(cfg.n_diff_steps)
    if noise is not None and (noise.ndim < 2 or noise.shape[0] != n_windows or noise.shape[1] != draws):
        raise FlashTalkError(
            f"noise must be shaped [{n_windows} windows, {draws} draws, B, W, 70], got {list(noise.shape)}"
        )
    stream = MotionStream(model, batch=audio.shape[0], sampler=sampler, x_T=x_T, generator=generator)
    out = []
    for w in range(n_windows):
        feats = features_fn(padded[:, w * win : (w + 1) * win])
        out.append(stream.push(feats, noise=None if noise is None else noise[w]).coef)
    return torch.cat(out, dim=1)[:, :n_frames]
