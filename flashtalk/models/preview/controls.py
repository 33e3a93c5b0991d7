"""The weights-free preview's share of the controls: names, ranges and how they act on `PreviewMotion`.

Each range lies inside `flashtalk.controls.control_set.NUMERIC`'s range of the same control (a test checks
it), narrower where the geometric warp of the photo cannot go further (pose offsets within ±30°).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from flashtalk.errors import FlashTalkError

PREVIEW_CONTROLS = ("yaw", "pitch", "roll", "expression_scale", "head_distance", "mouth_open", "blink")
PREVIEW_LIMITS = {
    "yaw": (-30.0, 30.0),
    "pitch": (-30.0, 30.0),
    "roll": (-30.0, 30.0),
    "expression_scale": (0.0, 2.0),
    "head_distance": (0.5, 2.0),
    "mouth_open": (-90.0, 120.0),
    "blink": (-20.0, 5.0),
}


def check_preview_controls(controls: Mapping[str, Any], backend: str = "preview") -> dict[str, float]:
    """Validated preview controls, or FlashTalkError naming the bad key / value and its range."""
    if not isinstance(controls, Mapping):
        raise FlashTalkError(f"controls must be a mapping of name -> number; got {type(controls).__name__}")
    unknown = sorted(set(controls) - set(PREVIEW_CONTROLS))
    if unknown:
        raise FlashTalkError(
            f"unknown controls {unknown} for the {backend} backend (known: {', '.join(PREVIEW_CONTROLS)})"
        )
    out = {}
    for key, value in controls.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise FlashTalkError(f"control {key} must be a finite number; got {value!r}")
        lo, hi = PREVIEW_LIMITS[key]
        if not lo <= value <= hi:
            raise FlashTalkError(f"control {key} must be in [{lo:g}, {hi:g}]; got {value!r}")
        out[key] = float(value)
    return out


def apply_preview_controls(motion: Any, values: Mapping[str, float]) -> Any:
    """The weights-free preview's share of the controls, on a PreviewMotion (numpy arrays, in place):
    pose offsets (degrees), expression_scale (mouth shapes), head_distance (scale), mouth_open (jaw,
    120 = wide open), blink (−20 = closed)."""
    import numpy as np

    for key in ("yaw", "pitch", "roll"):
        if key in values:
            setattr(motion, key, getattr(motion, key) + np.float32(values[key]))
    if "expression_scale" in values:
        s = np.float32(values["expression_scale"])
        motion.jaw, motion.lip_width, motion.lip_round = motion.jaw * s, motion.lip_width * s, motion.lip_round * s
    if "head_distance" in values:
        motion.scale = motion.scale * np.float32(values["head_distance"])
    if "mouth_open" in values:
        motion.jaw = np.clip(motion.jaw + np.float32(values["mouth_open"] / 120), 0, 1).astype(np.float32)
    if "blink" in values:
        motion.blink = np.clip(motion.blink + np.float32(-values["blink"] / 20), 0, 1).astype(np.float32)
    return motion
