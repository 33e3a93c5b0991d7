"""The full-network backend: LivePortrait renderer + HuBERT audio encoder + JoyVASA motion generator
behind the one backend interface (`flashtalk.runtime.backends.Backend`), for offline and
streaming alike.

    backend = NetworkBackend(nets, device)
    source = backend.encode(crop)                       # once per portrait (area-resized to 256², encoded)
    stream = backend.open(source, seed=0)               # per stream: window state (x_T, context, EMA)
    motion = backend.motion([(stream, audio, controls, due), ...])   # one audio-encoder + one sampler call
    images = backend.render([(stream, [motion]), ...], bucket)       # one stitching + warp + decode call

The steps of a tick (`motion`, then `render`):
1. plan each stream's windows (`flashtalk.runtime.windows.plan_windows`: `exact` or `low` latency);
2. one audio-encoder call on the windows of all streams, one sampler call (`WindowSampler`: guidance
   batched, the whole loop one CUDA graph on CUDA), round after round while a stream has more windows;
3. advance each stream's window state (`flashtalk.models.joyvasa.pipeline.advance_window`: context, pose
   EMA) and its cursor -> `NetworkMotion` (generated motion + frame numbers);
4. at render, compose the driving keypoints with the stream's controls of the moment (`compose`:
   docs/specs/joyvasa.md §3.6 relative mapping + `flashtalk.controls.control_set`), gather the per-frame source features
   of all streams (sessions with different portraits share one call), and run THE render-and-resize
   (`render_keypoints`): stitching, warping, decoder, 512² resize, clamp.

Offline (`flashtalk.runtime.animation.SpeechAnimation`) is a one-stream driver of the same calls:
2 frames of leading and 1 of trailing silence (docs/specs/joyvasa.md §1); the two leading frames are generated (d_0
of the relative mapping) but not shown, so frame i starts at audio time i / 25 s.

Precision (`resolve_precision`): fp32 on the CPU renders with the reference renderer; any other precision,
or any precision on CUDA, renders through `flashtalk.runtime.graphed_renderer.GraphedRenderer` (folded + fused;
CUDA graphs with batch buckets on CUDA).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from flashtalk.constants import DEFAULT_SAMPLER, FPS, FRAME_SIZE, HOP
from flashtalk.controls.apply import apply_controls
from flashtalk.controls.control_set import ControlSet
from flashtalk.errors import FlashTalkError
from flashtalk.models.hubert import joyvasa_audio_features
from flashtalk.models.joyvasa.pipeline import LEAD_FRAMES, TRAIL_FRAMES, SamplerConfig, advance_window
from flashtalk.models.liveportrait.keypoints import Motion
from flashtalk.models.liveportrait.renderer import SourceState
from flashtalk.runtime.driving import with_source_ratios
from flashtalk.runtime.windows import Latency, WindowSampler, WindowState, plan_windows
from flashtalk.weights.bundle import Networks

log = logging.getLogger(__name__)

OUT_SIZE = FRAME_SIZE
SAMPLER_NAMES = {"ddim": "ddim", "dpmpp": "dpmpp_2m", "ddpm": "ddpm"}
DEFAULT_STEPS, DEFAULT_CFG = 10, 2.0
DEFAULT_POSE_SMOOTHING = 0.99  # JoyVASA's EMA alpha 0.01
# The user's controls: `flashtalk.controls.control_set.ControlSet` (pose offsets / gains, expression scale,
# intensity, head distance, gaze, eyes, mouth, emotion offset, regions, keyframed tracks).
Controls = ControlSet


def sampler_config(
    sampler: str = DEFAULT_SAMPLER, steps: int | None = DEFAULT_STEPS, cfg: float = DEFAULT_CFG
) -> SamplerConfig:
    if sampler not in SAMPLER_NAMES:
        raise FlashTalkError(f"sampler must be one of {', '.join(SAMPLER_NAMES)}, not {sampler!r}")
    if not (math.isfinite(cfg) and 0 <= cfg <= 20):
        raise FlashTalkError(f"cfg (guidance scale) must be in [0, 20], got {cfg}")
    return SamplerConfig(SAMPLER_NAMES[sampler], None if sampler == "ddpm" else steps, 0.0, float(cfg))


def resolve_precision(precision: str | None, device: torch.device) -> str:
    """The renderer precision: None -> bf16 on CUDA, fp32 elsewhere; else one of fp32 / bf16 / fp16."""
    from flashtalk.models.liveportrait.optimized import PRECISIONS

    if precision is None:
        return "bf16" if device.type == "cuda" else "fp32"
    if precision not in PRECISIONS:
        raise FlashTalkError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision


def clip_frames(n_samples: int, samples_per_frame: int) -> int:
    """Output frames of a clip of n_samples (docs/specs/joyvasa.md §1 layout without the two leading silent frames)."""
    return (n_samples + (LEAD_FRAMES + TRAIL_FRAMES) * samples_per_frame) // samples_per_frame - LEAD_FRAMES


def compose(
    renderer: Any,
    source: SourceState,
    generated: Motion,
    reference: Motion,
    controls: Controls,
    *,
    lip_absolute: bool = True,
    frames: torch.Tensor | None = None,
    fps: float = 25.0,
    seed: int = 0,
) -> torch.Tensor:
    """THE motion composition: driving keypoints [N, 21, 3] (before stitching): docs/specs/joyvasa.md §3.6 /
    docs/specs/liveportrait.md §10.4 relative mapping (lips absolute for audio-driven motion) with the controls
    (`flashtalk.controls.control_set`); `frames`: the output frame indices (keyframed controls, automatic blinks)."""
    return apply_controls(
        controls,
        x_c=source.x_c,
        source=source,
        generated=generated,
        reference=reference,
        lip_absolute=lip_absolute,
        frames=frames,
        fps=fps,
        retarget=renderer.stitching_retargeting_module,
        seed=seed,
    )


@dataclass
class NetworkMotion:
    """Motion frames of one network stream: generated (un-composed) motion and the output frame indices;
    composed with the stream's controls of the moment at render time."""

    motion: Motion  # R [n, 3, 3], exp [n, 21, 3], scale [n, 1], t [n, 3]
    frames: torch.Tensor  # [n] int64, frame numbers on the stream's timeline

    def __len__(self) -> int:
        return int(self.frames.shape[0])

    def slice(self, start: int, stop: int) -> "NetworkMotion":
        return self.select(slice(start, stop))

    def select(self, rows: slice | torch.Tensor) -> "NetworkMotion":
        m = self.motion
        return NetworkMotion(Motion(R=m.R[rows], exp=m.exp[rows], scale=m.scale[rows], t=m.t[rows]), self.frames[rows])

    @staticmethod
    def concat(chunks: Sequence["NetworkMotion"]) -> "NetworkMotion":
        if len(chunks) == 1:
            return chunks[0]
        cat = lambda name: torch.cat([getattr(c.motion, name) for c in chunks])  # noqa: E731
        return NetworkMotion(
            Motion(R=cat("R"), exp=cat("exp"), scale=cat("scale"), t=cat("t")), torch.cat([c.frames for c in chunks])
        )


class NetworkBackend:
    """The full network behind the one backend interface (see the module docstring).

    `motion`: the windows of every stream due in a call go through one audio-encoder call and one sampler
    call (guidance batched inside), round after round. Idle frames are the model run on silence, so the
    head keeps its generated motion. Controls (`ControlSet` names) are applied when frames are rendered:
    a change takes effect on the next frame rendered. `render` stacks the driving keypoints and the
    per-frame source features into one stitching + warping + decoder call, padded to the bucket when
    `pad_to_bucket` (default on CUDA: stable shapes for graphs / cuDNN plans; on the CPU padding would
    only cost time). `graphs` (default on CUDA): the sampler's loop through a CUDA graph; `graph_backend`
    overrides its capture backend (tests)."""

    fps = FPS

    def __init__(
        self,
        nets: Networks,
        device: torch.device | str,
        *,
        sampler: str | None = None,
        steps: int | None = DEFAULT_STEPS,
        cfg: float | None = None,
        seeded: bool = False,
        precision: str | None = None,
        pad_to_bucket: bool | None = None,
        graphs: bool | None = None,
        graph_backend: Any = None,
    ) -> None:
        self.device = torch.device(device)
        self.precision = resolve_precision(precision, self.device)
        self.nets = nets.to(self.device, self.precision)  # the motion path (audio encoder + transformer) too
        self.cfg = self.nets.motion.cfg
        t = self.nets.template  # the motion template on the device (no per-window host copy)
        self.template = type(t)(**{f.name: getattr(t, f.name).to(self.device) for f in fields(t)})
        self.fast = None  # GraphedRenderer, unless fp32 on the CPU (the reference renderer, bit for bit)
        if self.precision != "fp32" or self.device.type == "cuda":
            from flashtalk.runtime.graphed_renderer import GraphedRenderer

            self.fast = GraphedRenderer(self.nets.renderer, self.precision)
        n_train = self.cfg.n_diff_steps
        if steps is not None and steps > n_train:
            log.info("sampler steps %d > the schedule's %d steps; using %d", steps, n_train, n_train)
            steps = n_train
        self.sampler = sampler_config(sampler or DEFAULT_SAMPLER, steps, DEFAULT_CFG if cfg is None else cfg)
        self.window_sampler = WindowSampler(self.nets.motion, self.sampler, graphs=graphs, backend=graph_backend)
        self.name = f"network, seeded weights ({nets.preset})" if seeded else "network"
        if self.cfg.fps != self.fps:
            raise FlashTalkError(f"motion generator runs at {self.cfg.fps} fps; the backend needs {self.fps}")
        if self.cfg.samples_per_frame != HOP:
            raise FlashTalkError(
                f"motion generator takes {self.cfg.samples_per_frame} samples a frame; "
                f"the engine needs {HOP} (16 kHz, {FPS} fps)"
            )
        self.controls = tuple(n for n in ControlSet.names() if n != "tracks")
        self.pad_to_bucket = self.device.type == "cuda" if pad_to_bucket is None else pad_to_bucket

    # ---- per portrait / per stream
    @torch.no_grad()
    def encode(self, crop: torch.Tensor, landmarks: Any = None) -> SourceState:
        """crop [3, 512, 512] in [0, 1] -> the renderer's source state (input area-resized, once per portrait),
        with the eye / lip ratios LivePortrait's landmarks measured on it (their `ratios`; None without)."""
        size = self.nets.renderer.cfg.motion.image_size
        image = F.interpolate(crop[None].float(), size=(size, size), mode="area").clamp_(0, 1)
        source = self.nets.renderer.encode_source(image)
        source.ratios = getattr(landmarks, "ratios", None)
        return source

    def open(
        self,
        portrait: SourceState,
        *,
        seed: int,
        latency: str = "exact",
        commit_frames: int | None = None,
        lookahead_frames: int | None = None,
    ) -> WindowState:
        """A stream over an encoded portrait: its window state, seeded (x_T and any per-step noise come
        from one generator). `latency` exact | low with its k (`commit_frames`) and r (`lookahead_frames`):
        see `flashtalk.runtime.windows`."""
        lat = Latency.resolve(latency, self.cfg.n_motions, commit_frames, lookahead_frames)
        motion = self.nets.motion
        p = next(motion.parameters())
        gen = torch.Generator(device=p.device).manual_seed(int(seed))
        x_T = torch.randn(
            (1, self.cfg.n_motions, self.cfg.motion_feat_dim), generator=gen, device=p.device, dtype=p.dtype
        )
        prev_motion, prev_audio = motion.start_context(1)
        return WindowState(portrait, int(seed), lat, gen, x_T, prev_motion, prev_audio)

    def check_controls(self, controls: Mapping[str, Any]) -> dict[str, Any]:
        if not isinstance(controls, Mapping):
            raise FlashTalkError(f"controls must be a mapping of name -> value; got {type(controls).__name__}")
        if isinstance(controls.get("emotion"), str):  # a path would read the server's files
            raise FlashTalkError(
                "control emotion must be 63 numbers (21 keypoints × xyz) in a live session, not a file name"
            )
        checked = ControlSet.from_mapping(controls, allowed=self.controls)
        return {k: getattr(checked, k) for k in controls}  # None: back to the default

    def lookahead_samples(self, stream: WindowState | None = None) -> int:
        """Samples past a frame's own audio it waits for: exact (default) the rest of its window; low
        (k - 1 + r) frames."""
        frames = self.cfg.n_motions - 1 if stream is None else stream.latency.lookahead_frames
        return frames * HOP

    # ---- motion
    @staticmethod
    def _set_controls(stream: WindowState, values: Mapping[str, Any] | ControlSet) -> None:
        if isinstance(values, ControlSet):  # offline: a full ControlSet (tracks, emotion from a file)
            stream.controls = values
        elif stream.controls is None or values != stream.controls_from:
            stream.controls = with_source_ratios(
                ControlSet(**{k: v for k, v in values.items() if v is not None}), getattr(stream.source, "ratios", None)
            )
            stream.controls_from = dict(values)

    def motion(self, items: Sequence[tuple[WindowState, np.ndarray, Any, int]]) -> list[NetworkMotion]:
        """The due windows of every stream (see the module docstring, steps 1-3)."""
        W = self.cfg.n_motions
        plans = []
        for stream, audio, controls, due in items:
            self._set_controls(stream, controls)
            plans.append(plan_windows(stream, len(audio) // HOP, due, W))
        made: list[list[NetworkMotion]] = [[] for _ in items]
        for r in range(max((len(p) for p in plans), default=0)):
            batch = [(i, p[r]) for i, p in enumerate(plans) if len(p) > r]
            windows = np.zeros((len(batch), W * HOP), np.float32)
            for row, (i, w) in enumerate(batch):
                windows[row, w.lead * HOP : (w.lead + w.audio) * HOP] = items[i][1][
                    w.start * HOP : (w.start + w.audio) * HOP
                ]
            states = [items[i][0] for i, _ in batch]
            coef, feats = self._sample(states, torch.from_numpy(windows))
            for row, (i, w) in enumerate(batch):
                made[i].append(self._advance(states[row], coef[row : row + 1], feats[row : row + 1], w.lead, w.commit))
        return [NetworkMotion.concat(parts) if parts else self._empty() for parts in made]

    @torch.no_grad()
    def _sample(self, states: list[WindowState], windows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One window of each stream: audio [B, window_samples] -> (coef [B, W, 70], projected audio [B, W, d])."""
        motion = self.nets.motion
        if self.device.type == "cuda":  # pinned, asynchronous copy in
            windows = windows.pin_memory().to(self.device, non_blocking=True)
        feats = joyvasa_audio_features(self.nets.audio, windows.to(self.device, torch.float32), self.cfg.n_motions)
        audio = motion.audio_feature_map(feats.to(states[0].x_T.dtype))
        return self.window_sampler(states, audio), audio

    @torch.no_grad()
    def _advance(
        self, stream: WindowState, coef: torch.Tensor, audio: torch.Tensor, lead: int, n: int
    ) -> NetworkMotion:
        """A sampled window of one stream (lead silent frames, then n new ones committed) -> the motion of
        the n frames; its context, EMA and cursor move on."""
        alpha = 1.0 - stream.controls.pose_smoothing
        gm = advance_window(stream, coef, audio, lead + n, self.template, None if alpha >= 1.0 else alpha)
        m = gm.frames()
        if stream.reference is None:
            stream.reference = Motion(R=m.R[:1], exp=m.exp[:1], scale=m.scale[:1], t=m.t[:1])
        stream.lead = 0
        frames = torch.arange(stream.frames, stream.frames + n, device=m.R.device)
        stream.frames += n
        return NetworkMotion(Motion(R=m.R[lead:], exp=m.exp[lead:], scale=m.scale[lead:], t=m.t[lead:]), frames)

    def _empty(self) -> NetworkMotion:
        z = lambda *s: torch.zeros(0, *s, device=self.device)  # noqa: E731
        return NetworkMotion(
            Motion(R=z(3, 3), exp=z(21, 3), scale=z(1), t=z(3)), torch.zeros(0, dtype=torch.long, device=self.device)
        )

    # ---- render
    def driving_keypoints(self, stream: WindowState, motion: NetworkMotion) -> torch.Tensor:
        """Driving keypoints [n, 21, 3] (before stitching) of one stream's frames with its current controls."""
        return compose(
            self.nets.renderer,
            stream.source,
            motion.motion,
            stream.reference,
            stream.controls,
            frames=motion.frames,
            fps=self.fps,
            seed=stream.seed,
        )

    def render(self, items: Sequence[tuple[WindowState, list[NetworkMotion]]], bucket: int) -> torch.Tensor:
        """One call for many streams: [sum of frames, 3, 512, 512] in [0, 1] (see the module docstring, step 4)."""
        sources, slot, x_d, rows = [], {}, [], []
        for stream, chunks in items:
            key = id(stream.source)
            if key not in slot:
                slot[key] = len(sources)
                sources.append(stream.source)
            kp = self.driving_keypoints(stream, NetworkMotion.concat(chunks))
            x_d.append(kp)
            rows.append((slot[key], len(kp)))
        n = sum(k for _, k in rows)
        if self.pad_to_bucket and bucket > n:
            rows.append((rows[-1][0], bucket - n))  # repeat the last frame: real data, sliced off below
            x_d.append(x_d[-1][-1:].expand(bucket - n, -1, -1))
        if len(sources) == 1:  # one portrait: its features broadcast over the frames (views, no copy)
            f_s, x_s = sources[0].f_s, sources[0].x_s
        else:  # the per-frame source index, made by device fills (no host-to-device copy)
            index = torch.cat([torch.full((k,), i, dtype=torch.long, device=self.device) for i, k in rows])
            f_s = torch.cat([s.f_s for s in sources]).index_select(0, index)  # [N, C, D, H, W], per frame
            x_s = torch.cat([s.x_s for s in sources]).index_select(0, index)
        return self.render_keypoints(f_s, x_s, torch.cat(x_d))[:n]

    @torch.no_grad()
    def render_keypoints(self, f_s: torch.Tensor, x_s: torch.Tensor, x_d: torch.Tensor) -> torch.Tensor:
        """THE render-and-resize: source features f_s [1 or N, C, D, H, W], x_s [1 or N, K, 3] and driving
        keypoints x_d [N, K, 3] -> stitching + warp + decode -> [N, 3, 512, 512] in [0, 1] (resized when
        the preset renders smaller)."""
        x_d = x_d.to(x_s.device, x_s.dtype)
        if self.fast is None:
            r, n = self.nets.renderer, x_d.shape[0]
            x_s, f_s = x_s.expand(n, -1, -1), f_s.expand(n, -1, -1, -1, -1)
            kp = r.stitching_retargeting_module.stitch(x_s, x_d)
            out = r.spade_generator(
                r.warping_module(f_s, kp_driving=kp, kp_source=x_s, return_deformation=False)["out"]
            )
        else:
            out = self._fast_call(lambda: self.fast.render_gathered(f_s, x_s, x_d))
        if out.shape[-2:] != (OUT_SIZE, OUT_SIZE):
            out = F.interpolate(out, size=(OUT_SIZE, OUT_SIZE), mode="bilinear", align_corners=False)
        return out.clamp_(0, 1)

    def _fast_call(self, fn):
        try:
            return fn()
        except (RuntimeError, NotImplementedError) as exc:
            if "not implemented for" not in str(exc):
                raise
            raise FlashTalkError(
                f"precision {self.precision} is not supported on {self.device.type} by this "
                f"PyTorch ({str(exc).splitlines()[0]}); use --precision fp32"
            ) from None

    # ---- offline
    def clip_controls(self, portrait: SourceState, controls: Mapping[str, Any]) -> ControlSet:
        """An offline clip's full control set (keyframe tracks, an emotion photo or file), with the
        portrait's measured eye / lip ratios."""
        return with_source_ratios(
            Controls.from_mapping(controls, expression_of=lambda path: self.expression_offset(path, portrait)),
            portrait.ratios,
        )

    def clip_frames(self, samples: int) -> int:
        return clip_frames(samples, self.cfg.samples_per_frame)

    def expression_offset(self, image: str | Path, neutral: SourceState | None = None) -> torch.Tensor:
        """A photo's expression [21, 3] relative to `neutral`'s (the portrait being animated), or on its
        own (controls.expression_offset) without one: the emotion offset of a reference photo."""
        from flashtalk.controls.emotion import expression_offset
        from flashtalk.faces.portrait_crop import face_crop
        from flashtalk.io.media import load_image

        fc = face_crop(load_image(image, name="emotion image"), "auto", name="emotion image")
        ref = self.encode(torch.from_numpy(fc.image).to(self.device).permute(2, 0, 1).float().div_(255))
        return expression_offset(ref.exp[0].cpu(), None if neutral is None else neutral.exp[0].cpu())

    def prepare_driving(
        self,
        crop: torch.Tensor,
        video: str | Path,
        *,
        controls: Mapping[str, Any],
        landmarks: Any = None,
        faces: Any = None,
    ):
        """Video-driven mode (`flashtalk.runtime.driving.DrivingAnimation`): the motion of each driving frame,
        relative to the first."""
        from flashtalk.runtime.driving import DrivingAnimation

        source = self.encode(crop, landmarks)
        c = with_source_ratios(
            Controls.from_mapping(
                controls, driving=True, expression_of=lambda path: self.expression_offset(path, source)
            ),
            source.ratios,
        )
        if c.pose_smoothing != DEFAULT_POSE_SMOOTHING:
            raise FlashTalkError("pose_smoothing applies to audio-driven motion, not to a driving video")
        return DrivingAnimation(self, source, Path(video), c, faces)
