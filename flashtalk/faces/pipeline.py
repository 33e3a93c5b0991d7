"""The end-to-end flows of `docs/specs/faces.md` §7 over three model callables (ONNX sessions, stored golden
tensors or test stubs): the source image (detect -> 106 points on every face -> largest face -> 512 crop
-> 203 points -> ratios) and the driving video (detect on the first frame with a face, then track with
the 203 runner; one averaged box; unrotated crops; per-frame ratios).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from flashtalk.errors import FlashTalkError
from flashtalk.faces import crop as C
from flashtalk.faces import detector, landmark106, landmark203, ratios

log = logging.getLogger(__name__)


@dataclass
class FaceModels:
    """det(blob [1,3,512,512]) -> 9 arrays; l106(blob [1,3,192,192]) -> [1,212]; l203(input [1,3,224,224])
    -> its outputs (index 2 is read)."""

    det: Callable[[np.ndarray], Sequence[np.ndarray]]
    l106: Callable[[np.ndarray], np.ndarray]
    l203: Callable[[np.ndarray], Sequence[np.ndarray]]
    det_thresh: float = detector.DET_THRESH
    label: str = "LivePortrait face models"
    l106_norm: tuple[float, float] = (0.0, 1.0)  # (mean, std) of the 106 model's input (§3.1)


@dataclass(frozen=True)
class Detected:
    """Every face of one image, in detection order, and the one picked ("large-small")."""

    detections: detector.Detections
    alignments: list[landmark106.Alignment]
    lmk106: list[np.ndarray]
    order: list[int]

    @property
    def picked(self) -> int:
        return self.order[0]


@dataclass(frozen=True)
class SourceFace:
    """§7.1 without the size limit: the crop, its 256 version, the 203 points (image px) and the ratios."""

    detected: Detected
    crop: C.Crop
    crop_256: np.ndarray
    runner: landmark203.RunnerInput
    lmk203: np.ndarray
    eye_ratio: np.ndarray  # [1, 2]
    lip_ratio: np.ndarray  # [1, 1]


def detect_faces(img_rgb: np.ndarray, models: FaceModels) -> Detected | None:
    """§2-3: detection and 106 points for every face; None when no face scores above the threshold."""
    import cv2

    bgr = cv2.cvtColor(img_rgb, cv2.COLOR_RGB2BGR)
    dets = detector.detect(bgr, models.det, thresh=models.det_thresh)
    if dets.dets.shape[0] == 0:
        return None
    aligns = [landmark106.align(bgr, box, *models.l106_norm) for box in dets.dets]
    lmks = [landmark106.decode(models.l106(a.blob), a.M) for a in aligns]
    return Detected(dets, aligns, lmks, detector.order_faces(dets.dets))


def _no_face(name: str) -> FlashTalkError:
    return FlashTalkError(
        f"no face found in {name} by the LivePortrait detector; pass --crop center or "
        "--crop X,Y,W,H (the face box in pixels)"
    )


def source_face(img_rgb: np.ndarray, models: FaceModels, *, name: str = "portrait") -> SourceFace:
    """§7.1 steps 2-6 on an already size-limited RGB image."""
    found = detect_faces(img_rgb, models)
    if found is None:
        raise _no_face(name)
    if len(found.order) > 1:
        log.warning(
            "%d faces found in %s; using the largest (box %s)",
            len(found.order),
            name,
            np.round(found.detections.dets[found.picked, :4], 1).tolist(),
        )
    lmk106 = found.lmk106[found.picked]
    crop = C.crop_image(img_rgb, lmk106, C.SOURCE)
    runner = landmark203.prepare(img_rgb, lmk106)
    outs = models.l203(runner.input)
    lmk203 = landmark203.decode(outs[2], runner.M_c2o)
    return SourceFace(
        found, crop, C.area_256(crop.image), runner, lmk203, ratios.eye_ratio(lmk203), ratios.lip_ratio(lmk203)
    )


@dataclass(frozen=True)
class DrivingCrops:
    """§4.6 / §7.3 for the frames from the first one with a face on (`first`)."""

    first: int
    runner: list[landmark203.RunnerInput]
    lmk203: np.ndarray  # [T, 203, 2] image px
    boxes: np.ndarray  # [T, 4] per-frame axis-aligned boxes
    box: np.ndarray  # [4] the global box
    crops: list[C.Crop]  # 512, unrotated
    crops_256: np.ndarray  # [T, 256, 256, 3] bilinear
    eye_ratio: np.ndarray  # [T, 2]
    lip_ratio: np.ndarray  # [T, 1]


def track(
    frames: Iterable[np.ndarray],
    models: FaceModels,
    *,
    name: str = "driving video",
    seed106: np.ndarray | None = None,
    keep_inputs: bool = True,
) -> tuple[int, list[landmark203.RunnerInput], np.ndarray]:
    """Detect on the first frame with a face (or use `seed106` for frame 0), then track with the 203
    runner seeded by the previous frame's 203 points: (first frame, the runner inputs if `keep_inputs`,
    [T', 203, 2] points)."""
    runners, lmks, first = [], [], -1
    for t, frame in enumerate(frames):
        if first < 0:
            seed = seed106 if (t == 0 and seed106 is not None) else None
            if seed is None:
                found = detect_faces(frame, models)
                if found is None:
                    continue
                if len(found.order) > 1:
                    log.warning("%d faces in frame %d of %s; tracking the largest", len(found.order), t, name)
                seed = found.lmk106[found.picked]
            first = t
        else:
            seed = lmks[-1]
        p = landmark203.prepare(frame, seed)
        if keep_inputs:
            runners.append(p)
        lmks.append(landmark203.decode(models.l203(p.input)[2], p.M_c2o))
    if first < 0:
        raise FlashTalkError(f"no face found in any frame of {name} by the LivePortrait detector")
    return first, runners, np.stack(lmks)


def driving_crops(
    frames: Sequence[np.ndarray],
    models: FaceModels,
    *,
    name: str = "driving video",
    seed106: np.ndarray | None = None,
    dsize: int = 512,
) -> DrivingCrops:
    import cv2

    first, runners, lmk203 = track(frames, models, name=name, seed106=seed106)
    boxes = [C.driving_box(p) for p in lmk203]
    box = C.global_box(boxes)
    crops = [C.crop_driving_frame(f, box, p, dsize) for f, p in zip(frames[first:], lmk203)]
    small = np.stack([cv2.resize(c.image, (256, 256)) for c in crops])
    lmk_crop = np.stack([c.pt_crop for c in crops])
    return DrivingCrops(
        first,
        runners,
        lmk203,
        np.stack(boxes),
        box,
        crops,
        small,
        ratios.eye_ratio(lmk_crop),
        ratios.lip_ratio(lmk_crop),
    )


@dataclass(frozen=True)
class DrivingPlan:
    """What a driving clip needs from its landmarks: the global crop box (None for a square clip, which
    LivePortrait resizes whole) and per-frame eye [T, 2] / lip [T, 1] ratios (frames before the first face
    repeat its ratios)."""

    box: np.ndarray | None
    eye_ratio: np.ndarray
    lip_ratio: np.ndarray


def plan_driving(frames: Iterable[np.ndarray], models: FaceModels, *, name: str = "driving video") -> DrivingPlan:
    """§4.6 / §7.3 in one streaming pass (only landmarks are kept): detect on the first frame with a
    face, track with the 203 runner, per-frame boxes averaged into one; ratios from the crop's points."""
    shapes = set()

    def noted(it: Iterable[np.ndarray]) -> Iterable[np.ndarray]:
        for frame in it:
            shapes.add(frame.shape[:2])
            yield frame

    first, _, pts = track(noted(frames), models, name=name, keep_inputs=False)
    square = all(h == w for h, w in shapes)
    box = None if square else C.global_box([C.driving_box(p) for p in pts])
    if box is not None:  # ratios from the 512-crop points, as LivePortrait (invariant anyway)
        M = C.driving_matrix(box)
        pts = np.stack([C.transform_points(p, M) for p in pts])
    eye, lip = ratios.eye_ratio(pts), ratios.lip_ratio(pts)
    if first:
        eye = np.concatenate([np.repeat(eye[:1], first, 0), eye])
        lip = np.concatenate([np.repeat(lip[:1], first, 0), lip])
    log.info(
        "driving video %s: LivePortrait tracking from frame %d, %s",
        name,
        first,
        "square, resized whole" if box is None else f"crop box {np.round(box, 1).tolist()}",
    )
    return DrivingPlan(box, eye, lip)
