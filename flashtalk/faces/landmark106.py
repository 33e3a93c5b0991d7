"""insightface's 106-point landmark model (2d106det) as LivePortrait calls it (`docs/specs/faces.md` §3):
alignment around the detected box, the raw-pixel input blob, and decoding back to image pixels.

`landmarks(img_bgr, box, run)` takes the model as a callable `run(blob [1, 3, 192, 192]) -> [1, 212]`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

F32 = np.float32
SIZE = 192
POINTS = 106

RunFn = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Alignment:
    scale: float
    M: np.ndarray  # [2, 3] float64, image -> 192 crop
    aimg_bgr: np.ndarray  # [192, 192, 3] uint8
    blob: np.ndarray  # [1, 3, 192, 192] float32, RGB, raw 0..255


def align(img_bgr: np.ndarray, box: np.ndarray, mean: float = 0.0, std: float = 1.0) -> Alignment:
    """§3.2-3.3: similarity (no rotation) putting the box centre at (96, 96) at 192 / (1.5 max(w, h))."""
    import cv2

    x1, y1, x2, y2 = (F32(v) for v in box[:4])
    w, h = float(x2 - x1), float(y2 - y1)
    cx, cy = float(x2 + x1) / 2, float(y2 + y1) / 2
    scale = SIZE / (max(w, h) * 1.5)
    half = SIZE / 2
    M = np.array([[scale, 0.0, -(cx * scale) + half], [0.0, scale, -(cy * scale) + half]], dtype=np.float64)
    aimg = cv2.warpAffine(img_bgr, M, (SIZE, SIZE), borderValue=0.0)
    return Alignment(scale, M, aimg, to_blob(aimg, mean, std))


def to_blob(aimg_bgr: np.ndarray, mean: float = 0.0, std: float = 1.0) -> np.ndarray:
    """§3.3: BGR -> RGB planes, (pixel - mean) / std as NCHW float32; 2d106det normalises itself, so
    mean 0 and std 1 (raw 0..255 values)."""
    rgb = aimg_bgr[..., ::-1].astype(F32)
    if mean != 0.0 or std != 1.0:
        rgb = (rgb - F32(mean)) * F32(1.0 / std)
    return np.ascontiguousarray(rgb.transpose(2, 0, 1)[None])


def normalisation(node_names: list[str]) -> tuple[float, float]:
    """§3.1: insightface's rule on the first graph nodes: a model that subtracts and multiplies itself
    (or starts with `bn_data`) gets mean 0, std 1; otherwise mean 127.5, std 128."""
    sub = any(n.startswith(("Sub", "_minus")) for n in node_names[:8])
    mul = any(n.startswith(("Mul", "_mul")) for n in node_names[:8])
    if (sub and mul) or any(n.startswith("bn_data") for n in node_names[:3]):
        return 0.0, 1.0
    return 127.5, 128.0


def decode(raw: np.ndarray, M: np.ndarray) -> np.ndarray:
    """§3.4: output [1, 212] in [-1, 1] -> 106 (x, y) image pixels, float32."""
    import cv2

    raw = np.asarray(raw, dtype=F32)
    pred = raw.reshape(raw.shape[0], -1)[0].reshape(-1, 2)
    if pred.shape[0] < POINTS:
        raise ValueError(f"the 106-point model gave {pred.shape[0]} points, expected {POINTS}")
    pred = pred[-POINTS:].copy()
    pred += F32(1)
    pred *= F32(SIZE // 2)
    IM = cv2.invertAffineTransform(M)
    homo = np.concatenate([pred, np.ones((POINTS, 1), dtype=F32)], axis=1)
    return (homo.astype(np.float64) @ IM.T).astype(F32)


def landmarks(img_bgr: np.ndarray, box: np.ndarray, run: RunFn) -> np.ndarray:
    a = align(img_bgr, box)
    return decode(run(a.blob), a.M)
