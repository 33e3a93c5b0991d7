"""Driving-video decode (LivePortrait's driving-video mode): its frames with their times, and its audio track
(or silence of its length). The motion part is `flashtalk.runtime.driving.DrivingAnimation`."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from flashtalk.errors import FlashTalkError

log = logging.getLogger(__name__)


def _open_video(path: Path):
    import av

    if not path.is_file():
        raise FlashTalkError(f"driving video {path} not found")
    try:
        container = av.open(str(path), metadata_errors="replace")  # non-UTF-8 tags do not stop decoding
    except Exception as exc:
        raise FlashTalkError(f"driving video {path}: cannot open it ({exc})") from None
    if not container.streams.video:
        container.close()
        raise FlashTalkError(f"driving video {path} has no video stream")
    return container


def decoded_frames(path: Path) -> Iterator[tuple[float, Any]]:
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
    except Exception as exc:
        raise FlashTalkError(f"driving video {path}: decoding failed ({exc})") from None
    finally:
        container.close()


def video_frame_times(path: Path) -> list[float]:
    """Presentation times (s) of the video's frames, increasing; end time appended as the last entry."""
    times = [t for t, _ in decoded_frames(path)]
    if not times:
        raise FlashTalkError(f"driving video {path} has no frames")
    step = (times[-1] - times[0]) / (len(times) - 1) if len(times) > 1 else 1 / 25
    return times + [times[-1] + step]


def driving_audio(path: str | Path, rate: int = 16000):
    """The driving video's audio at 16 kHz, or silence of the video's length when it has no audio stream."""
    from flashtalk.io.audio import AudioClip, load_audio

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
