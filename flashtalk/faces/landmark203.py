"""LivePortrait's 203-point landmark runner (landmark.onnx, `docs/specs/faces.md` §5): a 224 crop around seed
landmarks (106 points from the detector, or the previous frame's 203 points when tracking), the input
tensor, and the third output decoded to image pixels.

`refine(img_rgb, seed, run)` takes the model as a callable `run(input [1, 3, 224, 224]) -> outputs` (all
outputs, in session order; only index 2 is read).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from flashtalk.faces.crop import RUNNER, crop_image, transform_points

F32 = np.float32
SIZE = RUNNER.dsize
POINTS = 203

RunFn = Callable[[np.ndarray], Sequence[np.ndarray]]


@dataclass(frozen=True)
class RunnerInput:
    img_crop_rgb: np.ndarray  # [224, 224, 3] uint8
    input: np.ndarray  # [1, 3, 224, 224] float32 in [0, 1]
    M_o2c: np.ndarray | None  # [3, 3] float32 (None for the seed-less path)
    M_c2o: np.ndarray  # [3, 3] float32


def prepare(img_rgb: np.ndarray, seed: np.ndarray | None) -> RunnerInput:
    """§5.1-5.2 (and the seed-less fallback of §5.5 when seed is None)."""
    import cv2

    if seed is not None:
        c = crop_image(img_rgb, seed, RUNNER)
        img, M_o2c, M_c2o = c.image, c.M_o2c, c.M_c2o
    else:
        img = cv2.resize(img_rgb, (SIZE, SIZE))
        k = max(img_rgb.shape[:2]) / SIZE
        M_o2c, M_c2o = None, np.array([[k, 0, 0], [0, k, 0], [0, 0, 1]], dtype=F32)
    return RunnerInput(img, prepare_input(img), M_o2c, M_c2o)


def prepare_input(img_crop_rgb: np.ndarray) -> np.ndarray:
    """§5.2: the RGB crop / 255 as float32 NCHW, no mean or std."""
    return np.ascontiguousarray((img_crop_rgb.astype(F32) / F32(255.0)).transpose(2, 0, 1)[None])


def decode(out2: np.ndarray, M_c2o: np.ndarray) -> np.ndarray:
    """§5.3: the third output's first item as 203 (x, y) in [0, 1] of the crop -> image pixels, float32."""
    out2 = np.asarray(out2, dtype=F32)
    flat = out2.reshape(out2.shape[0], -1)[0] if out2.ndim > 1 else out2
    if flat.size != 2 * POINTS:
        raise ValueError(f"the 203-point model's third output has {flat.size} values per item, expected {2 * POINTS}")
    return transform_points(flat.reshape(-1, 2) * F32(SIZE), M_c2o).astype(F32)


def refine(img_rgb: np.ndarray, seed: np.ndarray | None, run: RunFn) -> np.ndarray:
    p = prepare(img_rgb, seed)
    outs = run(p.input)
    if len(outs) < 3:
        raise ValueError(f"the 203-point model gave {len(outs)} outputs, expected 3")
    return decode(outs[2], p.M_c2o)
