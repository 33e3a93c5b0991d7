"""Driving-video mode (LivePortrait's own use): the motion extractor on each frame of a video drives the
portrait; rendered through the network backend's one render path (`NetworkBackend.render_keypoints`).
The video's decode (frames, times, audio) is `flashtalk.io.driving`."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from flashtalk.controls.control_set import ControlSet as Controls
from flashtalk.errors import FlashTalkError
from flashtalk.io.driving import decoded_frames, video_frame_times
from flashtalk.models.liveportrait.keypoints import Motion, bins_to_degrees, rotation_from_degrees
from flashtalk.models.liveportrait.renderer import SourceState


def with_source_ratios(c: Controls, ratios: Any) -> Controls:
    """The portrait's measured eye / lip ratios (LivePortrait landmarks' `ratios`) for eye_open / lip_open;
    `c` as it is when they were not measured (None)."""
    if ratios is None:
        return c
    return dataclasses.replace(c, source_eye=tuple(ratios.eye), source_lip=float(ratios.lip))


class DrivingAnimation:
    """Video-driven clip: the motion extractor on each driving frame (resampled to 25 fps, nearest earlier
    frame), relative composition onto the source (docs/specs/liveportrait.md §10.4: full relative expression)."""

    def __init__(self, backend: Any, source: SourceState, video: Path, controls: Controls, faces: Any = None) -> None:
        self.backend, self.source, self.video, self.controls = backend, source, video, controls
        self.plan = None  # with LivePortrait's face models: its crop box and per-frame eye / lip ratios
        if faces is not None:
            from flashtalk.faces.pipeline import plan_driving

            self.plan = plan_driving(
                (f.to_ndarray(format="rgb24") for _, f in decoded_frames(video)), faces, name=f"driving video {video}"
            )
        elif "driving" in (controls.eye_open, controls.lip_open):
            raise FlashTalkError(
                "eye_open / lip_open = driving need LivePortrait's face models beside the weights "
                "(`flashtalk download`)"
            )
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
        for k, (t, frame) in enumerate(decoded_frames(self.video)):
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
            img = rgb[top : top + side, left : left + side].permute(2, 0, 1)[None].float().div(255)
            last = F.interpolate(
                img, size=(size, size), mode="bilinear", align_corners=False, antialias=side > size
            ).clamp(0, 1)[0]
        while last is not None and j < self._frames:
            self._shown.append(k)
            yield last
            j += 1

    def _liveportrait_crop(self, rgb: np.ndarray, size: int) -> torch.Tensor:
        """docs/specs/faces.md §4.6: the clip's one unrotated box, a 512 crop, bilinear to the motion input size."""
        import cv2

        from flashtalk.faces.crop import driving_matrix, warp

        crop = cv2.resize(warp(rgb, driving_matrix(self.plan.box), 512), (size, size))
        return torch.from_numpy(crop).permute(2, 0, 1).float().div(255)

    def _controls_for(self, start: int, stop: int) -> Controls:
        if self.plan is None:
            return self.controls
        idx = self._shown[start:stop]
        return dataclasses.replace(
            self.controls,
            driving_eye=tuple(float(v) for v in self.plan.eye_ratio[idx, 0]),
            driving_lip=tuple(float(v) for v in self.plan.lip_ratio[idx, 0]),
        )

    @torch.no_grad()
    def _motion(self, images: torch.Tensor) -> Motion:
        m = self.backend.nets.renderer.motion_extractor(images.to(self.backend.device))
        pitch, yaw, roll = (bins_to_degrees(m[k]) for k in ("pitch", "yaw", "roll"))
        n = images.shape[0]
        return Motion(
            R=rotation_from_degrees(pitch, yaw, roll), exp=m["exp"].view(n, -1, 3), scale=m["scale"], t=m["t"]
        )

    def keypoints(self, chunk: int = 16) -> Iterator[torch.Tensor]:
        from flashtalk.runtime.backends.network import compose

        reference, done = None, 0
        images = self._images()
        while True:
            buf = [img for _, img in zip(range(chunk), images)]
            if not buf:
                return
            motion = self._motion(torch.stack(buf))
            if reference is None:
                reference = Motion(R=motion.R[:1], exp=motion.exp[:1], scale=motion.scale[:1], t=motion.t[:1])
            frames = torch.arange(done, done + len(buf), device=motion.R.device)
            controls = self._controls_for(done, done + len(buf))
            done += len(buf)
            yield compose(
                self.backend.nets.renderer,
                self.source,
                motion,
                reference,
                controls,
                lip_absolute=False,
                frames=frames,
                fps=self.backend.fps,
            )

    def _render(self, x_d: torch.Tensor) -> torch.Tensor:
        return self.backend.render_keypoints(self.source.f_s, self.source.x_s, x_d)

    def frames(self, batch_size: int) -> Iterator[torch.Tensor]:
        from flashtalk.runtime.animation import batches

        return batches(self.keypoints(), batch_size, self._render)

    def frames_at(self, indices: list[int], batch_size: int) -> Iterator[torch.Tensor]:
        from flashtalk.runtime.animation import batches, select_rows

        return batches(select_rows(self.keypoints(), indices), batch_size, self._render)
