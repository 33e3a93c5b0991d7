"""Media in and out: portrait loading, H.264/AAC MP4 writing, PNG frame folders, and atomic output.

Everything a user hands us is checked here and rejected with a `FlashTalkError` that names the file.
Outputs are written to a hidden temporary path in the destination folder and renamed into place only
when complete, so an error or a crash never leaves a half-written video or frame folder behind.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import secrets
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterator, Mapping
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from flashtalk.errors import FlashTalkError

if TYPE_CHECKING:
    import PIL.Image

log = logging.getLogger(__name__)

MIN_IMAGE_SIDE = 64
MAX_IMAGE_PIXELS = 120_000_000  # refused above this (Pillow's own bomb limit is 179 M)
FRAME_PATTERN = "frame_{:06d}.png"


class Audio(Protocol):
    """What the writers need from `flashtalk.io.audio.AudioClip`: mono float32 samples and their rate."""

    samples: np.ndarray
    rate: int


# ---------------------------------------------------------------------------------------------- images


def load_image(source: str | os.PathLike | np.ndarray | "PIL.Image.Image", *, name: str = "portrait") -> np.ndarray:
    """An RGB uint8 array [H, W, 3] from a path, a PIL image or an array.

    EXIF orientation is applied, palette / grey / CMYK images are converted, and transparency is flattened
    onto white. High-bit-depth grey images keep their tones (`_to_8bit`). Files of more than
    MAX_IMAGE_PIXELS pixels, decompression bombs (also in PNG text chunks) and corrupt files are refused
    with a one-line error.
    """
    from PIL import Image, ImageOps

    if isinstance(source, np.ndarray):
        return _check_array(source, name)
    if isinstance(source, Image.Image):
        label = name
    else:
        path = Path(source)
        label = f"{name} {path}"
        if not path.is_file():
            raise FlashTalkError(f"{label}: file not found")
    try:
        image = source if isinstance(source, Image.Image) else Image.open(path)
        w, h = image.size
        if w * h > MAX_IMAGE_PIXELS:
            raise FlashTalkError(
                f"{label}: image is {w}x{h} = {w * h / 1e6:.0f} megapixels; at most "
                f"{MAX_IMAGE_PIXELS / 1e6:.0f} are accepted (downscale it first)"
            )
        image.load()
    except FlashTalkError:
        raise
    except Exception as exc:
        # SyntaxError, struct.error, EOFError, ... for bad files: each becomes one clear message
        why = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise FlashTalkError(f"{label}: not a readable image (JPEG, PNG or WebP expected): {why}") from None
    try:
        image = ImageOps.exif_transpose(image)
    except Exception as exc:
        log.warning("%s: ignoring unreadable EXIF orientation (%s)", label, exc)
    image = _to_8bit(image, label)
    try:
        if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
            rgba = image.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            image = Image.alpha_composite(white, rgba)
        array = np.array(image.convert("RGB"), dtype=np.uint8)
    except (ValueError, OSError) as exc:
        raise FlashTalkError(f"{label}: cannot convert a mode-{image.mode} image to RGB: {exc}") from None
    return _check_array(array, label)


def _to_8bit(image: "PIL.Image.Image", label: str) -> "PIL.Image.Image":
    """Grey images of more than 8 bits (16-bit PNG: mode I;16 / I; TIFF: I, F) as 8-bit grey ("L").

    Pillow's own conversion clips them at 255 (a washed-out or black portrait). Integer images are read
    as 16-bit (value / 257) when every value fits in 0..65535, else as full 32-bit; float images as 0..1
    when their maximum is <= 1, else as 0..255, else as 16-bit. NaN / inf pixels are refused."""
    from PIL import Image

    if not (image.mode.startswith("I") or image.mode == "F"):
        return image
    a = np.asarray(image)
    if image.mode == "F":
        a = a.astype(np.float64)
        if not np.isfinite(a).all():
            raise FlashTalkError(f"{label}: floating-point image holds NaN or infinite pixels")
        top = float(a.max(initial=0.0))
        scale = 255.0 if top <= 1.0 else 1.0 if top <= 255.0 else 1.0 / 257.0
        grey = a * scale
    else:
        a = a.astype(np.int64)
        lo, hi = int(a.min(initial=0)), int(a.max(initial=0))
        grey = a / 257.0 if 0 <= lo and hi <= 0xFFFF else (a - np.iinfo(np.int32).min) / float(1 << 24)
    return Image.fromarray(np.clip(np.rint(grey), 0, 255).astype(np.uint8), mode="L")


def _check_array(array: np.ndarray, label: str) -> np.ndarray:
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise FlashTalkError(f"{label}: expected an RGB uint8 array [H, W, 3], got {array.dtype} {list(array.shape)}")
    h, w = array.shape[:2]
    if min(h, w) < MIN_IMAGE_SIDE:
        raise FlashTalkError(f"{label}: image is {w}x{h}, need at least {MIN_IMAGE_SIDE} pixels on each side")
    return np.ascontiguousarray(array)


# ---------------------------------------------------------------------------------------------- output


def check_output(path: str | os.PathLike, *, overwrite: bool) -> Path:
    """Validate an output path before any work is done: its folder exists and it is not there already."""
    path = Path(path)
    if not path.parent.is_dir():
        raise FlashTalkError(f"output folder {path.parent} does not exist")
    if path.exists() and not overwrite:
        raise FlashTalkError(f"output {path} already exists (pass --overwrite to replace it)")
    return path


class Terminated(SystemExit):
    """Raised in the main thread by SIGTERM while an output is being written (exit status 143)."""


_received: list[int] = []  # the signals our handlers took during the write now in progress (emptied after it)


def _raise_terminated(signum, frame) -> None:
    _received.append(signum)
    raise Terminated(128 + signum)


def _raise_interrupt(signum, frame) -> None:
    _received.append(signum)
    raise KeyboardInterrupt


def raise_if_signalled() -> None:
    """Raise again for a signal taken while writing. Its own exception can be lost: a handler runs at any
    bytecode, also inside a finalizer or a C extension's callback, where Python prints the exception and
    goes on - and the output would be committed as if nothing had happened."""
    if _received:
        if _received[-1] == signal.SIGINT:
            raise KeyboardInterrupt
        raise Terminated(128 + _received[-1])


@contextlib.contextmanager
def terminate_raises() -> Iterator[None]:
    """While inside: SIGTERM raises `Terminated` in the main thread (so cleanup runs) instead of killing the
    process outright, and both it and SIGINT are recorded for `raise_if_signalled`. Left alone off the main
    thread, and a signal the application handles itself (or ignores) is left to it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    ours = {
        signal.SIGTERM: (signal.SIG_DFL, _raise_terminated),
        signal.SIGINT: (signal.default_int_handler, _raise_interrupt),
    }  # signal: (Python's default, ours)
    installed = [sig for sig, (default, _) in ours.items() if signal.getsignal(sig) is default]
    if not installed:  # nested, or the application's own handlers
        yield
        return
    for sig in installed:
        signal.signal(sig, ours[sig][1])
    try:
        yield
    finally:
        for sig in installed:
            signal.signal(sig, ours[sig][0])
        _received.clear()  # handled: a later write (in any thread) starts clean


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, *, overwrite: bool, folder: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success move it to `path`, on any error remove it.

    `folder=True` makes the temporary a directory (for PNG frame folders). Replacing an existing folder is
    refused unless it holds nothing but frames we write, so `--overwrite` cannot delete a user's files.
    SIGINT (KeyboardInterrupt) and SIGTERM (`Terminated`, in the main thread) also remove the temporary.
    """
    final = check_output(path, overwrite=overwrite)
    if folder and final.exists():
        _check_replaceable_frames_dir(final)
    if not folder and final.is_dir():
        raise FlashTalkError(f"output {final} is a folder, not a file")
    tmp = final.parent / f".{final.name}.partial-{secrets.token_hex(4)}{final.suffix}"
    with terminate_raises():
        try:
            if folder:
                tmp.mkdir()
            else:
                tmp.open("xb").close()  # created with the user's umask, unlike mkstemp's 0600
            yield tmp
            raise_if_signalled()  # never commit an output a signal asked to stop
            if final.exists() and not overwrite:  # created while we worked
                raise FlashTalkError(f"output {final} appeared while rendering; not replacing it (pass --overwrite)")
            if folder and final.exists():
                old = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=final.parent))
                os.replace(final, old / final.name)
                os.replace(tmp, final)
                shutil.rmtree(old)
            else:
                os.replace(tmp, final)
        except BaseException:
            remove_partial(tmp)
            raise


def remove_stale_partials(path: str | os.PathLike) -> int:
    """Remove what killed runs left of `path`'s temporary outputs (`atomic_output`'s naming); how many.
    Only for a path that no writer is working on now."""
    final = Path(path)
    if not final.parent.is_dir():
        return 0
    stale = list(final.parent.glob(f".{glob.escape(final.name)}.partial-*{glob.escape(final.suffix)}"))
    for tmp in stale:
        remove_partial(tmp)
    return len(stale)


def remove_partial(tmp: Path) -> None:
    """Remove a temporary output (file or folder), whatever is left of it."""
    if tmp.is_dir():
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def _check_replaceable_frames_dir(path: Path) -> None:
    if not path.is_dir():
        raise FlashTalkError(f"frames folder {path} exists and is not a folder")
    foreign = [p.name for p in path.iterdir() if not (p.name.startswith("frame_") and p.suffix == ".png")]
    if foreign:
        raise FlashTalkError(f"frames folder {path} holds other files ({foreign[0]}, ...); not replacing it")


# ---------------------------------------------------------------------------------------------- writers


class VideoWriter:
    """H.264 (yuv420p) MP4 with the speech muxed in as AAC, written frame batch by frame batch.

    Audio is interleaved as the video advances, so memory stays constant in the clip's length.
    Odd frame sizes lose their last row / column (4:2:0 needs even sizes), with a logged warning.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        width: int,
        height: int,
        fps: float,
        audio: Audio | None,
        metadata: Mapping[str, str],
        crf: int = 18,
        preset: str = "veryfast",
    ) -> None:
        import av

        self.width, self.height = width - width % 2, height - height % 2
        if (self.width, self.height) != (width, height):
            log.warning(
                "frame size %dx%d is odd; encoding %dx%d (H.264 4:2:0 needs even sizes)",
                width,
                height,
                self.width,
                self.height,
            )
        self.fps = Fraction(fps).limit_denominator(1001)
        self.frames_written = 0
        self._container = av.open(str(path), mode="w", format="mp4", options={"movflags": "use_metadata_tags"})
        try:
            for key, value in metadata.items():
                self._container.metadata[key] = value
            self._video = self._container.add_stream("libx264", rate=self.fps)
            self._video.width, self._video.height = self.width, self.height
            self._video.pix_fmt = "yuv420p"
            self._video.options = {"crf": str(crf), "preset": preset}
            self._audio = None
            self._audio_done = 0
            if audio is not None:
                self._samples = np.ascontiguousarray(audio.samples, dtype=np.float32).reshape(-1)
                self._rate = int(audio.rate)
                self._audio = self._container.add_stream("aac", rate=self._rate)
                self._audio.layout = "mono"
        except BaseException:
            self._container.close()
            raise

    def write(self, frames: np.ndarray) -> None:
        """Encode a batch of RGB uint8 frames [N, H, W, 3]."""
        import av

        frames = frames[:, : self.height, : self.width]
        with self._encoder_errors("video"):
            for frame in frames:
                video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
                for packet in self._video.encode(video_frame):
                    self._container.mux(packet)
        self.frames_written += len(frames)
        with self._encoder_errors("audio"):
            self._write_audio_until(self.frames_written / self.fps)

    @contextlib.contextmanager
    def _encoder_errors(self, what: str) -> Iterator[None]:
        """FFmpeg failures (EINVAL from the AAC encoder on samples far outside [-1, 1], a full disk, ...)
        as one FlashTalkError."""
        import av

        try:
            yield
        except (av.error.FFmpegError, OSError, ValueError) as exc:
            if isinstance(exc, FlashTalkError):
                raise
            hint = ""
            if what == "audio" and self._audio is not None:
                peak = float(np.abs(self._samples).max(initial=0.0))
                if peak > 1.0:
                    hint = f" (the audio peaks at {peak:.3g}; samples should lie in [-1, 1])"
            raise FlashTalkError(f"the {what} encoder failed: {exc}{hint}") from None

    def _write_audio_until(self, seconds: Fraction | None) -> None:
        import av

        if self._audio is None:
            return
        end = len(self._samples) if seconds is None else min(len(self._samples), int(seconds * self._rate))
        if end <= self._audio_done:
            return
        chunk = self._samples[self._audio_done : end][None, :]
        frame = av.AudioFrame.from_ndarray(chunk, format="flt", layout="mono")
        frame.sample_rate = self._rate
        frame.pts = self._audio_done
        frame.time_base = Fraction(1, self._rate)
        for packet in self._audio.encode(frame):
            self._container.mux(packet)
        self._audio_done = end

    def close(self) -> None:
        """Flush the encoders and finish the file (the rest of the audio goes in here)."""
        try:
            with self._encoder_errors("video"):
                for packet in self._video.encode(None):
                    self._container.mux(packet)
            if self._audio is not None:
                with self._encoder_errors("audio"):
                    self._write_audio_until(None)
                    for packet in self._audio.encode(None):
                        self._container.mux(packet)
        except BaseException:
            self.abort()
            raise
        with self._encoder_errors("container"):
            self._container.close()  # writes the MP4 index: its failure is the file's failure

    def abort(self) -> None:
        """Close the container, ignoring errors (the file is being discarded or was already flushed)."""
        with contextlib.suppress(Exception):
            self._container.close()


class PngWriter:
    """Numbered PNG frames (`frame_000000.png`, ...) in a folder."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        self.frames_written = 0

    def write(self, frames: np.ndarray) -> None:
        from PIL import Image

        for frame in frames:
            path = self.folder / FRAME_PATTERN.format(self.frames_written)
            try:
                Image.fromarray(frame).save(path, compress_level=1)
            except OSError as exc:
                raise FlashTalkError(f"writing frame {path.name} failed: {exc.strerror or exc}") from None
            self.frames_written += 1

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass
