"""The square face crop the renderer expects, and the affine that maps it back onto the photo.

`--crop auto` finds the largest frontal face with OpenCV's Haar cascade (the XML ships inside the
`opencv-python-headless` 4.x wheel; nothing is downloaded; OpenCV 5.x has no Haar cascade, and there `auto`
needs LivePortrait's face models) and places it the way LivePortrait's landmark
crop does (side 2.3 x the landmark box, centre moved up by 0.125 x the side). The Haar box is about as
wide as LivePortrait's 106-landmark box and its centre sits ~0.15 box sides higher, so from the Haar box:
side = 2.3 x box, centre = box centre moved up by 0.14 x box. The face keeps that canonical place even
at the photo's borders: parts of the square outside the photo repeat the border pixels (paste-back
only uses the face region). `center` takes the largest centred square; `X,Y,W,H` a box in photo
pixels, squared around its centre.

With `auto`, the eyes (a second Haar cascade, inside the face) and an estimate of the mouth are located in
the crop as hints for renderers that need a face layout (the weights-free preview); None when not found.
`center` and a box never run a detector (their landmarks are None: the preview keeps its canonical layout).

With LivePortrait's face models (`flashtalk.faces`, `faces=` below) `auto` is LivePortrait's own crop
instead: detection, 106 landmarks, the rotated landmark crop of the size-limited photo, and the 203-point
eye / lip open ratios (`FaceCrop.ratios`). The log says which path ran.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from flashtalk.constants import FRAME_SIZE
from flashtalk.errors import FlashTalkError

if TYPE_CHECKING:
    from flashtalk.faces.pipeline import FaceModels

log = logging.getLogger(__name__)

CROP_SIZE = FRAME_SIZE
FACE_SCALE = 2.3  # crop side / face-box side
FACE_SHIFT_UP = 0.14  # crop centre = face-box centre moved up by this fraction of the face box
DETECT_MAX_SIDE = 640  # photos are downscaled to at most this for detection
MAX_BOX_SCALE = 4.0  # a --crop box side may be at most this x the photo's longer side (padding is memory)
MOUTH_BELOW_EYES = 0.95  # mouth centre below the eyes' midpoint, in inter-eye distances (adult faces)


@dataclass(frozen=True)
class Box:
    """A square in photo pixel coordinates (left, top, side); may extend past the photo's borders."""

    x: float
    y: float
    side: float


@dataclass(frozen=True)
class Landmarks:
    """Face points as (x, y) fractions of the crop (x right, y down)."""

    left_eye: tuple[float, float]  # the eye on the viewer's left
    right_eye: tuple[float, float]
    mouth: tuple[float, float]  # estimated from the eyes
    ratios: "FaceRatios | None" = None  # eye / lip open ratios (LivePortrait's 203 landmarks only)


@dataclass(frozen=True)
class FaceRatios:
    """The source's eye-open ratios (left, right) and lip-open ratio from its 203 landmarks."""

    eye: tuple[float, float]
    lip: float


@dataclass(frozen=True)
class FaceCrop:
    image: np.ndarray  # [CROP_SIZE, CROP_SIZE, 3] uint8 RGB
    box: Box
    crop_to_photo: np.ndarray  # [2, 3] float64: photo pixel = M @ (u, v, 1) for crop pixel (u, v)
    landmarks: Landmarks | None  # None when the eyes were not found in the crop
    ratios: FaceRatios | None = None  # only from LivePortrait's landmarks
    method: str = "haar"  # "liveportrait" | "haar" | "center" | "box"

    @property
    def photo_to_crop(self) -> np.ndarray:
        """[2, 3] inverse affine, OpenCV convention (what `flashtalk.kernels.paste_back` takes)."""
        return invert_affine(self.crop_to_photo)


def parse_crop(spec: str) -> str | tuple[float, float, float, float]:
    """`auto`, `center` or `X,Y,W,H` -> the mode or the box."""
    if spec in ("auto", "center"):
        return spec
    if not isinstance(spec, str):
        raise FlashTalkError(f"--crop must be auto, center or X,Y,W,H in pixels; got a {type(spec).__name__}")
    parts = spec.split(",")
    try:
        x, y, w, h = (float(p) for p in parts)
    except ValueError:
        raise FlashTalkError(f"--crop must be auto, center or X,Y,W,H in pixels; got {spec[:80]!r}") from None
    return _check_box((x, y, w, h))


def _check_box(box) -> tuple[float, float, float, float]:
    """Four finite numbers with a positive width and height (the size against the photo: `crop_box`)."""
    try:
        x, y, w, h = (float(v) for v in box)
    except (TypeError, ValueError, OverflowError):
        raise FlashTalkError(f"--crop box must be four numbers X,Y,W,H; got {str(box)[:80]!r}") from None
    text = f"{x:g},{y:g},{w:g},{h:g}"
    if not all(math.isfinite(v) for v in (x, y, w, h)):
        raise FlashTalkError(f"--crop box {text} must be finite numbers (no NaN or inf)")
    if w <= 0 or h <= 0:
        raise FlashTalkError(f"--crop box {text} must have a positive width and height")
    return (x, y, w, h)


def haar_available() -> bool:
    """Whether this OpenCV has the Haar cascade detector and its bundled XML files (4.x wheels; not 5.x)."""
    import cv2

    return hasattr(cv2, "CascadeClassifier") and hasattr(getattr(cv2, "data", None), "haarcascades")


def _cascade(name: str):
    import cv2

    if not haar_available():
        raise FlashTalkError(
            f"--crop auto needs LivePortrait's face models (`flashtalk download` fetches them) or OpenCV's Haar "
            f"cascade, which OpenCV {cv2.__version__} does not have (4.x wheels do); "
            "or pass --crop center / X,Y,W,H"
        )
    cascade = cv2.CascadeClassifier(cv2.data.haarcascades + name)
    if cascade.empty():
        raise FlashTalkError(
            f"OpenCV's detector {name} could not be loaded; install opencv-python-headless 4.x "
            "(5.x wheels do not bundle it), or pass --crop center / X,Y,W,H"
        )
    return cascade


def _grey(image: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.equalizeHist(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY))


def detect_face(photo: np.ndarray) -> tuple[float, float, float, float] | None:
    """The largest frontal face as (x, y, w, h) in photo pixels, or None."""
    import cv2

    h, w = photo.shape[:2]
    scale = min(1.0, DETECT_MAX_SIDE / max(h, w))
    small = (
        photo if scale == 1.0 else cv2.resize(photo, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
    )
    min_side = max(24, round(0.08 * min(small.shape[:2])))
    faces = _cascade("haarcascade_frontalface_default.xml").detectMultiScale(
        _grey(small), scaleFactor=1.1, minNeighbors=5, minSize=(min_side, min_side)
    )
    if len(faces) == 0:
        return None
    x, y, fw, fh = max(faces, key=lambda f: f[2] * f[3])
    return (x / scale, y / scale, fw / scale, fh / scale)


def find_landmarks(crop: np.ndarray) -> Landmarks | None:
    """Eyes (Haar eye cascade in the upper half of the face) and an estimated mouth, or None."""
    face = detect_face(crop)
    if face is None:
        return None
    x, y, w, h = (int(round(v)) for v in face)
    eyes = _cascade("haarcascade_eye.xml").detectMultiScale(
        _grey(crop[y : y + h // 2 + h // 8, x : x + w]),
        scaleFactor=1.1,
        minNeighbors=3,
        minSize=(max(8, w // 8), max(8, w // 8)),
        maxSize=(w // 2, w // 2),
    )
    centres = sorted(((x + ex + ew / 2, y + ey + eh / 2) for ex, ey, ew, eh in eyes), key=lambda c: c[0])
    left = [c for c in centres if c[0] < x + w / 2]
    right = [c for c in centres if c[0] >= x + w / 2]
    if not left or not right:
        return None
    (lx, ly), (rx, ry) = left[-1], right[0]  # the two closest to the face's middle
    distance = float(np.hypot(rx - lx, ry - ly))
    if not 0.25 * w <= distance <= 0.7 * w:
        return None
    mx, my = (lx + rx) / 2 - MOUTH_BELOW_EYES * (ry - ly), (ly + ry) / 2 + MOUTH_BELOW_EYES * (rx - lx)
    n = crop.shape[0]
    return Landmarks((float(lx / n), float(ly / n)), (float(rx / n), float(ry / n)), (float(mx / n), float(my / n)))


def face_box(face: tuple[float, float, float, float]) -> Box:
    x, y, w, h = face
    side = FACE_SCALE * max(w, h)
    cx, cy = x + w / 2, y + h / 2 - FACE_SHIFT_UP * max(w, h)
    return Box(float(cx - side / 2), float(cy - side / 2), float(side))


def _square_around(x: float, y: float, w: float, h: float) -> Box:
    side = max(w, h)
    return Box(x + w / 2 - side / 2, y + h / 2 - side / 2, side)


def crop_box(photo: np.ndarray, spec: str | tuple[float, float, float, float], *, name: str = "portrait") -> Box:
    """The square to cut out of `photo` for a `--crop` value."""
    h, w = photo.shape[:2]
    mode = parse_crop(spec) if isinstance(spec, str) else spec
    if mode == "center":
        side = min(w, h)
        return Box((w - side) / 2, (h - side) / 2, side)
    if mode == "auto":
        face = detect_face(photo)
        if face is None:
            raise FlashTalkError(
                f"no face found in {name}; pass --crop center or --crop X,Y,W,H (the face box in pixels)"
            )
        return face_box(face)
    if isinstance(mode, str):
        raise FlashTalkError(f"--crop must be auto, center or X,Y,W,H in pixels; got {mode[:80]!r}")
    x, y, bw, bh = _check_box(mode)
    if x >= w or y >= h or x + bw <= 0 or y + bh <= 0:
        raise FlashTalkError(f"--crop box {x:g},{y:g},{bw:g},{bh:g} lies outside the {w}x{h} {name}")
    limit = MAX_BOX_SCALE * max(w, h)
    if max(bw, bh) > limit:
        raise FlashTalkError(
            f"--crop box {x:g},{y:g},{bw:g},{bh:g} is too large for the {w}x{h} {name}: "
            f"its side may be at most {MAX_BOX_SCALE:g} x the photo's longer side ({limit:g} px)"
        )
    return _square_around(x, y, bw, bh)


def crop_affine(box: Box, size: int = CROP_SIZE) -> np.ndarray:
    """[2, 3] crop -> photo affine with pixel centres at integer coordinates (u, v in 0..size-1)."""
    s = box.side / size
    return np.array([[s, 0.0, box.x + 0.5 * s - 0.5], [0.0, s, box.y + 0.5 * s - 0.5]], dtype=np.float64)


def invert_affine(m: np.ndarray) -> np.ndarray:
    full = np.vstack([m, [0.0, 0.0, 1.0]])
    return np.linalg.inv(full)[:2]


def cut(photo: np.ndarray, box: Box, size: int = CROP_SIZE) -> np.ndarray:
    """Cut `box` out of `photo` and resize it to size x size (Lanczos, antialiased); borders repeat."""
    from PIL import Image

    h, w = photo.shape[:2]
    x0, y0 = math.floor(box.x), math.floor(box.y)
    x1, y1 = math.ceil(box.x + box.side), math.ceil(box.y + box.side)
    pad = ((max(0, -y0), max(0, y1 - h)), (max(0, -x0), max(0, x1 - w)), (0, 0))
    region = photo[max(0, y0) : min(h, y1), max(0, x0) : min(w, x1)]
    if any(p for pair in pad for p in pair):
        region = np.pad(region, pad, mode="edge")
    # sub-pixel box inside the integer region
    left, top = box.x - x0, box.y - y0
    image = Image.fromarray(region).resize(
        (size, size), Image.Resampling.LANCZOS, box=(left, top, left + box.side, top + box.side)
    )
    return np.array(image, dtype=np.uint8)


def face_crop(
    photo: np.ndarray,
    spec: str | tuple[float, float, float, float] = "auto",
    *,
    name: str = "portrait",
    size: int = CROP_SIZE,
    faces: "FaceModels | None" = None,
) -> FaceCrop:
    """`faces`: LivePortrait's face models; with them `auto` is LivePortrait's crop (else the Haar one)."""
    mode = parse_crop(spec) if isinstance(spec, str) else spec
    kind = mode if mode in ("auto", "center") else "box"
    if mode == "auto" and faces is not None:
        return liveportrait_crop(photo, faces, name=name, size=size)
    if mode == "auto":
        log.info("face crop of %s: OpenCV Haar cascade (LivePortrait's face models not loaded)", name)
    box = crop_box(photo, spec, name=name)
    image = cut(photo, box, size)
    return FaceCrop(
        image=image,
        box=box,
        crop_to_photo=crop_affine(box, size),
        landmarks=find_landmarks(image) if kind == "auto" else None,
        method="haar" if kind == "auto" else kind,
    )


def liveportrait_crop(
    photo: np.ndarray, faces: "FaceModels", *, name: str = "portrait", size: int = CROP_SIZE
) -> FaceCrop:
    """LivePortrait's source crop (docs/specs/faces.md §7.1) with its paste-back affine onto `photo`."""
    import cv2

    from flashtalk.faces.crop import resize_to_limit, resize_to_limit_shape, transform_points
    from flashtalk.faces.pipeline import source_face

    limited = resize_to_limit(photo)
    face = source_face(limited, faces, name=name)
    log.info("face crop of %s: LivePortrait landmarks (%s)", name, faces.label)
    image = face.crop.image
    k = image.shape[0] / size
    if size != image.shape[0]:
        image = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
    # crop (at `size`) -> 512 crop -> size-limited photo -> photo (cv2.resize's half-pixel centres)
    from_size = np.array([[k, 0, 0.5 * k - 0.5], [0, k, 0.5 * k - 0.5], [0, 0, 1]])
    resized, _ = resize_to_limit_shape(photo.shape[0], photo.shape[1])
    to_photo = np.eye(3)  # the divisibility crop alone keeps pixel coordinates
    if resized is not None:
        sx, sy = photo.shape[1] / resized[0], photo.shape[0] / resized[1]
        to_photo = np.array([[sx, 0, 0.5 * sx - 0.5], [0, sy, 0.5 * sy - 0.5], [0, 0, 1]])
    m = to_photo @ face.crop.M_c2o.astype(np.float64) @ from_size
    centre = transform_points(np.array([[size / 2 - 0.5, size / 2 - 0.5]]), m)[0]
    side = float(np.hypot(m[0, 0], m[1, 0]) * size)
    pts = transform_points(face.lmk203.astype(np.float64), np.linalg.inv(m)[:2]) / size
    eyes = sorted([tuple(pts[[0, 6, 12, 18]].mean(0)), tuple(pts[[24, 30, 36, 42]].mean(0))])
    mouth = tuple((pts[48] + pts[66]) / 2)
    ratios = FaceRatios((float(face.eye_ratio[0, 0]), float(face.eye_ratio[0, 1])), float(face.lip_ratio[0, 0]))
    landmarks = Landmarks(*(tuple(float(v) for v in p) for p in (eyes[0], eyes[1], mouth)), ratios=ratios)
    return FaceCrop(
        image=np.ascontiguousarray(image),
        box=Box(float(centre[0] - side / 2), float(centre[1] - side / 2), side),
        crop_to_photo=m[:2],
        landmarks=landmarks,
        ratios=ratios,
        method="liveportrait",
    )
