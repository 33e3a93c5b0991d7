"""SCRFD face detection as LivePortrait calls det_10g (`docs/specs/faces.md` §2): letterbox, blob, anchor
decoding, greedy NMS with the +1 convention, the optional max_num ranking and the face order.

`detect(img_bgr, run)` takes the model as a callable `run(blob [1, 3, H, W] float32) -> 9 arrays` in the
session's output order (scores, boxes, key points for strides 8, 16, 32), so the network can be an
onnxruntime session, stored golden tensors or a test stub.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

F32 = np.float32
STRIDES = (8, 16, 32)
ANCHORS = 2
DET_SIZE = 512
DET_THRESH = 0.15  # LivePortrait's CLI / app value (the library default is 0.1)
NMS_THRESH = 0.4
MEAN, STD = 127.5, 128.0

RunFn = Callable[[np.ndarray], Sequence[np.ndarray]]


@dataclass(frozen=True)
class Detections:
    """dets [K, 5] float32 (x1, y1, x2, y2, score in original pixels, descending score), kpss [K, 5, 2];
    plus the intermediates the golden data check."""

    dets: np.ndarray
    kpss: np.ndarray
    cand_sorted: np.ndarray  # [M, 5] every candidate above the threshold, descending score
    cand_kps_sorted: np.ndarray  # [M, 5, 2]
    keep: np.ndarray  # NMS survivors, indices into cand_sorted
    det_scale: float


def letterbox(img_bgr: np.ndarray, size: int = DET_SIZE) -> tuple[np.ndarray, float]:
    """§2.3: the image resized into the top-left of a black size x size canvas, and det_scale."""
    import cv2

    h, w = img_bgr.shape[:2]
    im_ratio = float(h) / w
    if im_ratio > 1.0:
        new_h = size
        new_w = int(new_h / im_ratio)
    else:
        new_w = size
        new_h = int(new_w * im_ratio)
    if new_w < 1 or new_h < 1:
        raise ValueError(f"image {w}x{h} is too thin for the {size}x{size} detector input")
    canvas = np.zeros((size, size, 3), dtype=np.uint8)
    canvas[:new_h, :new_w] = cv2.resize(img_bgr, (new_w, new_h))
    return canvas, float(new_h) / h


def blob(canvas_bgr: np.ndarray) -> np.ndarray:
    """§2.3: (pixel - 127.5) / 128, BGR -> RGB planes, NCHW float32."""
    rgb = canvas_bgr[..., ::-1].astype(F32)
    return np.ascontiguousarray(((rgb - F32(MEAN)) * F32(1.0 / STD)).transpose(2, 0, 1)[None])


def anchor_centers(size: int, stride: int) -> np.ndarray:
    """§2.4: (j·s, i·s) per grid cell, row-major, each repeated for its 2 anchors."""
    n = size // stride
    ys, xs = np.mgrid[:n, :n]
    centres = (np.stack([xs, ys], axis=-1).astype(F32) * stride).reshape(-1, 2)
    return np.repeat(centres, ANCHORS, axis=0)


def _two_d(a: np.ndarray, width: int, what: str) -> np.ndarray:
    a = np.asarray(a, dtype=F32)
    if a.ndim == 3 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 2 or a.shape[1] != width:
        raise ValueError(f"detector output {what} has shape {a.shape}, expected (N, {width})")
    return a


def decode(outs: Sequence[np.ndarray], size: int, thresh: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """§2.4: candidates with score >= thresh over strides 8, 16, 32: scores [M], boxes [M, 4] and key
    points [M, 5, 2] in canvas pixels, in stride and anchor order."""
    if len(outs) != 3 * len(STRIDES):
        raise ValueError(f"the detector gave {len(outs)} outputs, expected 9 (det_10g: scores, boxes, key points)")
    scores_l, boxes_l, kps_l = [], [], []
    for i, s in enumerate(STRIDES):
        n = (size // s) ** 2 * ANCHORS
        scores = _two_d(outs[i], 1, f"{i} (scores, stride {s})")
        dist = _two_d(outs[i + 3], 4, f"{i + 3} (boxes, stride {s})") * F32(s)
        kps = _two_d(outs[i + 6], 10, f"{i + 6} (key points, stride {s})") * F32(s)
        if not scores.shape[0] == dist.shape[0] == kps.shape[0] == n:
            raise ValueError(
                f"detector outputs for stride {s} have {scores.shape[0]}, {dist.shape[0]}, "
                f"{kps.shape[0]} rows, expected {n} for a {size}x{size} input"
            )
        c = anchor_centers(size, s)
        pos = np.where(scores[:, 0] >= F32(thresh))[0]
        box = np.stack(
            [c[:, 0] - dist[:, 0], c[:, 1] - dist[:, 1], c[:, 0] + dist[:, 2], c[:, 1] + dist[:, 3]], axis=-1
        )
        pts = np.stack([c[:, k % 2] + kps[:, k] for k in range(10)], axis=-1).reshape(-1, 5, 2)
        scores_l.append(scores[pos, 0])
        boxes_l.append(box[pos])
        kps_l.append(pts[pos])
    return np.concatenate(scores_l), np.concatenate(boxes_l), np.concatenate(kps_l)


def nms(dets: np.ndarray, thresh: float = NMS_THRESH) -> np.ndarray:
    """§2.5: greedy NMS, +1 pixel areas, float32; a box survives when IoU <= thresh. Indices, keep order."""
    x1, y1, x2, y2, scores = (dets[:, k] for k in range(5))
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size > 0:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        w = np.maximum(F32(0.0), np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + 1)
        h = np.maximum(F32(0.0), np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + 1)
        inter = w * h
        ovr = inter / (areas[i] + areas[rest] - inter)
        order = rest[np.where(ovr <= F32(thresh))[0]]
    return np.array(keep, dtype=np.int64)


def limit(
    dets: np.ndarray, kpss: np.ndarray, img_hw: tuple[int, int], max_num: int, metric: str = "default"
) -> tuple[np.ndarray, np.ndarray]:
    """§2.6: keep the max_num best by area - 2·(centre distance)² ("default") or by area ("max")."""
    if max_num <= 0 or dets.shape[0] <= max_num:
        return dets, kpss
    area = (dets[:, 2] - dets[:, 0]) * (dets[:, 3] - dets[:, 1])
    cy, cx = img_hw[0] // 2, img_hw[1] // 2
    off = np.vstack([(dets[:, 0] + dets[:, 2]) / 2 - cx, (dets[:, 1] + dets[:, 3]) / 2 - cy])
    values = area if metric == "max" else area - np.sum(np.power(off, F32(2.0)), 0) * F32(2.0)
    best = np.argsort(-values, kind="stable")[:max_num]
    return dets[best], kpss[best]


def detect(
    img_bgr: np.ndarray,
    run: RunFn,
    *,
    thresh: float = DET_THRESH,
    nms_thresh: float = NMS_THRESH,
    size: int = DET_SIZE,
    max_num: int = 0,
    canvas: np.ndarray | None = None,
    det_scale: float | None = None,
) -> Detections:
    """§2.3-2.6 on a BGR image. `canvas` / `det_scale` replace the letterbox (golden tests)."""
    if canvas is None:
        canvas, det_scale = letterbox(img_bgr, size)
    outs = run(blob(canvas))
    return postprocess(
        outs, det_scale, img_bgr.shape[:2], thresh=thresh, nms_thresh=nms_thresh, size=size, max_num=max_num
    )


def postprocess(
    outs: Sequence[np.ndarray],
    det_scale: float,
    img_hw: tuple[int, int],
    *,
    thresh: float = DET_THRESH,
    nms_thresh: float = NMS_THRESH,
    size: int = DET_SIZE,
    max_num: int = 0,
    metric: str = "default",
) -> Detections:
    scores, boxes, kps = decode(outs, size, thresh)
    det_scale = float(det_scale)  # a Python float keeps the float32 division of the reference
    boxes, kps = boxes / det_scale, kps / det_scale
    order = np.argsort(-scores, kind="stable")
    cand = np.hstack([boxes, scores[:, None]]).astype(F32)[order]
    cand_kps = kps.astype(F32)[order]
    keep = nms(cand, nms_thresh)
    dets, kpss = cand[keep], cand_kps[keep]
    dets, kpss = limit(dets, kpss, img_hw, max_num, metric)
    return Detections(dets, kpss, cand, cand_kps, keep, det_scale)


def order_faces(dets: np.ndarray) -> list[int]:
    """§2.6 "large-small": detection indices by box area (x2 - x1)(y2 - y1), descending, stable."""
    area = (dets[:, 2] - dets[:, 0]) * (dets[:, 3] - dets[:, 1])
    return sorted(range(len(dets)), key=lambda i: area[i], reverse=True)
