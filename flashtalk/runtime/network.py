"""The full-network backend: LivePortrait renderer + HuBERT audio encoder + JoyVASA motion generator
behind the `Backend` protocol of `flashtalk.runtime.engine`.

Per portrait: the 512² crop is area-resized to the renderer's input (256²) and encoded once.
Per clip (joyvasa.md §1): 2 frames of silence before and 1 after the speech, windows of `n_motions`
frames (4 s) of audio -> audio features -> `MotionStream` (few-step sampler, guidance, the previous
window as context) -> de-normalised motion with EMA-smoothed pose -> mapping onto the source (§3.6)
with the user's controls -> stitching -> warp + decode, in batches. Motion is generated one window at a
time as frames are consumed, so memory does not grow with the audio's length. The two leading silent
frames are generated (they are the reference frame d_0 of the relative mapping) but not shown: frame i
of the output then starts at audio time i / 25 s, in sync with the muxed audio.

`MotionWindows` is the reusable window-by-window generator (offline here, streaming in the session).

Precision (`resolve_precision`): fp32 on the CPU renders with the reference renderer; any other precision,
or any precision on CUDA, renders through `flashtalk.runtime.fast_renderer.FastRenderer` (folded + fused; CUDA graphs
with batch buckets on CUDA). On CUDA each motion window's whole sampling loop is one CUDA graph
(`GraphedSampler`); eager elsewhere.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import torch
import torch.nn.functional as F

from flashtalk.errors import FlashTalkError
from flashtalk.model.audio_encoder import joyvasa_audio_features
from flashtalk.model.bundle import Networks
from flashtalk.model.controls import ControlSet, apply_controls
from flashtalk.model.keypoints import Motion, bins_to_degrees, rotation_from_degrees
from flashtalk.model.motion_pipeline import (LEAD_FRAMES, TRAIL_FRAMES, MotionStream, SamplerConfig,
                                             motion_to_renderer)
from flashtalk.model.renderer import SourceState
from flashtalk.model.samplers import ddim_sample, ddpm_sample, dpmpp_2m_sample

log = logging.getLogger(__name__)

OUT_SIZE = 512
SAMPLER_NAMES = {"ddim": "ddim", "dpmpp": "dpmpp_2m", "ddpm": "ddpm"}
DEFAULT_SAMPLER, DEFAULT_STEPS, DEFAULT_CFG = "dpmpp", 10, 2.0
DEFAULT_POSE_SMOOTHING = 0.99  # JoyVASA's EMA alpha 0.01
# The user's controls: `flashtalk.model.controls.ControlSet` (pose offsets / gains, expression scale,
# intensity, head distance, gaze, eyes, mouth, emotion offset, regions, keyframed tracks).
Controls = ControlSet


def sampler_config(sampler: str = DEFAULT_SAMPLER, steps: int | None = DEFAULT_STEPS,
                   cfg: float = DEFAULT_CFG) -> SamplerConfig:
    if sampler not in SAMPLER_NAMES:
        raise FlashTalkError(f"sampler must be one of {', '.join(SAMPLER_NAMES)}, not {sampler!r}")
    if not (math.isfinite(cfg) and 0 <= cfg <= 20):
        raise FlashTalkError(f"cfg (guidance scale) must be in [0, 20], got {cfg}")
    return SamplerConfig(SAMPLER_NAMES[sampler], None if sampler == "ddpm" else steps, 0.0, float(cfg))


def resolve_precision(precision: str | None, device: torch.device) -> str:
    """The renderer precision: None -> bf16 on CUDA, fp32 elsewhere; else one of fp32 / bf16 / fp16."""
    from flashtalk.model.fast import PRECISIONS

    if precision is None:
        return "bf16" if device.type == "cuda" else "fp32"
    if precision not in PRECISIONS:
        raise FlashTalkError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision


def sample_window(model: Any, sampler: SamplerConfig, audio: torch.Tensor, prev_motion: torch.Tensor,
                  prev_audio: torch.Tensor, x_T: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
    """One window's whole sampling loop: projected audio [B, W, d], context, x_T [B, W, 70] and the
    per-step noise ([draws, B, W, 70] or None) -> normalised motion coef [B, W, 70]. Pure tensor code."""
    x0_fn = model.guided_x0_fn(audio, prev_motion, prev_audio, sampler.cfg_scale)
    sched, steps = model.schedule(), sampler.steps or model.cfg.n_diff_steps
    if sampler.name == "ddpm":
        return ddpm_sample(x0_fn, x_T, sched, noise=noise)
    if sampler.name == "ddim":
        return ddim_sample(x0_fn, x_T, sched, steps, eta=sampler.eta, noise=noise)
    return dpmpp_2m_sample(x0_fn, x_T, sched, steps)


class GraphedSampler:
    """`sample_window` through a `GraphRunner` (static buffers, one bucket: the batch): the whole loop is
    one CUDA graph on CUDA. `backend` is the runner's capture backend (EagerBackend for CPU tests). If the
    capture fails (an op of the loop cannot be captured) it logs why once and samples eagerly from then on."""

    def __init__(self, model: Any, sampler: SamplerConfig, batch: int, backend: Any = None) -> None:
        self.model, self.sampler, self.batch, self.backend = model, sampler, batch, backend
        self.draws = sampler.noise_draws(model.cfg.n_diff_steps)
        self.runner: Any = None
        self.failed: str | None = None

    def _fn(self, audio, prev_motion, prev_audio, x_T, noise=None) -> torch.Tensor:
        z = None if noise is None else noise.transpose(0, 1)  # the runner batches dim 0: [B, draws, ...]
        return sample_window(self.model, self.sampler, audio, prev_motion, prev_audio, x_T, z)

    def __call__(self, audio: torch.Tensor, prev_motion: torch.Tensor, prev_audio: torch.Tensor,
                 x_T: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        from flashtalk.runtime.graphs import GraphRunner, InputSpec

        inputs = [audio, prev_motion, prev_audio, x_T] + ([] if noise is None else [noise.transpose(0, 1)])
        if self.failed is None and self.runner is None:
            specs = [InputSpec(tuple(t.shape[1:]), t.dtype) for t in inputs]
            runner = GraphRunner(self._fn, specs, (self.batch,), x_T.device, backend=self.backend)
            try:
                runner.capture(*inputs)
                self.runner = runner
            except FlashTalkError as exc:
                self.failed = str(exc)
                log.warning("motion sampler: CUDA graph capture failed, sampling eagerly (%s)", exc)
        if self.runner is None:
            return sample_window(self.model, self.sampler, audio, prev_motion, prev_audio, x_T, noise)
        return self.runner(*inputs)


def _pose_of(motion: Motion | Any, i: slice) -> Motion:
    return Motion(R=motion.R[i], exp=motion.exp[i], scale=motion.scale[i], t=motion.t[i])


class MotionWindows:
    """16-kHz speech -> renderer motion, one window (`n_motions` frames) at a time.

    Feed `push(window_audio, n_valid)` consecutive windows of `window_samples` samples (zero-padded at the
    end of a clip); each call returns the `Motion` of the window's first n_valid frames (batch = frames).
    Reproducible for a seed: x_T and any per-step noise come from one generator seeded with it.
    `graphs` (default: on CUDA): the sampling loop runs through `GraphedSampler` (per-step noise drawn from
    the same generator before the replay, so the motion equals the eager one); `graph_backend` overrides
    its capture backend (tests)."""

    def __init__(self, nets: Networks, *, sampler: SamplerConfig, seed: int, pose_smoothing: float,
                 graphs: bool | None = None, graph_backend: Any = None) -> None:
        device = next(nets.motion.parameters()).device
        self.nets = nets
        self.cfg = nets.motion.cfg
        gen = torch.Generator(device=device).manual_seed(int(seed))
        alpha = 1.0 - pose_smoothing
        self.stream = MotionStream(nets.motion, sampler=sampler, template=nets.template,
                                   ema_alpha=None if alpha >= 1.0 else alpha, generator=gen)
        self.device = device
        use = device.type == "cuda" if graphs is None else graphs
        self.sampler = GraphedSampler(nets.motion, sampler, 1, graph_backend) if use else None

    @property
    def window_samples(self) -> int:
        return self.cfg.window_samples

    @torch.no_grad()
    def push(self, audio: torch.Tensor, n_valid: int) -> Motion:
        if audio.shape != (self.window_samples,):
            raise FlashTalkError(f"a motion window takes {self.window_samples} samples, got {tuple(audio.shape)}")
        window = audio.to(self.device, torch.float32)[None]
        feats = joyvasa_audio_features(self.nets.audio, window, self.cfg.n_motions)
        if self.sampler is None:
            out = self.stream.push(feats, n_valid=n_valid).motion
        else:
            out = self._push_graphed(feats, n_valid)
        return Motion(R=out.R[0], exp=out.exp[0], scale=out.scale[0], t=out.t[0])

    def _push_graphed(self, feats: torch.Tensor, n_valid: int) -> Any:
        """`MotionStream.push` with the sampling loop through `self.sampler` (same context / EMA updates)."""
        st, model, P = self.stream, self.nets.motion, self.cfg.n_prev_motions
        audio = model.audio_feature_map(feats.to(st.x_T.dtype))
        noise = None
        if self.sampler.draws:  # what the eager sampler would draw from the generator, drawn up front
            noise = torch.randn((self.sampler.draws, *st.x_T.shape), generator=st.generator, device=st.x_T.device,
                                dtype=st.x_T.dtype)
        coef = self.sampler(audio, st.prev_motion, st.prev_audio, st.x_T, noise)
        st.prev_motion, st.prev_audio = coef[:, -P:], audio[:, -P:]
        st.windows += 1
        motion = motion_to_renderer(coef[:, :n_valid], self.nets.template, ema_alpha=st.ema_alpha,
                                    ema_previous=st.ema_last)
        st.ema_last = torch.cat([motion.scale, motion.t, motion.pitch[..., None], motion.yaw[..., None],
                                 motion.roll[..., None]], dim=-1)[:, -1]
        return motion


def clip_frames(n_samples: int, samples_per_frame: int) -> int:
    """Output frames of a clip of n_samples (joyvasa.md §1 layout without the two leading silent frames)."""
    return (n_samples + (LEAD_FRAMES + TRAIL_FRAMES) * samples_per_frame) // samples_per_frame - LEAD_FRAMES


def compose(renderer: Any, source: SourceState, generated: Motion, reference: Motion, controls: Controls, *,
            lip_absolute: bool = True, frames: torch.Tensor | None = None, fps: float = 25.0,
            seed: int = 0) -> torch.Tensor:
    """Driving keypoints [N, 21, 3] (before stitching): joyvasa.md §3.6 / liveportrait.md §10.4 relative
    mapping (lips absolute for audio-driven motion) with the controls (`flashtalk.model.controls`);
    `frames`: the output frame indices (keyframed controls, automatic blinks)."""
    return apply_controls(controls, x_c=source.x_c, source=source, generated=generated, reference=reference,
                          lip_absolute=lip_absolute, frames=frames, fps=fps,
                          retarget=renderer.stitching_retargeting_module, seed=seed)


class NetworkBackend:
    """The full network behind the `Backend` protocol (see module docstring)."""

    name = "network"
    fps = 25

    def __init__(self, nets: Networks, device: torch.device, *, sampler: str = DEFAULT_SAMPLER,
                 steps: int | None = DEFAULT_STEPS, cfg: float = DEFAULT_CFG, seeded: bool = False,
                 precision: str | None = None) -> None:
        self.nets = nets.to(device)
        self.device = device
        self.precision = resolve_precision(precision, device)
        self.fast = None  # FastRenderer, unless fp32 on the CPU (the reference renderer, bit for bit)
        if self.precision != "fp32" or device.type == "cuda":
            from flashtalk.runtime.fast_renderer import FastRenderer

            self.fast = FastRenderer(self.nets.renderer, self.precision)
        self._gathered: Any = None  # render_gathered's GraphRunner (CUDA)
        n_train = nets.motion.cfg.n_diff_steps
        if steps is not None and steps > n_train:
            log.info("sampler steps %d > the schedule's %d steps; using %d", steps, n_train, n_train)
            steps = n_train
        self.sampler = sampler_config(sampler, steps, cfg)
        if seeded:
            self.name = f"network, seeded weights ({nets.preset})"
        if nets.motion.cfg.fps != self.fps:
            raise FlashTalkError(f"motion generator runs at {nets.motion.cfg.fps} fps; the backend needs {self.fps}")

    @torch.no_grad()
    def encode(self, crop: torch.Tensor) -> SourceState:
        """crop [3, 512, 512] in [0, 1] -> the renderer's source state (input area-resized, once per portrait)."""
        size = self.nets.renderer.cfg.motion.image_size
        image = F.interpolate(crop[None].float(), size=(size, size), mode="area").clamp_(0, 1)
        return self.nets.renderer.encode_source(image)

    def prepare(self, crop: torch.Tensor, audio16k: np.ndarray, *, seed: int, controls: Mapping[str, Any],
                landmarks: Any = None) -> "SpeechAnimation":
        source = self.encode(crop)
        c = with_source_ratios(Controls.from_mapping(controls, expression_of=lambda path: self.expression_offset(path, source)),
                               landmarks)
        return SpeechAnimation(self, source, np.asarray(audio16k, dtype=np.float32), seed, c)

    def expression_offset(self, image: str | Path, neutral: SourceState | None = None) -> torch.Tensor:
        """A photo's expression [21, 3] relative to `neutral`'s (the portrait being animated), or on its
        own (controls.expression_offset) without one: the emotion offset of a reference photo."""
        from flashtalk.facecrop import face_crop
        from flashtalk.media import load_image
        from flashtalk.model.controls import expression_offset

        fc = face_crop(load_image(image, name="emotion image"), "auto", name="emotion image")
        ref = self.encode(torch.from_numpy(fc.image).to(self.device).permute(2, 0, 1).float().div_(255))
        return expression_offset(ref.exp[0].cpu(), None if neutral is None else neutral.exp[0].cpu())

    def prepare_driving(self, crop: torch.Tensor, video: str | Path, *, controls: Mapping[str, Any],
                        landmarks: Any = None, faces: Any = None) -> "DrivingAnimation":
        """Video-driven mode (LivePortrait's own use): the motion of each driving frame, relative to the first."""
        source = self.encode(crop)
        c = with_source_ratios(Controls.from_mapping(controls, driving=True,
                                                     expression_of=lambda path: self.expression_offset(path, source)),
                               landmarks)
        if c.pose_smoothing != DEFAULT_POSE_SMOOTHING:
            raise FlashTalkError("pose_smoothing applies to audio-driven motion, not to a driving video")
        return DrivingAnimation(self, source, Path(video), c, faces)

    def render(self, source: SourceState, x_d: torch.Tensor) -> torch.Tensor:
        """Stitching + warp + decode -> [N, 3, 512, 512] in [0, 1] (resized if the preset renders smaller)."""
        if self.fast is None:
            out = self.nets.renderer.render(source, x_d)
        else:
            out = self._fast_call(lambda: self.fast.render(source, x_d))
        if out.shape[-2:] != (OUT_SIZE, OUT_SIZE):
            out = F.interpolate(out, size=(OUT_SIZE, OUT_SIZE), mode="bilinear", align_corners=False)
        return out.clamp_(0, 1)


    def render_gathered(self, f_s: torch.Tensor, x_s: torch.Tensor, x_d: torch.Tensor) -> torch.Tensor:
        """The fast path on per-frame sources (f_s [N, C, D, H, W], x_s [N, K, 3], x_d [N, K, 3]; frames of
        several portraits in one call) -> [N, 3, h, w] fp32; a CUDA-graph runner with the fast renderer's
        buckets on CUDA (per-frame f_s in its static buffers), eager elsewhere."""
        from flashtalk.model.fast import render_frames

        model = self.fast.model
        if not self.fast.graphs:
            return self._fast_call(lambda: render_frames(model, f_s, x_s, x_d))
        runner = self._gathered
        if runner is None or runner.specs[0].shape != tuple(f_s.shape[1:]):
            from flashtalk.runtime.graphs import GraphRunner, InputSpec

            specs = [InputSpec(tuple(t.shape[1:]), t.dtype) for t in (f_s, x_s, x_d)]
            runner = GraphRunner(lambda f, s, d: render_frames(model, f, s, d), specs, self.fast.buckets, self.device)
            runner.capture(f_s, x_s, x_d)
            self._gathered = runner
        return runner(f_s, x_s, x_d)

    def _fast_call(self, fn):
        try:
            return fn()
        except (RuntimeError, NotImplementedError) as exc:
            if "not implemented for" not in str(exc):
                raise
            raise FlashTalkError(f"precision {self.precision} is not supported on {self.device.type} by this "
                                 f"PyTorch ({str(exc).splitlines()[0]}); use --precision fp32") from None


def _batches(x_d_chunks: Iterator[torch.Tensor], batch_size: int, render) -> Iterator[torch.Tensor]:
    """Regroup a stream of keypoint chunks into render batches of batch_size (the last may be shorter)."""
    pending: list[torch.Tensor] = []
    held = 0
    for chunk in x_d_chunks:
        pending.append(chunk)
        held += len(chunk)
        while held >= batch_size:
            flat = torch.cat(pending)
            yield render(flat[:batch_size])
            rest = flat[batch_size:]
            pending, held = ([rest] if len(rest) else []), len(rest)
    if held:
        yield render(torch.cat(pending))


def _select(chunks: Iterator[torch.Tensor], indices: list[int]) -> Iterator[torch.Tensor]:
    """The rows `indices` (sorted, repeats allowed) of the concatenation of `chunks`, chunk by chunk."""
    offset, k = 0, 0
    for chunk in chunks:
        end = offset + len(chunk)
        take = []
        while k < len(indices) and indices[k] < end:
            take.append(indices[k] - offset)
            k += 1
        if take:
            yield chunk[take]
        offset = end
        if k == len(indices):
            return


class _Rendered:
    """`frames` / `frames_at` of an animation whose `keypoints()` yields driving keypoints chunk by chunk."""

    backend: NetworkBackend
    source: SourceState

    def keypoints(self) -> Iterator[torch.Tensor]:
        raise NotImplementedError

    def frames(self, batch_size: int) -> Iterator[torch.Tensor]:
        return _batches(self.keypoints(), batch_size, lambda x: self.backend.render(self.source, x))

    def frames_at(self, indices: list[int], batch_size: int) -> Iterator[torch.Tensor]:
        if any(b < a for a, b in zip(indices, indices[1:])):
            raise FlashTalkError("frames_at: indices must be sorted")
        chunks = _select(self.keypoints(), indices)
        return _batches(chunks, batch_size, lambda x: self.backend.render(self.source, x))


class SpeechAnimation(_Rendered):
    """One audio-driven clip: motion window by window, rendered in batches as `frames` is consumed."""

    def __init__(self, backend: NetworkBackend, source: SourceState, audio: np.ndarray, seed: int,
                 controls: Controls) -> None:
        self.backend, self.source, self.audio, self.seed, self.controls = backend, source, audio, seed, controls
        self.cfg = backend.nets.motion.cfg

    def num_frames(self) -> int:
        return clip_frames(len(self.audio), self.cfg.samples_per_frame)

    def _windows(self) -> Iterator[tuple[torch.Tensor, int]]:
        """(window audio, valid frames) over the padded clip: leading / trailing silence, zero-padded tail."""
        spf, win = self.cfg.samples_per_frame, self.cfg.window_samples
        total = self.num_frames() + LEAD_FRAMES
        audio = torch.from_numpy(self.audio)
        lead = LEAD_FRAMES * spf
        for start in range(0, total * spf, win):
            window = torch.zeros(win)
            lo, hi = max(start - lead, 0), min(start + win - lead, len(audio))
            if hi > lo:
                window[lo + lead - start: hi + lead - start] = audio[lo:hi]
            yield window, min(self.cfg.n_motions, total - start // spf)

    @torch.no_grad()
    def keypoints(self) -> Iterator[torch.Tensor]:
        """Driving keypoints [n, 21, 3] of consecutive output frames, one window at a time (unstitched)."""
        gen = MotionWindows(self.backend.nets, sampler=self.backend.sampler, seed=self.seed,
                            pose_smoothing=self.controls.pose_smoothing)
        reference, skip, done = None, LEAD_FRAMES, 0
        for window, n_valid in self._windows():
            motion = gen.push(window, n_valid)
            if reference is None:
                reference = _pose_of(motion, slice(0, 1))  # d_0: the first generated frame
            motion = _pose_of(motion, slice(skip, None))
            skip = max(0, skip - n_valid)
            if motion.R.shape[0]:
                frames = torch.arange(done, done + motion.R.shape[0], device=motion.R.device)
                done += len(frames)
                yield compose(self.backend.nets.renderer, self.source, motion, reference, self.controls,
                              frames=frames, fps=self.backend.fps, seed=self.seed)



# --------------------------------------------------------------------------------------------- driving video


def _open_video(path: Path):
    import av

    if not path.is_file():
        raise FlashTalkError(f"driving video {path} not found")
    try:
        container = av.open(str(path), metadata_errors="replace")  # non-UTF-8 tags do not stop decoding
    except Exception as exc:  # noqa: BLE001 - PyAV raises many error types for unreadable files
        raise FlashTalkError(f"driving video {path}: cannot open it ({exc})") from None
    if not container.streams.video:
        container.close()
        raise FlashTalkError(f"driving video {path} has no video stream")
    return container


def _decoded(path: Path) -> Iterator[tuple[float, Any]]:
    """(time in seconds, av.VideoFrame) of every frame of the driving video."""
    container = _open_video(path)
    try:
        stream = container.streams.video[0]
        tb = stream.time_base or Fraction(1, 25)
        for i, frame in enumerate(container.decode(stream)):
            pts = frame.pts if frame.pts is not None else i
            yield float(pts * tb) if frame.pts is not None else i / 25, frame
    except FlashTalkError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise FlashTalkError(f"driving video {path}: decoding failed ({exc})") from None
    finally:
        container.close()


def video_frame_times(path: Path) -> list[float]:
    """Presentation times (s) of the video's frames, increasing; end time appended as the last entry."""
    times = [t for t, _ in _decoded(path)]
    if not times:
        raise FlashTalkError(f"driving video {path} has no frames")
    step = (times[-1] - times[0]) / (len(times) - 1) if len(times) > 1 else 1 / 25
    return times + [times[-1] + step]


def with_source_ratios(c: Controls, landmarks: Any) -> Controls:
    """The portrait's measured eye / lip ratios (LivePortrait landmarks) for eye_open / lip_open."""
    ratios = getattr(landmarks, "ratios", None)
    if ratios is None:
        return c
    return dataclasses.replace(c, source_eye=tuple(ratios.eye), source_lip=float(ratios.lip))


def driving_audio(path: str | Path, rate: int = 16000):
    """The driving video's audio at 16 kHz, or silence of the video's length when it has no audio stream."""
    from flashtalk.audio import AudioClip, load_audio

    path = Path(path)
    container = _open_video(path)
    has_audio = bool(container.streams.audio)
    container.close()
    if has_audio:
        return load_audio(path, target_rate=rate)
    times = video_frame_times(path)
    duration = times[-1] - times[0]
    log.info("driving video %s has no audio stream; the output gets %.2f s of silence", path, duration)
    return AudioClip(np.zeros(int(round(duration * rate)), np.float32), rate, duration, f"{path} (silence)")


class DrivingAnimation(_Rendered):
    """Video-driven clip: the motion extractor on each driving frame (resampled to 25 fps, nearest earlier
    frame), relative composition onto the source (liveportrait.md §10.4: full relative expression)."""

    def __init__(self, backend: NetworkBackend, source: SourceState, video: Path, controls: Controls,
                 faces: Any = None) -> None:
        self.backend, self.source, self.video, self.controls = backend, source, video, controls
        self.plan = None  # with LivePortrait's face models: its crop box and per-frame eye / lip ratios
        if faces is not None:
            from flashtalk.faces.pipeline import plan_driving

            self.plan = plan_driving((f.to_ndarray(format="rgb24") for _, f in _decoded(video)), faces,
                                     name=f"driving video {video}")
        elif "driving" in (controls.eye_open, controls.lip_open):
            raise FlashTalkError("eye_open / lip_open = driving need LivePortrait's face models beside the weights "
                                 "(`flashtalk download`)")
        self._shown: list[int] = []  # driving frame index of each image yielded
        times = video_frame_times(video)
        self.start = times[0]
        self._frames = max(1, int((times[-1] - times[0]) * backend.fps + 1e-6))

    def num_frames(self) -> int:
        return self._frames

    def _images(self) -> Iterator[torch.Tensor]:
        """Driving images [3, S, S] in [0, 1] for output frames 0.. num_frames-1 (centre square, resized)."""
        size = self.backend.nets.renderer.cfg.motion.image_size
        j, last = 0, None
        self._shown = []
        for k, (t, frame) in enumerate(_decoded(self.video)):
            while last is not None and j < self._frames and self.start + j / self.backend.fps < t - 1e-6:
                self._shown.append(k - 1)
                yield last  # output frame j shows the latest driving frame at or before its time
                j += 1
            if self.plan is not None and self.plan.box is not None:
                last = self._liveportrait_crop(frame.to_ndarray(format="rgb24"), size)
                continue
            rgb = torch.from_numpy(frame.to_ndarray(format="rgb24"))
            h, w = rgb.shape[:2]
            side = min(h, w)
            top, left = (h - side) // 2, (w - side) // 2
            img = rgb[top:top + side, left:left + side].permute(2, 0, 1)[None].float().div(255)
            last = F.interpolate(img, size=(size, size), mode="bilinear", align_corners=False,
                                 antialias=side > size).clamp(0, 1)[0]
        while last is not None and j < self._frames:
            self._shown.append(k)
            yield last
            j += 1

    def _liveportrait_crop(self, rgb: np.ndarray, size: int) -> torch.Tensor:
        """specs/faces.md §4.6: the clip's one unrotated box, a 512 crop, bilinear to the motion input size."""
        import cv2

        from flashtalk.faces.crop import driving_matrix, warp

        crop = cv2.resize(warp(rgb, driving_matrix(self.plan.box), 512), (size, size))
        return torch.from_numpy(crop).permute(2, 0, 1).float().div(255)

    def _controls_for(self, start: int, stop: int) -> Controls:
        if self.plan is None:
            return self.controls
        idx = self._shown[start:stop]
        return dataclasses.replace(self.controls, driving_eye=tuple(float(v) for v in self.plan.eye_ratio[idx, 0]),
                                   driving_lip=tuple(float(v) for v in self.plan.lip_ratio[idx, 0]))

    @torch.no_grad()
    def _motion(self, images: torch.Tensor) -> Motion:
        m = self.backend.nets.renderer.motion_extractor(images.to(self.backend.device))
        pitch, yaw, roll = (bins_to_degrees(m[k]) for k in ("pitch", "yaw", "roll"))
        n = images.shape[0]
        return Motion(R=rotation_from_degrees(pitch, yaw, roll), exp=m["exp"].view(n, -1, 3), scale=m["scale"], t=m["t"])

    def keypoints(self, chunk: int = 16) -> Iterator[torch.Tensor]:
        reference, done = None, 0
        images = self._images()
        while True:
            buf = [img for _, img in zip(range(chunk), images)]
            if not buf:
                return
            motion = self._motion(torch.stack(buf))
            if reference is None:
                reference = _pose_of(motion, slice(0, 1))
            frames = torch.arange(done, done + len(buf), device=motion.R.device)
            controls = self._controls_for(done, done + len(buf))
            done += len(buf)
            yield compose(self.backend.nets.renderer, self.source, motion, reference, controls, lip_absolute=False,
                          frames=frames, fps=self.backend.fps)
