"""LivePortrait's landmark-driven crop (`docs/specs/faces.md` §1.2, §4): the source size limit, the oriented
square around a landmark set, the crop matrices and warps, and the driving-video boxes.

Precision follows the reference: landmark arithmetic on float32 arrays, the scalar products that build a
matrix in float64 (NumPy 1.26 promoted float32 scalars with Python numbers to float64; we do it
explicitly, so NumPy 2 gives the same numbers), matrices stored as float32.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from flashtalk.errors import FlashTalkError

F32 = np.float32


@dataclass(frozen=True)
class CropParams:
    """dsize: output side in pixels; scale: crop side / landmark extent; vy: centre shift along the face's
    vertical axis in crop sides (negative keeps more forehead); rotate: warp in the face's frame."""

    dsize: int
    scale: float
    vy: float
    rotate: bool = True


SOURCE = CropParams(512, 2.3, -0.125)  # the source-image / source-video crop (§4.4, §4.5)
RUNNER = CropParams(224, 1.5, -0.1)  # the 203-point model's input crop (§5)
DRIVING_SCALE, DRIVING_VY = 2.2, -0.1  # per-frame driving boxes (§4.6)
MAX_DIM, DIVISION = 1280, 2  # the source size limit (§1.2)


@dataclass(frozen=True)
class Crop:
    """A warped crop: image (dsize x dsize x 3 uint8, the input's channel order), M_o2c / M_c2o (3x3
    float32: image -> crop and back) and pt_crop (the landmarks in crop pixels, float32)."""

    image: np.ndarray
    M_o2c: np.ndarray
    M_c2o: np.ndarray
    pt_crop: np.ndarray | None


def resize_to_limit_shape(
    h: int, w: int, max_dim: int = MAX_DIM, division: int = DIVISION
) -> tuple[tuple[int, int] | None, tuple[int, int]]:
    """(the (w, h) to resize to, or None) and the final (h, w) after the divisibility crop."""
    resize = None
    if max_dim > 0 and max(h, w) > max_dim:
        if h > w:
            new_h, new_w = max_dim, int(w * (max_dim / h))
        else:
            new_w, new_h = max_dim, int(h * (max_dim / w))
        if new_h < 1 or new_w < 1:
            raise FlashTalkError(f"a {w}x{h} image cannot be limited to {max_dim} px: one side would be 0 px")
        resize, (h, w) = (new_w, new_h), (new_h, new_w)
    d = max(division, 1)
    hh, ww = h - h % d, w - w % d
    return resize, ((h, w) if hh == 0 or ww == 0 else (hh, ww))


def resize_to_limit(img: np.ndarray, max_dim: int = MAX_DIM, division: int = DIVISION) -> np.ndarray:
    """§1.2: shrink so the longer side is at most max_dim (bilinear), then drop the last rows / columns so
    both sides are multiples of division (never resampled)."""
    import cv2

    resize, (h, w) = resize_to_limit_shape(img.shape[0], img.shape[1], max_dim, division)
    if resize is not None:
        img = cv2.resize(img, resize)
    return img[:h, :w]


def eye_lip_centres(pts: np.ndarray) -> np.ndarray:
    """§4.1: [[eye centre], [lip centre]] (2x2 float32) for a 106- or 203-point set."""
    pts = np.asarray(pts, dtype=F32)
    if pts.shape[0] == 106:
        left, right, lips = pts[[33, 35, 40, 39]], pts[[87, 89, 94, 93]], (52, 61)
    elif pts.shape[0] == 203:
        left, right, lips = pts[[0, 6, 12, 18]], pts[[24, 30, 36, 42]], (48, 66)
    else:
        raise FlashTalkError(f"face landmarks must be 106 or 203 points, got {pts.shape[0]}")
    eye = (np.mean(left, axis=0) + np.mean(right, axis=0)) / 2
    lip = (pts[lips[0]] + pts[lips[1]]) / 2
    return np.stack([eye, lip], axis=0)


@dataclass(frozen=True)
class Square:
    """§4.2: the oriented square: centre C (float32), side (float32) and angle θ (radians, float64)."""

    center: np.ndarray
    side: np.float32
    angle: float


def oriented_square(pts: np.ndarray, scale: float, vy: float) -> Square:
    """§4.2 (vx is always 0: the reference never passes it on)."""
    pts = np.asarray(pts, dtype=F32)
    pt2 = eye_lip_centres(pts)
    uy = pt2[1] - pt2[0]
    length = np.linalg.norm(uy)
    uy = np.array([0, 1], dtype=F32) if length <= 1e-3 else uy / length
    ux = np.array((uy[1], -uy[0]), dtype=F32)
    angle = math.acos(min(1.0, max(-1.0, float(ux[0]))))
    if ux[1] < 0:
        angle = -angle
    rot = np.array([ux, uy])
    center0 = np.mean(pts, axis=0)
    rpts = (pts - center0) @ rot.T
    lo, hi = np.min(rpts, axis=0), np.max(rpts, axis=0)
    mid = (lo + hi) / 2
    size = hi - lo
    side = np.full(2, max(size[0], size[1]), dtype=F32)
    side *= F32(scale)
    center = center0 + ux * mid[0] + uy * mid[1]
    center = center + ux * (F32(0.0) * side) + uy * (F32(vy) * side)
    return Square(center.astype(F32), side[0], angle)


def crop_matrix(square: Square, dsize: int, rotate: bool = True) -> np.ndarray:
    """§4.3: M_o2c (2x3 float32) with the scalar products in float64."""
    s = dsize / float(square.side)
    cx, cy = float(square.center[0]), float(square.center[1])
    t = float(F32(dsize / 2))
    if rotate:
        co, si = math.cos(square.angle), math.sin(square.angle)
        m = [[s * co, s * si, t - s * (co * cx + si * cy)], [-s * si, s * co, t - s * (-si * cx + co * cy)]]
    else:
        m = [[s, 0.0, t - s * cx], [0.0, s, t - s * cy]]
    return np.array(m, dtype=F32)


def transform_points(pts: np.ndarray, M: np.ndarray) -> np.ndarray:
    """pts @ M[:2, :2].T + M[:2, 2] in the points' precision."""
    return pts @ M[:2, :2].T + M[:2, 2]


def warp(img: np.ndarray, M: np.ndarray, dsize: int) -> np.ndarray:
    """Bilinear warpAffine (source -> destination matrix), black border."""
    import cv2

    return cv2.warpAffine(img, np.ascontiguousarray(M[:2]), (dsize, dsize), flags=cv2.INTER_LINEAR)


def finish(img: np.ndarray, M: np.ndarray, dsize: int, pts: np.ndarray | None) -> Crop:
    M_o2c = np.vstack([M[:2], np.array([0, 0, 1], dtype=F32)]).astype(F32)
    pt_crop = None if pts is None else transform_points(np.asarray(pts, dtype=F32), M_o2c)
    return Crop(warp(img, M_o2c, dsize), M_o2c, np.linalg.inv(M_o2c), pt_crop)


def crop_image(img: np.ndarray, pts: np.ndarray, params: CropParams = SOURCE) -> Crop:
    """§4.2-4.3: the crop of `img` around landmarks `pts` (106 or 203 points)."""
    square = oriented_square(pts, params.scale, params.vy)
    return finish(img, crop_matrix(square, params.dsize, params.rotate), params.dsize, pts)


def area_256(img_crop: np.ndarray) -> np.ndarray:
    """The 256 version of a source crop (INTER_AREA)."""
    import cv2

    return cv2.resize(img_crop, (256, 256), interpolation=cv2.INTER_AREA)


def driving_box(pts: np.ndarray) -> np.ndarray:
    """§4.6: the axis-aligned square [x1, y1, x2, y2] (float32) around one driving frame's 203 points."""
    sq = oriented_square(pts, DRIVING_SCALE, DRIVING_VY)
    cx, cy, half = float(sq.center[0]), float(sq.center[1]), float(sq.side) / 2
    return np.array([cx - half, cy - half, cx + half, cy + half], dtype=F32)


def global_box(boxes: list[np.ndarray]) -> np.ndarray:
    """§4.6: the coordinate-wise mean of the per-frame boxes (float64)."""
    if not boxes:
        raise FlashTalkError("no driving frame with a face: cannot place the driving crop")
    return np.mean(np.array(boxes, dtype=F32), axis=0).astype(np.float64)


def driving_matrix(box: np.ndarray, dsize: int = 512) -> np.ndarray:
    """§4.6: the unrotated M_o2c (2x3 float32) of the global driving box."""
    left, top, right, bottom = (float(v) for v in box)
    s = dsize / (right - left)
    c = np.array([(left + right) / 2, (top + bottom) / 2], dtype=F32)
    t = float(F32(dsize / 2))
    cx, cy = float(c[0]), float(c[1])
    return np.array([[s, 0.0, t - s * cx], [0.0, s, t - s * cy]], dtype=F32)


def crop_driving_frame(frame: np.ndarray, box: np.ndarray, pts: np.ndarray, dsize: int = 512) -> Crop:
    return finish(frame, driving_matrix(box, dsize), dsize, pts)
