"""Live streaming sessions: a portrait encoded once, PCM chunks in, timestamped 512x512 frames out.

    backend = PreviewStreamingBackend(device)
    portrait = encode_portrait(backend, "face.jpg")          # crop + encode, once; share it across sessions
    session = Session(backend, portrait, sample_rate=48000, sample_format="s16le")
    scheduler = Scheduler(backend); scheduler.admit(session)  # flashtalk.runtime.scheduler
    session.push_audio(pcm_bytes)                              # any thread; resampled to 16 kHz here
    scheduler.step()                                           # or scheduler.start() for a worker thread
    for item in session.poll():                                # Frame (uint8 [512, 512, 3] + its audio) or Event
        ...

A backend follows `StreamingBackend`: per-portrait `encode`, per-session `open`, and two batched calls,
`motion` (whole frames of 16-kHz audio of many sessions -> per-frame motion) and `render` (motion frames
of many sessions -> images in one call), which the scheduler calls once per tick.

Threading: the public methods (`push_audio`, `end_speech`, `interrupt`, `set_controls`, `close`, `poll`)
may be called from any one client thread; they only queue commands. The scheduler's thread applies them
(`_apply`), generates motion and renders. Frame i shows audio time [i, i + 1) / fps of the session's
media timeline (pts = i / fps seconds); frames come out in order with increasing pts. While no audio
arrives and `idle` is on, the session fills the timeline with frames driven by silence once the wall
clock runs more than `IDLE_SLACK_S` ahead of it, so the head keeps moving.
"""

from __future__ import annotations

import collections
import math
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping, Protocol, Sequence

import numpy as np

from flashtalk.errors import FlashTalkError

if TYPE_CHECKING:
    import torch

MODEL_RATE = 16000
FPS = 25
HOP = MODEL_RATE // FPS  # 16-kHz samples per frame
FRAME_SIZE = 512
SAMPLE_FORMATS = {"s16le": np.dtype("<i2"), "f32le": np.dtype("<f4")}
IDLE_SLACK_S = 0.2  # idle frames start once the wall clock is this far ahead of the media timeline
MAX_IDLE_FRAMES_PER_STEP = 5
STALL_FLUSH_S = 0.5  # audio waiting for a backend's look-ahead is made into frames after this long without more
MAX_QUEUED_AUDIO_S = 30.0  # push_audio refuses audio beyond this much not yet turned into motion
MAX_OUTPUT_BACKLOG = 250  # frames not yet polled; older ones are dropped (and counted) beyond this
PREVIEW_CONTROLS = ("yaw", "pitch", "roll", "expression_scale", "head_distance", "mouth_open", "blink")
# range of each preview control (names and meanings as in flashtalk.model.controls)
PREVIEW_LIMITS = {"yaw": (-30.0, 30.0), "pitch": (-30.0, 30.0), "roll": (-30.0, 30.0), "expression_scale": (0.0, 2.0),
                  "head_distance": (0.5, 2.0), "mouth_open": (-90.0, 120.0), "blink": (-20.0, 5.0)}


# ------------------------------------------------------------------------------------ backend protocol


class MotionChunk(Protocol):
    """Per-frame motion of one session, as a backend produces it: sliceable along frames."""

    def __len__(self) -> int: ...

    def slice(self, start: int, stop: int) -> "MotionChunk": ...


class StreamingBackend(Protocol):
    name: str
    fps: int
    device: "torch.device"
    controls: tuple[str, ...]  # control names `check_controls` accepts

    def encode(self, crop: "torch.Tensor", landmarks: Any) -> Any:
        """Per-portrait state from a [3, 512, 512] float crop in [0, 1] (done once per portrait)."""
        ...

    def open(self, portrait: Any, *, seed: int) -> Any:
        """Per-session stream state (motion history, random state) over an encoded portrait."""
        ...

    def check_controls(self, controls: Mapping[str, Any]) -> dict[str, float]:
        """Validated controls, or FlashTalkError naming the bad key / value."""
        ...

    def lookahead_samples(self) -> int:
        """16-kHz samples past the end of a frame's own audio needed before that frame can be made."""
        ...

    def motion(self, items: Sequence[tuple[Any, np.ndarray, Mapping[str, Any], int]]) -> list[MotionChunk]:
        """One call for many sessions: (state, whole frames of 16-kHz float32 audio, controls, due) ->
        motion of the first k frames of each, in order, due <= k <= len(audio) // HOP: a backend with a
        look-ahead may hold back frames (the session offers their audio again next tick) but must make the
        first `due` now (end of speech, idle silence, stalled audio). The audio may be empty (controls only)."""
        ...

    def render(self, items: Sequence[tuple[Any, list[MotionChunk]]], bucket: int) -> "torch.Tensor":
        """One call for many sessions: [sum of frames, 3, 512, 512] float in [0, 1], items in order.
        `bucket` (>= the frame count) is the padded batch size a graph-replaying backend runs at."""
        ...


@dataclass
class EncodedPortrait:
    """A portrait cropped and encoded once by one backend; sessions over it share the encoding."""

    backend_name: str
    state: Any
    crop: np.ndarray  # [512, 512, 3] uint8, the face crop


def encode_portrait(backend: StreamingBackend, image: Any, *, crop: Any = "auto") -> EncodedPortrait:
    """Load `image` (path, PIL image or RGB uint8 array), crop the face and encode it with `backend`."""
    import torch

    from flashtalk.facecrop import face_crop
    from flashtalk.media import load_image

    photo = load_image(image)
    fc = face_crop(photo, crop)
    tensor = torch.from_numpy(fc.image).to(backend.device).permute(2, 0, 1).float().div_(255)
    return EncodedPortrait(backend.name, backend.encode(tensor, fc.landmarks), fc.image)


# ------------------------------------------------------------------------------------ preview backend


@dataclass
class _PreviewStream:
    renderer: Any  # flashtalk.preview.PreviewRenderer, shared by the sessions of one portrait
    motion: Any  # flashtalk.preview.PreviewMotionStream of this session


class PreviewStreamingBackend:
    """The weights-free preview behind `StreamingBackend`. Controls: yaw / pitch / roll offsets in degrees
    (within ±30), expression_scale in [0, 2] (scales mouth opening and lip shape), head_distance (scale),
    mouth_open and blink (see `flashtalk.model.controls.apply_preview_controls`)."""

    name = "preview"
    fps = FPS
    controls = PREVIEW_CONTROLS

    def __init__(self, device: "torch.device | str | None" = None) -> None:
        import torch

        self.device = torch.device(device) if device is not None else torch.device("cpu")

    def encode(self, crop: "torch.Tensor", landmarks: Any) -> Any:
        from flashtalk.preview import FaceLayout, PreviewRenderer

        layout = None
        if landmarks is not None:
            try:
                layout = FaceLayout(landmarks.left_eye, landmarks.right_eye, landmarks.mouth)
            except FlashTalkError:
                layout = None  # landmarks implausible for the preview: keep the canonical layout
        return PreviewRenderer(crop, layout=layout, device=self.device)

    def open(self, portrait: Any, *, seed: int) -> _PreviewStream:
        from flashtalk.preview import PreviewMotionStream

        return _PreviewStream(portrait, PreviewMotionStream(fps=self.fps, seed=seed))

    def check_controls(self, controls: Mapping[str, Any]) -> dict[str, float]:
        if not isinstance(controls, Mapping):
            raise FlashTalkError(f"controls must be a mapping of name -> number; got {type(controls).__name__}")
        unknown = sorted(set(controls) - set(self.controls))
        if unknown:
            raise FlashTalkError(f"unknown controls {unknown} for the {self.name} backend "
                                 f"(known: {', '.join(self.controls)})")
        out = {}
        for key, value in controls.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise FlashTalkError(f"control {key} must be a finite number; got {value!r}")
            limit = PREVIEW_LIMITS[key]
            if not limit[0] <= value <= limit[1]:
                raise FlashTalkError(f"control {key} must be in [{limit[0]:g}, {limit[1]:g}]; got {value!r}")
            out[key] = float(value)
        return out

    def lookahead_samples(self) -> int:
        return 0  # the preview motion is causal: a frame needs only its own audio and what came before

    def motion(self, items: Sequence[tuple[Any, np.ndarray, Mapping[str, Any], int]]) -> list[MotionChunk]:
        from flashtalk.model.controls import apply_preview_controls

        out = []
        for stream, audio, controls, _ in items:  # causal: every frame now
            out.append(apply_preview_controls(stream.motion.push(audio), controls))
        return out

    def render(self, items: Sequence[tuple[Any, list[MotionChunk]]], bucket: int) -> "torch.Tensor":
        # The preview renderer holds one portrait per instance, so each session's frames are one render
        # call inside this batched call; no padding to `bucket` (no graphs here).
        import torch

        from flashtalk.preview import PreviewMotion

        return torch.cat([stream.renderer.render(PreviewMotion.concat(list(chunks), fps=self.fps))
                          for stream, chunks in items])


# ------------------------------------------------------------------------------------ network backend


@dataclass
class NetworkMotion:
    """Motion frames of one network session: generated (un-composed) motion and the output frame indices;
    composed with the session's controls of the moment at render time."""

    motion: Any  # flashtalk.model.keypoints.Motion: R [n, 3, 3], exp [n, 21, 3], scale [n, 1], t [n, 3]
    frames: "torch.Tensor"  # [n] int64, frame numbers on the session's timeline

    def __len__(self) -> int:
        return int(self.frames.shape[0])

    def slice(self, start: int, stop: int) -> "NetworkMotion":
        from flashtalk.model.keypoints import Motion

        m = self.motion
        return NetworkMotion(Motion(R=m.R[start:stop], exp=m.exp[start:stop], scale=m.scale[start:stop],
                                    t=m.t[start:stop]), self.frames[start:stop])

    @staticmethod
    def concat(chunks: Sequence["NetworkMotion"]) -> "NetworkMotion":
        import torch

        from flashtalk.model.keypoints import Motion

        cat = lambda name: torch.cat([getattr(c.motion, name) for c in chunks])  # noqa: E731
        return NetworkMotion(Motion(R=cat("R"), exp=cat("exp"), scale=cat("scale"), t=cat("t")),
                             torch.cat([c.frames for c in chunks]))


@dataclass
class _NetworkStream:
    """Per-session state of the network backend: motion context of the window sampler, pose EMA, the
    reference frame d_0 of the relative mapping, the frame cursor and the controls."""

    source: Any  # flashtalk.model.renderer.SourceState of the portrait (shared by its sessions)
    seed: int
    generator: "torch.Generator"
    x_T: "torch.Tensor"  # [1, W, motion_dim], the same initial noise for every window (as offline)
    prev_motion: "torch.Tensor"  # [1, P, motion_dim] context: the motion of the P frames before the next window
    prev_audio: "torch.Tensor"  # [1, P, d] their projected audio features
    ema_last: "torch.Tensor | None" = None  # [1, 7] smoothed pose of the last frame made
    reference: Any = None  # Motion of d_0, the first generated (silent lead) frame
    lead: int = 0  # silent frames still to put before the next window's audio (the clip's leading silence)
    frames: int = 0  # output frames made so far
    controls: Any = None  # flashtalk.model.controls.ControlSet
    controls_from: dict = field(default_factory=dict)  # the mapping `controls` was made from


class NetworkStreamingBackend:
    """The full network (LivePortrait renderer + HuBERT + JoyVASA motion generator) behind `StreamingBackend`.

    Motion is made a window (`n_motions` frames) at a time, exactly as the offline `NetworkBackend` does
    (leading silence, the previous window as context, the same x_T, pose EMA): a frame waits until its
    window's audio is complete (`lookahead_samples`: up to a window less one frame) unless the session flushes
    (end of speech, idle, STALL_FLUSH_S without audio), which zero-pads the window as the offline last window
    is; the next window's context is then the last frames actually made. The windows of all sessions due in
    a tick go through one audio-encoder call and one sampler call (guidance batched inside). Idle frames are
    the model run on silence, so the head keeps its generated motion. Controls (`ControlSet` names) are
    applied when frames are rendered: a change takes effect on the next frame rendered. `render` stacks the
    driving keypoints and the per-frame source features (f_s, x_s gathered per frame, so sessions with
    different portraits share a call) into one stitching + warping + decoder call, padded to the bucket on
    CUDA (stable shapes for graphs / cuDNN plans; on the CPU padding would only cost time). `precision`
    (default bf16 on CUDA, fp32 on the CPU): as `NetworkBackend`'s: the fast renderer (CUDA graphs on
    CUDA) unless fp32 on the CPU."""

    fps = FPS

    def __init__(self, nets: Any, device: "torch.device | str", *, sampler: str | None = None,
                 steps: int | None = None, cfg: float | None = None, seeded: bool = False,
                 pad_to_bucket: bool | None = None, precision: str | None = None) -> None:
        import torch

        from flashtalk.model.controls import ControlSet
        from flashtalk.runtime import network as nw

        self.device = torch.device(device)
        self.offline = nw.NetworkBackend(nets, self.device, sampler=sampler or nw.DEFAULT_SAMPLER,
                                         steps=nw.DEFAULT_STEPS if steps is None else steps,
                                         cfg=nw.DEFAULT_CFG if cfg is None else cfg, seeded=seeded,
                                         precision=precision)
        self.precision = self.offline.precision
        self.nets = self.offline.nets
        self.name = self.offline.name
        self.cfg = self.nets.motion.cfg
        if self.cfg.samples_per_frame != HOP:
            raise FlashTalkError(f"motion generator takes {self.cfg.samples_per_frame} samples a frame; "
                                 f"streaming needs {HOP} (16 kHz, {FPS} fps)")
        self.controls = tuple(n for n in ControlSet.names() if n != "tracks")
        self.pad_to_bucket = self.device.type == "cuda" if pad_to_bucket is None else pad_to_bucket

    # ---- per portrait / per session
    def encode(self, crop: "torch.Tensor", landmarks: Any) -> Any:
        return self.offline.encode(crop)  # area-resized to the renderer's input, encoded once

    def open(self, portrait: Any, *, seed: int) -> _NetworkStream:
        import torch

        from flashtalk.model.motion_pipeline import LEAD_FRAMES

        motion = self.nets.motion
        p = next(motion.parameters())
        gen = torch.Generator(device=p.device).manual_seed(int(seed))
        x_T = torch.randn((1, self.cfg.n_motions, self.cfg.motion_feat_dim), generator=gen, device=p.device,
                          dtype=p.dtype)
        prev_motion, prev_audio = motion.start_context(1)
        return _NetworkStream(portrait, seed, gen, x_T, prev_motion, prev_audio, lead=LEAD_FRAMES)

    def check_controls(self, controls: Mapping[str, Any]) -> dict[str, Any]:
        from flashtalk.model.controls import ControlSet

        if not isinstance(controls, Mapping):
            raise FlashTalkError(f"controls must be a mapping of name -> value; got {type(controls).__name__}")
        if isinstance(controls.get("emotion"), str):  # a path would read the server's files
            raise FlashTalkError("control emotion must be 63 numbers (21 keypoints × xyz) in a live session, "
                                 "not a file name")
        checked = ControlSet.from_mapping(controls, allowed=self.controls)
        return {k: getattr(checked, k) for k in controls}  # None: back to the default

    def lookahead_samples(self) -> int:
        return (self.cfg.n_motions - 1) * HOP  # the first frame of a window waits for the window's last

    # ---- motion
    def _controls(self, stream: _NetworkStream, values: Mapping[str, Any]) -> None:
        from flashtalk.model.controls import ControlSet

        if stream.controls is None or values != stream.controls_from:
            stream.controls = ControlSet(**{k: v for k, v in values.items() if v is not None})
            stream.controls_from = dict(values)

    def motion(self, items: Sequence[tuple[Any, np.ndarray, Mapping[str, Any], int]]) -> list[NetworkMotion]:
        """Whole windows of every session (and the due frames, zero-padded), one batched sampler call per
        round of windows; see the class docstring."""
        import torch

        W = self.cfg.n_motions
        plans = []  # per item: [(window audio [W * HOP], new frames in it)]
        for stream, audio, controls, due in items:
            self._controls(stream, controls)
            have, used, lead, windows = len(audio) // HOP, 0, stream.lead, []
            while used < have:
                n = min(W - lead, have - used)
                if n < W - lead and used + n > due:
                    n = max(0, due - used)  # a partial window only for frames that are due
                if n == 0:
                    break
                window = np.zeros(W * HOP, np.float32)
                window[lead * HOP:(lead + n) * HOP] = audio[used * HOP:(used + n) * HOP]
                windows.append((window, lead, n))
                used, lead = used + n, 0
            plans.append(windows)
        made: list[list] = [[] for _ in items]
        for r in range(max((len(p) for p in plans), default=0)):
            batch = [(i, p[r]) for i, p in enumerate(plans) if len(p) > r]
            coef, audio_feat = self._sample([items[i][0] for i, _ in batch],
                                            torch.from_numpy(np.stack([w for _, (w, _, _) in batch])))
            for row, (i, (_, lead, n)) in enumerate(batch):
                made[i].append(self._advance(items[i][0], coef[row:row + 1], audio_feat[row:row + 1], lead, n))
        return [NetworkMotion.concat(parts) if parts else self._empty() for parts in made]

    def _empty(self) -> NetworkMotion:
        import torch

        from flashtalk.model.keypoints import Motion

        z = lambda *s: torch.zeros(0, *s, device=self.device)  # noqa: E731
        return NetworkMotion(Motion(R=z(3, 3), exp=z(21, 3), scale=z(1), t=z(3)),
                             torch.zeros(0, dtype=torch.long, device=self.device))

    def _sample(self, streams: list[_NetworkStream], windows: "torch.Tensor") -> tuple["torch.Tensor", "torch.Tensor"]:
        """One window of each stream, batched: audio [B, window_samples] -> (coef [B, W, 70], projected
        audio features [B, W, d]); noise of the stochastic samplers from each stream's own generator."""
        import torch

        from flashtalk.model.audio_encoder import joyvasa_audio_features
        from flashtalk.model.samplers import ddim_sample, ddpm_sample, dpmpp_2m_sample

        model, cfg, s = self.nets.motion, self.cfg, self.offline.sampler
        with torch.no_grad():
            x_T = torch.cat([st.x_T for st in streams])
            feats = joyvasa_audio_features(self.nets.audio, windows.to(self.device, torch.float32), cfg.n_motions)
            audio = model.audio_feature_map(feats.to(x_T.dtype))
            x0_fn = model.guided_x0_fn(audio, torch.cat([st.prev_motion for st in streams]),
                                       torch.cat([st.prev_audio for st in streams]), s.cfg_scale)
            sched = model.schedule()
            draws = s.noise_draws(cfg.n_diff_steps)
            noise = None
            if draws:
                noise = torch.cat([torch.randn((draws, 1, *x_T.shape[1:]), generator=st.generator, device=x_T.device,
                                               dtype=x_T.dtype) for st in streams], dim=1)
            if s.name == "ddpm":
                coef = ddpm_sample(x0_fn, x_T, sched, noise=noise)
            elif s.name == "ddim":
                coef = ddim_sample(x0_fn, x_T, sched, s.steps or cfg.n_diff_steps, eta=s.eta, noise=noise)
            else:
                coef = dpmpp_2m_sample(x0_fn, x_T, sched, s.steps or cfg.n_diff_steps)
        return coef, audio

    def _advance(self, stream: _NetworkStream, coef: "torch.Tensor", audio: "torch.Tensor", lead: int,
                 n: int) -> NetworkMotion:
        """A sampled window of one stream (lead silent frames, then n new ones) -> the motion of the n
        frames; moves the stream's context, EMA and cursor on."""
        import torch

        from flashtalk.model.keypoints import Motion
        from flashtalk.model.motion_pipeline import motion_to_renderer

        P, k = self.cfg.n_prev_motions, lead + n
        alpha = 1.0 - stream.controls.pose_smoothing
        with torch.no_grad():
            gm = motion_to_renderer(coef[:, :k], self.nets.template, ema_alpha=None if alpha >= 1.0 else alpha,
                                    ema_previous=stream.ema_last)
            stream.ema_last = torch.cat([gm.scale, gm.t, gm.pitch[..., None], gm.yaw[..., None], gm.roll[..., None]],
                                        dim=-1)[:, -1]
            if k == self.cfg.n_motions:  # a whole window: its last P frames, as offline
                stream.prev_motion, stream.prev_audio = coef[:, -P:], audio[:, -P:]
            else:  # zero-padded: the context is the last P frames made, not the padding's
                stream.prev_motion = torch.cat([stream.prev_motion, coef[:, :k]], dim=1)[:, -P:]
                stream.prev_audio = torch.cat([stream.prev_audio, audio[:, :k]], dim=1)[:, -P:]
            m = gm.frames()
            if stream.reference is None:
                stream.reference = Motion(R=m.R[:1], exp=m.exp[:1], scale=m.scale[:1], t=m.t[:1])
        stream.lead = 0
        frames = torch.arange(stream.frames, stream.frames + n, device=m.R.device)
        stream.frames += n
        return NetworkMotion(Motion(R=m.R[lead:], exp=m.exp[lead:], scale=m.scale[lead:], t=m.t[lead:]), frames)

    # ---- render
    def driving_keypoints(self, stream: _NetworkStream, motion: NetworkMotion) -> "torch.Tensor":
        """Driving keypoints [n, 21, 3] (before stitching) of one session's frames with its current controls."""
        from flashtalk.runtime.network import compose

        return compose(self.nets.renderer, stream.source, motion.motion, stream.reference, stream.controls,
                       frames=motion.frames, fps=self.fps, seed=stream.seed)

    def render(self, items: Sequence[tuple[Any, list[NetworkMotion]]], bucket: int) -> "torch.Tensor":
        import torch
        import torch.nn.functional as F

        from flashtalk.runtime.network import OUT_SIZE

        r = self.nets.renderer
        sources, slot, x_d, rows = [], {}, [], []
        for stream, chunks in items:
            key = id(stream.source)
            if key not in slot:
                slot[key] = len(sources)
                sources.append(stream.source)
            kp = self.driving_keypoints(stream, NetworkMotion.concat(chunks))
            x_d.append(kp)
            rows += [slot[key]] * len(kp)
        n = len(rows)
        if self.pad_to_bucket and bucket > n:
            rows += [rows[-1]] * (bucket - n)  # repeat the last frame: real data, sliced off below
            x_d.append(x_d[-1][-1:].expand(bucket - n, -1, -1))
        index = torch.tensor(rows, device=self.device)
        with torch.no_grad():
            f_s = torch.cat([s.f_s for s in sources]).index_select(0, index)  # [N, C, D, H, W], per frame
            x_s = torch.cat([s.x_s for s in sources]).index_select(0, index)
            x_d = torch.cat(x_d).to(x_s.device, x_s.dtype)
            if self.offline.fast is not None:  # precision != fp32 or CUDA: the fast path (graphs on CUDA)
                out = self.offline.render_gathered(f_s, x_s, x_d)
            else:
                kp = r.stitching_retargeting_module.stitch(x_s, x_d)
                out = r.spade_generator(r.warping_module(f_s, kp_driving=kp, kp_source=x_s,
                                                         return_deformation=False)["out"])
            if out.shape[-2:] != (OUT_SIZE, OUT_SIZE):
                out = F.interpolate(out, size=(OUT_SIZE, OUT_SIZE), mode="bilinear", align_corners=False)
        return out[:n].clamp_(0, 1)


# ------------------------------------------------------------------------------------ session


@dataclass(frozen=True)
class Frame:
    index: int  # frame number on the session's media timeline
    pts: float  # seconds, index / fps
    image: np.ndarray  # [512, 512, 3] uint8 RGB, watermarked when the watermark module is installed
    audio: np.ndarray  # the 16-kHz float32 samples that drove this frame (HOP of them; silence when idle)
    epoch: int  # interrupt generation the audio belonged to
    idle: bool  # driven by silence filled in while no audio arrived
    latency_s: float | None  # audio complete -> frame ready (None for idle frames)


@dataclass(frozen=True)
class Event:
    kind: str  # "end" (all frames of the speech ended by end_speech() are out) | "interrupted"
    frames: int  # frames on the timeline so far
    epoch: int


@dataclass
class _Pending:
    """Motion frames waiting for the renderer, with their bookkeeping."""

    motion: MotionChunk
    first: int  # index of motion frame 0
    audio: np.ndarray  # [len * HOP]
    arrival: float | None  # when the audio that completed these frames arrived
    epoch: int
    idle: bool
    taken: int = 0


@dataclass
class SessionStats:
    frames_out: int = 0
    idle_frames: int = 0
    dropped_frames: int = 0  # rendered but dropped: output backlog over MAX_OUTPUT_BACKLOG
    latencies: list[float] = field(default_factory=list)  # seconds, latest last (bounded)


class Session:
    """One live talking head. See the module docstring for the flow and threading rules."""

    def __init__(self, backend: StreamingBackend, portrait: EncodedPortrait | Any, *, seed: int = 0,
                 sample_rate: int = MODEL_RATE, sample_format: str = "s16le",
                 controls: Mapping[str, Any] | None = None, idle: bool = True, watermark: bool = True,
                 watermark_key: str | None = None, clock: Callable[[], float] = time.monotonic,
                 on_output: Callable[[], None] | None = None, crop: Any = "auto") -> None:
        from flashtalk.audio import StreamingResampler
        from flashtalk.runtime.engine import DEFAULT_WATERMARK_KEY, _load_watermark, _version

        if sample_format not in SAMPLE_FORMATS:
            raise FlashTalkError(f"sample_format must be one of {sorted(SAMPLE_FORMATS)}; got {sample_format!r}")
        if isinstance(sample_rate, bool) or not isinstance(sample_rate, int) or not 4000 <= sample_rate <= 192000:
            raise FlashTalkError(f"sample_rate must be an integer in [4000, 192000] Hz; got {sample_rate!r}")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise FlashTalkError(f"seed must be a non-negative integer; got {seed!r}")
        if not isinstance(portrait, EncodedPortrait):
            portrait = encode_portrait(backend, portrait, crop=crop)
        elif portrait.backend_name != backend.name:
            raise FlashTalkError(f"portrait was encoded by the {portrait.backend_name} backend, "
                                 f"not {backend.name}")
        self.backend = backend
        self.portrait = portrait
        self.sample_rate, self.sample_format = sample_rate, sample_format
        self._dtype = SAMPLE_FORMATS[sample_format]
        self._resampler_cls = StreamingResampler
        self._resampler = StreamingResampler(sample_rate, MODEL_RATE) if sample_rate != MODEL_RATE else None
        self._controls = backend.check_controls(controls or {})
        self.idle = idle
        self._clock = clock
        self._on_output = on_output
        self._embed = _load_watermark() if watermark else None
        self.watermarked = self._embed is not None
        self._wm_key, self._wm_payload = watermark_key or DEFAULT_WATERMARK_KEY, f"FlashTalk {_version()}"
        self._stream = backend.open(portrait.state, seed=seed)

        self.epoch = 0  # bumped by interrupt() in the client thread; read by both
        self.closed = False
        self._queued = 0  # 16-kHz samples pushed but not yet turned into motion (approximate, both threads)
        self._inbox: collections.deque = collections.deque()
        self._out: collections.deque = collections.deque()
        self._out_lock = threading.Lock()
        self.stats = SessionStats()
        # worker-side state
        self._buf = np.zeros(0, np.float32)  # 16-kHz audio not yet a whole frame
        self._buf_epoch = 0
        self._applied_epoch = 0
        self._pending: collections.deque[_Pending] = collections.deque()
        self._next_index = 0  # frames on the timeline (motion generated)
        self._ends: collections.deque[tuple[int, int]] = collections.deque()  # (frames, epoch) to announce
        self._start: float | None = None
        self._ready: list[tuple[np.ndarray, float | None, int]] = []  # whole-frame audio awaiting motion
        self._controls_sent = False  # the backend has seen the current controls
        self._held = 0  # ready frames the backend held back last time (not offered again until more come)
        self._now = 0.0
        self._last_audio = -math.inf  # when audio last arrived

    # ---- client side ---------------------------------------------------------------------------
    @property
    def lookahead_s(self) -> float:
        """Audio a frame needs beyond its own 40 ms before it can be made: the resampler's filter
        half-length plus the backend's look-ahead (reported separately from compute latency)."""
        extra = 0.0 if self._resampler is None else self._resampler.K / self.sample_rate
        return extra + self.backend.lookahead_samples() / MODEL_RATE

    def push_audio(self, pcm: bytes | bytearray | memoryview | np.ndarray) -> None:
        """Queue a chunk: bytes in `sample_format`, or a 1-D int16 / float array, at `sample_rate`."""
        self._check_open()
        samples = self._decode(pcm)
        if self._resampler is not None:
            samples = self._resampler.push(samples)
        if self._queued + len(samples) > MAX_QUEUED_AUDIO_S * MODEL_RATE:
            raise FlashTalkError(f"audio queue full: more than {MAX_QUEUED_AUDIO_S:g} s of audio is waiting; "
                                 "send audio no faster than it can be animated")
        if len(samples):
            self._queued += len(samples)
            self._inbox.append(("audio", self.epoch, self._clock(), samples.astype(np.float32, copy=False)))

    def end_speech(self) -> None:
        """End of an utterance: the partial last frame is padded with silence and rendered, then an
        Event("end") follows its frames. Audio pushed afterwards starts a new utterance."""
        self._check_open()
        if self._resampler is not None:
            tail = self._resampler.flush()
            self._resampler = self._resampler_cls(self.sample_rate, MODEL_RATE)
            if len(tail):
                self._queued += len(tail)
                self._inbox.append(("audio", self.epoch, self._clock(), tail))
        self._inbox.append(("end", self.epoch, self._clock(), None))

    def interrupt(self) -> None:
        """Drop all queued audio and every frame not yet polled; the timeline goes on from there."""
        self._check_open()
        self.epoch += 1
        if self._resampler is not None:
            self._resampler = self._resampler_cls(self.sample_rate, MODEL_RATE)
        self._inbox.append(("interrupt", self.epoch, self._clock(), None))

    def set_controls(self, controls: Mapping[str, Any]) -> None:
        """Change controls from the next motion frame on (merged into the current ones)."""
        self._check_open()
        checked = self.backend.check_controls(controls)
        self._inbox.append(("controls", self.epoch, self._clock(), checked))

    def close(self) -> None:
        self.closed = True
        self._inbox.clear()

    def poll(self) -> list[Frame | Event]:
        """Everything ready so far, in order (frames of interrupted audio are left out)."""
        with self._out_lock:
            items = list(self._out)
            self._out.clear()
        epoch = self.epoch
        return [x for x in items if x.epoch >= epoch]

    def _check_open(self) -> None:
        if self.closed:
            raise FlashTalkError("session is closed")

    def _decode(self, pcm) -> np.ndarray:
        if isinstance(pcm, np.ndarray):
            if pcm.ndim != 1:
                raise FlashTalkError(f"PCM chunk must be 1-D mono; got shape {pcm.shape}")
            if pcm.dtype == np.int16:
                x = pcm.astype(np.float32) / 32768.0
            elif pcm.dtype in (np.float32, np.float64):
                x = pcm.astype(np.float32)
            else:
                raise FlashTalkError(f"PCM chunk dtype must be int16, float32 or float64; got {pcm.dtype}")
        elif isinstance(pcm, (bytes, bytearray, memoryview)):
            data = bytes(pcm)
            if len(data) % self._dtype.itemsize:
                raise FlashTalkError(f"PCM chunk of {len(data)} bytes is not a whole number of "
                                     f"{self.sample_format} samples ({self._dtype.itemsize} bytes each)")
            raw = np.frombuffer(data, self._dtype)
            x = raw.astype(np.float32) / 32768.0 if self._dtype.kind == "i" else raw.astype(np.float32)
        else:
            raise FlashTalkError(f"PCM chunk must be bytes or a numpy array; got {type(pcm).__name__}")
        if x.size and not np.isfinite(x).all():
            raise FlashTalkError("PCM chunk contains NaN or infinite samples")
        return x

    # ---- worker side (the scheduler's thread) -----------------------------------------------------
    def _apply(self, now: float) -> None:
        """Apply queued commands; collect whole frames of audio (and idle silence) for motion."""
        if self._start is None:
            self._start = now
        self._now = now
        while self._inbox:
            kind, epoch, t, payload = self._inbox.popleft()
            if kind == "interrupt":
                self._applied_epoch = epoch
                self._pending.clear()
                self._queued -= sum(len(a) for a, t, _ in self._ready if t is not None)
                self._ready.clear()
                self._held = 0
                self._ends.clear()
                self._queued -= len(self._buf)
                self._buf = np.zeros(0, np.float32)
                self._emit([Event("interrupted", self._next_index, epoch)])
            elif epoch < self._applied_epoch or epoch < self.epoch:
                if kind == "audio":
                    self._queued -= len(payload)
                continue  # audio / ends sent before an interrupt the client already issued
            elif kind == "controls":
                self._controls = {**self._controls, **payload}
                self._controls_sent = False
            elif kind == "audio":
                self._last_audio = t
                self._buf = np.concatenate([self._buf, payload])
                whole = len(self._buf) // HOP * HOP
                if whole:
                    self._ready.append((self._buf[:whole], t, epoch))
                    self._buf = self._buf[whole:]
            elif kind == "end":
                if len(self._buf):
                    self._queued += HOP - len(self._buf)
                    self._ready.append((np.pad(self._buf, (0, HOP - len(self._buf))), t, epoch))
                    self._buf = np.zeros(0, np.float32)
                frames = self._next_index + sum(len(a) // HOP for a, _, _ in self._ready)
                self._ends.append((frames, epoch))
        if self.idle and not self._ready and not self._pending and not len(self._buf):
            behind = (now - self._start) - self._next_index / FPS - IDLE_SLACK_S
            n = min(int(behind * FPS), MAX_IDLE_FRAMES_PER_STEP)
            if n > 0:
                self._ready.append((np.zeros(n * HOP, np.float32), None, self._applied_epoch))
        self._announce_ends()

    def _motion_request(self) -> tuple[Any, np.ndarray, Mapping[str, Any], int] | None:
        """(stream, ready audio, controls, due): `due` frames must be made now, the rest may wait for a
        backend's look-ahead: all of them when idle silence is among them or no audio came for
        STALL_FLUSH_S, else those up to the last end of speech."""
        total = sum(len(a) for a, _, _ in self._ready) // HOP
        if any(t is None for _, t, _ in self._ready) or self._now - self._last_audio >= STALL_FLUSH_S:
            due = total
        else:
            due = max(0, min(total, max((frames for frames, _ in self._ends), default=0) - self._next_index))
        if self._controls_sent and not due and total == self._held:
            return None  # nothing new: do not call the backend (the scheduler would spin)
        self._controls_sent = True
        audio = np.concatenate([a for a, _, _ in self._ready]) if self._ready else np.zeros(0, np.float32)
        return self._stream, audio, dict(self._controls), due

    def _accept_motion(self, motion: MotionChunk) -> None:
        """The backend made motion for the first len(motion) ready frames; the rest wait in `_ready`."""
        made, start = len(motion), 0
        while start < made:
            audio, t, epoch = self._ready[0]
            n = min(len(audio) // HOP, made - start)
            self._pending.append(_Pending(motion.slice(start, start + n), self._next_index, audio[:n * HOP], t, epoch,
                                          idle=t is None))
            self._next_index += n
            start += n
            if t is not None:
                self._queued -= n * HOP
            if n * HOP == len(audio):
                self._ready.pop(0)
            else:
                self._ready[0] = (audio[n * HOP:], t, epoch)
        self._held = sum(len(a) for a, _, _ in self._ready) // HOP

    def _pending_frames(self) -> int:
        return sum(len(p.motion) - p.taken for p in self._pending)

    def _oldest_pending(self) -> float:
        for p in self._pending:
            return p.arrival if p.arrival is not None else -math.inf
        return math.inf

    def _take(self, k: int) -> list[tuple[_Pending, int, int]]:
        """Up to k pending motion frames, in order, as (pending, start, stop) slices."""
        out = []
        while k > 0 and self._pending:
            p = self._pending[0]
            n = min(k, len(p.motion) - p.taken)
            out.append((p, p.taken, p.taken + n))
            p.taken += n
            k -= n
            if p.taken == len(p.motion):
                self._pending.popleft()
        return out

    def _finish(self, parts: list[tuple[_Pending, int, int]], images: "torch.Tensor", now: float) -> None:
        """images [N, 3, 512, 512] float for `parts`: to uint8, watermark, queue as Frames."""
        import torch

        out = (images.clamp(0, 1) * 255 + 0.5).to(torch.uint8).permute(0, 2, 3, 1).contiguous()
        if self._embed is not None:
            out = self._embed(out, key=self._wm_key, payload=self._wm_payload)
        pixels = out.cpu().numpy()
        frames, row = [], 0
        for p, a, b in parts:
            for j in range(a, b):
                latency = None if p.arrival is None else now - p.arrival
                frames.append(Frame(p.first + j, (p.first + j) / FPS, pixels[row], p.audio[j * HOP:(j + 1) * HOP],
                                    p.epoch, p.idle, latency))
                row += 1
        for f in frames:
            self.stats.frames_out += 1
            self.stats.idle_frames += f.idle
            if f.latency_s is not None:
                self.stats.latencies.append(f.latency_s)
        del self.stats.latencies[:-1000]
        self._emit(frames)
        self._announce_ends()

    def _announce_ends(self) -> None:
        done = self._next_index - self._pending_frames() - sum(len(a) // HOP for a, _, _ in self._ready)
        events = []
        while self._ends and self._ends[0][0] <= done:
            frames, epoch = self._ends.popleft()
            events.append(Event("end", frames, epoch))
        if events:
            self._emit(events)

    def _emit(self, items: list[Frame | Event]) -> None:
        if not items:
            return
        with self._out_lock:
            self._out.extend(items)
            while len(self._out) > MAX_OUTPUT_BACKLOG:
                dropped = self._out.popleft()
                self.stats.dropped_frames += isinstance(dropped, Frame)
        if self._on_output is not None:
            self._on_output()


__all__ = ["EncodedPortrait", "Event", "FPS", "Frame", "HOP", "MODEL_RATE", "NetworkMotion", "NetworkStreamingBackend",
           "PreviewStreamingBackend", "Session", "StreamingBackend", "encode_portrait"]
