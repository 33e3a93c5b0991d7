"""`Engine`: portrait + speech -> frames, over one backend (`flashtalk.runtime.backends.Backend`: the
weights-free preview or the full network).

    engine = Engine.preview()                        # or Engine.from_weights(path) / Engine.from_pretrained()
    clip = engine.prepare("face.jpg", "speech.wav")  # inputs checked, face cropped, portrait encoded
    for batch in clip.batches(16):                   # uint8 [N, H, W, 3], num_frames in total
        ...

A clip's frames come from a one-stream driver of the backend's calls (`flashtalk.runtime.animation`), the
same calls the scheduler makes for live sessions. The engine does the rest, batch by batch: retiming to the
output frame rate, paste-back into the photo, and THE finish step (`flashtalk.runtime.finish`: uint8, the
provenance watermark, the copy out) that live sessions use too.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from flashtalk.constants import DEFAULT_SAMPLER, MODEL_RATE
from flashtalk.constants import WATERMARK_KEY as DEFAULT_WATERMARK_KEY
from flashtalk.errors import FlashTalkError
from flashtalk.runtime.animation import SpeechAnimation
from flashtalk.runtime.backends import Backend
from flashtalk.runtime.finish import Mark, finish, watermark_mark

if TYPE_CHECKING:
    import torch

    from flashtalk.faces.portrait_crop import FaceCrop
    from flashtalk.io.audio import AudioClip

log = logging.getLogger(__name__)

PASTE_PIXELS_PER_CALL = 1 << 24  # paste-back sub-batches hold at most this many output pixels
WEIGHTS_HELP = (
    "for the full network pass --weights DIR_OR_BUNDLE (LivePortrait + JoyVASA checkpoints or a "
    "FlashTalk safetensors bundle)"
)


@dataclass
class Inputs:
    """A clip's inputs, decoded and checked, the face cropped (`Engine.load`); no backend work yet."""

    photo: np.ndarray  # [H, W, 3] uint8
    crop: "FaceCrop"
    audio: "AudioClip"  # 16 kHz mono
    fps: Fraction  # output frame rate
    driving: "str | os.PathLike | None" = None


@dataclass
class Clip:
    """A prepared clip: what it will produce, and `batches()` to produce it."""

    engine: "Engine"
    animation: Any  # SpeechAnimation, or DrivingAnimation for a video-driven clip
    crop: "FaceCrop"
    photo: np.ndarray  # [H, W, 3] uint8
    audio: "AudioClip"  # 16 kHz mono, the audio the frames follow
    fps: Fraction  # output frame rate
    num_frames: int  # output frames
    paste_back: bool
    mark: Mark | None  # how the frames are watermarked (None: not at all)
    _paste: Any = field(default=None, init=False, repr=False)  # paste-back tensors on the device, made once

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the output frames."""
        if self.paste_back:
            return self.photo.shape[1], self.photo.shape[0]
        return self.crop.image.shape[1], self.crop.image.shape[0]

    def batches(self, batch_size: int = 16) -> Iterator[np.ndarray]:
        """Yield uint8 [N, H, W, 3] frame batches, num_frames in total."""
        if batch_size < 1:
            raise FlashTalkError(f"batch_size must be >= 1, got {batch_size}")
        content_fps = Fraction(self.engine.backend.fps)
        if content_fps > self.fps and hasattr(self.animation, "frames_at"):
            # a lower output rate: the backend renders only the content frames that are shown
            frames = self.animation.frames_at(self.shown_frames(), batch_size)
        else:
            frames = retime(self.animation.frames(batch_size), content_fps, self.fps, self.num_frames)
        for batch in frames:
            if self.paste_back:
                yield finish(self.paste(batch), [(0, len(batch), self.mark)])
            else:
                yield finish(batch, [(0, len(batch), self.mark)])

    def shown_frames(self) -> list[int]:
        """The content frame each output frame shows (nearest earlier; sorted, repeats at a higher rate)."""
        step = Fraction(self.engine.backend.fps) / self.fps
        return [int(j * step) for j in range(self.num_frames)]

    def paste(self, frames: "torch.Tensor") -> "torch.Tensor":
        """Rendered crops [N, 3, h, w] float -> pasted back into the photo, uint8 [N, H, W, 3] (sub-batches
        of at most PASTE_PIXELS_PER_CALL output pixels)."""
        import torch

        from flashtalk.kernels.paste_back import make_feather_mask, paste_back

        if self._paste is None:
            device = self.engine.backend.device
            self._paste = (
                torch.tensor(self.photo, device=device)[None],
                torch.tensor(self.crop.photo_to_crop, dtype=torch.float32, device=device)[None],
                make_feather_mask(self.crop.image.shape[0], device=device),
            )
        background, affine, mask = self._paste
        step = max(1, PASTE_PIXELS_PER_CALL // (background.shape[1] * background.shape[2]))
        return torch.cat(
            [paste_back(frames[i : i + step], background, affine, mask) for i in range(0, len(frames), step)]
        )

    @property
    def watermark(self) -> bool:
        """True when the frames carry the watermark."""
        return self.mark is not None


def retime(
    content: Iterator["torch.Tensor"], content_fps: float, out_fps: Fraction, out_frames: int
) -> Iterator["torch.Tensor"]:
    """Resample a stream of frame batches from content_fps to out_fps (nearest earlier frame), streaming.

    Output frame j shows content frame floor(j * content_fps / out_fps); yields out_frames frames.
    """
    if Fraction(content_fps) == out_fps:
        yield from content
        return
    step = Fraction(content_fps) / out_fps
    j, start = 0, 0  # next output frame, index of the first frame of the current batch
    for batch in content:
        idx = []
        while j < out_frames and int(j * step) < start + len(batch):
            idx.append(int(j * step) - start)
            j += 1
        if idx:
            yield batch[idx]
        start += len(batch)
        if j >= out_frames:
            return


def output_frames(content_frames: int, content_fps: float, out_fps: Fraction) -> int:
    if Fraction(content_fps) == out_fps:
        return content_frames
    return max(1, int(Fraction(content_frames) * out_fps / Fraction(content_fps)))


def default_device(device: "str | torch.device | None") -> "torch.device":
    import torch

    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise FlashTalkError(f"bad device {device!r}: {exc}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise FlashTalkError(f"device {device!r} asked for, but CUDA is not available here")
    return dev


class Engine:
    """Portrait + speech -> frames. Build with `Engine.preview()` or `Engine.from_weights(path)`."""

    def __init__(self, backend: Backend, faces: Any = None) -> None:
        self.backend = backend
        self.faces = faces  # LivePortrait's face models (flashtalk.faces), or None: the Haar crop

    @classmethod
    def from_pretrained(cls, revision: list[str] | None = None, **kwargs: Any) -> "Engine":
        """The full network from the files `flashtalk download` put in the Hugging Face cache (no network
        access; HF_HUB_OFFLINE=1 works). revision: `REPO=REV` overrides of the pinned revisions."""
        from flashtalk.weights.hub import resolve_cache

        return cls.from_weights(resolve_cache(revision), **kwargs)

    @classmethod
    def preview(cls, device: "str | torch.device | None" = None) -> "Engine":
        """The weights-free procedural preview: runs anywhere, no download."""
        from flashtalk.runtime.backends.preview import PreviewBackend

        return cls(PreviewBackend(default_device(device)))

    @classmethod
    def from_weights(
        cls,
        path: "str | os.PathLike | None",
        *,
        seeded: bool = False,
        preset: str | None = None,
        device: "str | torch.device | None" = None,
        sampler: str = DEFAULT_SAMPLER,
        steps: int | None = 10,
        cfg: float = 2.0,
        precision: str | None = None,
    ) -> "Engine":
        """The full network from a weights folder (published layout) or a FlashTalk safetensors bundle, or
        with `seeded` the golden seeded weights of `preset` ("liveportrait" default, or "tiny"): not a face.
        sampler ddim | dpmpp | ddpm with `steps` model calls per window and guidance scale `cfg`.
        precision: the renderer's fp32 | bf16 | fp16 (default bf16 on CUDA, fp32 on the CPU)."""
        from flashtalk.runtime.backends.network import NetworkBackend, resolve_precision
        from flashtalk.weights import bundle

        dev = default_device(device)
        resolve_precision(precision, dev)  # a bad precision fails before the weights load
        if seeded:
            if path is not None:
                raise FlashTalkError("give either a weights path or seeded weights, not both")
            nets = bundle.seeded_networks(preset or "liveportrait")  # Preset.from_name names the known presets
        else:
            if path is None:
                raise FlashTalkError("no weights given: pass a weights folder or bundle, or seeded=True")
            if preset is not None:
                raise FlashTalkError("preset applies to seeded weights only (a weights file fixes its own shapes)")
            path = resolve_weights(path)
            nets = bundle.load_networks(path)
        faces = None if seeded else face_models(Path(path), dev)
        return cls(
            NetworkBackend(nets, dev, sampler=sampler, steps=steps, cfg=cfg, seeded=seeded, precision=precision), faces
        )

    def prepare(
        self,
        image: Any,
        audio: Any,
        *,
        crop: Any = "auto",
        seed: int = 0,
        fps: float = 25,
        paste_back: bool = False,
        watermark: bool = True,
        watermark_key: str = DEFAULT_WATERMARK_KEY,
        driving: "str | os.PathLike | None" = None,
        **controls: Any,
    ) -> Clip:
        """Load and check the inputs, crop the face and prepare the backend; nothing is rendered yet.

        image: path, PIL image or RGB uint8 array. audio: path / bytes / file object (anything
        `flashtalk.io.audio.load_audio` reads) or an `AudioClip`. crop: "auto", "center" or (x, y, w, h).
        driving: a video whose head motion and expressions drive the portrait (network backend only);
        audio may then be None: the video's own audio (or silence) is used.
        """
        inputs = self.load(image, audio, crop=crop, fps=fps, driving=driving)
        return self.prepare_loaded(
            inputs, seed=seed, paste_back=paste_back, watermark=watermark, watermark_key=watermark_key, **controls
        )

    def load(
        self, image: Any, audio: Any, *, crop: Any = "auto", fps: float = 25, driving: "str | os.PathLike | None" = None
    ) -> "Inputs":
        """The first half of `prepare`, without the backend: decode and check the photo and the audio, crop
        the face (host work that `flashtalk.runtime.batch` runs in worker threads, beside the rendering)."""
        from flashtalk.faces.portrait_crop import face_crop
        from flashtalk.io.media import load_image

        if fps <= 0 or fps > 240:
            raise FlashTalkError(f"fps must be in (0, 240], got {fps}")
        out_fps = Fraction(fps).limit_denominator(1001)
        if driving is not None and not hasattr(self.backend, "prepare_driving"):
            raise FlashTalkError(f"a driving video needs the network backend, not {self.backend.name}; " + WEIGHTS_HELP)
        if driving is not None and audio is None:
            from flashtalk.io.driving import driving_audio

            clip = driving_audio(driving, MODEL_RATE)
        else:
            clip = _load_audio(audio)
        photo = load_image(image)
        name = f"portrait {image}" if isinstance(image, (str, os.PathLike)) else "portrait"
        fc = face_crop(photo, crop, name=name, faces=self.faces)
        return Inputs(photo, fc, clip, out_fps, driving)

    def prepare_loaded(
        self,
        inputs: "Inputs",
        *,
        seed: int = 0,
        paste_back: bool = False,
        watermark: bool = True,
        watermark_key: str = DEFAULT_WATERMARK_KEY,
        **controls: Any,
    ) -> Clip:
        """The second half of `prepare`: encode the portrait on the backend, check the controls."""
        import torch

        fc, clip, driving = inputs.crop, inputs.audio, inputs.driving
        crop_t = torch.from_numpy(fc.image).to(self.backend.device).permute(2, 0, 1).float().div_(255)
        if driving is not None:
            animation = self.backend.prepare_driving(
                crop_t, driving, controls=controls, landmarks=fc.landmarks, faces=self.faces
            )
        else:
            portrait = self.backend.encode(crop_t, fc.landmarks)
            checked = self.backend.clip_controls(portrait, controls)
            animation = SpeechAnimation(self.backend, portrait, clip.samples, seed, checked)
        if animation.num_frames() < 1:
            raise FlashTalkError(f"audio {clip.source} is too short for one frame ({clip.duration:.3f} s)")
        n = output_frames(animation.num_frames(), self.backend.fps, inputs.fps)
        mark = watermark_mark(watermark_key) if watermark else None
        return Clip(self, animation, fc, inputs.photo, clip, inputs.fps, n, paste_back, mark)

    def animate(
        self,
        image: Any,
        audio: Any,
        *,
        crop: Any = "auto",
        seed: int = 0,
        batch_size: int = 16,
        paste_back: bool = False,
        watermark: bool = True,
        fps: float = 25,
        **controls: Any,
    ) -> Iterator[np.ndarray]:
        """The frames (uint8 [H, W, 3] RGB) of the talking portrait, one by one, rendered in batches as the
        iterator is consumed. Bad inputs raise `FlashTalkError` here, before the first frame."""
        clip = self.prepare(
            image, audio, crop=crop, seed=seed, fps=fps, paste_back=paste_back, watermark=watermark, **controls
        )
        return (frame for batch in clip.batches(batch_size) for frame in batch)


@dataclass(frozen=True)
class EngineSpec:
    """Which engine to build (the weights options of `animate` and `batch`); picklable, so each Ray worker of
    `batch --ray` builds its own."""

    weights: str | None = None  # a weights folder, a bundle, or hf; None (and not seeded): the preview
    seeded: bool = False
    preset: str | None = None
    device: str | None = None
    sampler: str = DEFAULT_SAMPLER
    steps: int = 10
    cfg: float = 2.0
    precision: str | None = None

    @property
    def network(self) -> bool:
        return self.weights is not None or self.seeded

    def check(self) -> None:
        if self.preset and not self.seeded:
            raise FlashTalkError("--preset applies to --seeded-weights only (a weights file fixes its own shapes)")
        if self.precision and not self.network:
            raise FlashTalkError("--precision needs the network: pass --weights or --seeded-weights")

    def build(self) -> "Engine":
        self.check()
        if not self.network:
            return Engine.preview(self.device)
        return Engine.from_weights(
            self.weights,
            seeded=self.seeded,
            preset=self.preset,
            device=self.device,
            sampler=self.sampler,
            steps=self.steps,
            cfg=self.cfg,
            precision=self.precision,
        )


def resolve_weights(path: "str | os.PathLike") -> "str | os.PathLike":
    """A weights path as given, or for "hf" (when no such file exists) what `flashtalk download` put in the
    Hugging Face cache."""
    if str(path) == "hf" and not Path(path).exists():
        from flashtalk.weights.hub import resolve_cache

        return resolve_cache()
    return path


def face_models(path: Path, device: "torch.device") -> Any:
    """LivePortrait's face models beside the weights (a folder, or a bundle's folder), or None."""
    from flashtalk.faces.onnx_models import find_files, load_if_present

    folder, search = (path, True) if path.is_dir() else (path.parent, False)  # beside a bundle: published paths
    faces = load_if_present(folder, device=device.type, search=search)
    if faces is None and not find_files(folder, search=search):
        log.warning(
            "LivePortrait's face models (det_10g, 2d106det, landmark.onnx) are not in %s: --crop auto "
            "uses the Haar crop and assumed eye / lip ratios (`flashtalk download` fetches them)",
            folder,
        )
    return faces


def _load_audio(audio: Any) -> "AudioClip":
    from flashtalk.io.audio import AudioClip, load_audio

    if isinstance(audio, AudioClip):
        clip = audio
        if clip.rate != MODEL_RATE:
            from flashtalk.io.audio import resample

            clip = AudioClip(resample(clip.samples, clip.rate, MODEL_RATE), MODEL_RATE, clip.duration, clip.source)
    else:
        clip = load_audio(audio, target_rate=MODEL_RATE)
    if clip.samples.size == 0:
        raise FlashTalkError(f"audio {clip.source} is empty (0 samples)")
    return clip
