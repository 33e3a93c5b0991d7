"""Eye and lip open ratios from 203 landmarks and the combined retargeting inputs (`docs/specs/faces.md` §6)."""

from __future__ import annotations

import numpy as np

EPS = 1e-6
LIP_NORMALIZE_THRESHOLD = 0.03
SOURCE_VIDEO_EYE_THRESHOLD, EYE_FALLBACK = 0.18, 0.39


def _ratio(lmk: np.ndarray, i: int, j: int, k: int, m: int) -> np.ndarray:
    num = np.linalg.norm(lmk[:, i] - lmk[:, j], axis=1, keepdims=True)
    den = np.linalg.norm(lmk[:, k] - lmk[:, m], axis=1, keepdims=True)
    return num / (den + lmk.dtype.type(EPS))


def _batch(lmk: np.ndarray) -> np.ndarray:
    lmk = np.asarray(lmk)
    lmk = lmk[None] if lmk.ndim == 2 else lmk
    if lmk.ndim != 3 or lmk.shape[1:] != (203, 2):
        raise ValueError(f"eye / lip ratios need 203-point landmarks, got shape {lmk.shape}")
    return lmk


def eye_ratio(lmk: np.ndarray) -> np.ndarray:
    """[N, 2] ("left", "right"): lid gap / eye width for each eye, from [N, 203, 2] or [203, 2]."""
    lmk = _batch(lmk)
    return np.concatenate([_ratio(lmk, 6, 18, 0, 12), _ratio(lmk, 30, 42, 24, 36)], axis=1)


def lip_ratio(lmk: np.ndarray) -> np.ndarray:
    """[N, 1]: inner-lip gap / mouth width."""
    return _ratio(_batch(lmk), 90, 102, 48, 66)


def combined_eye(src_eye: np.ndarray, drv_eye: np.ndarray) -> np.ndarray:
    """§6.2: [source left, source right, driving left] as float32."""
    return np.concatenate([np.asarray(src_eye)[..., :2], np.asarray(drv_eye)[..., :1]], axis=-1).astype(np.float32)


def combined_lip(src_lip: np.ndarray, drv_lip: np.ndarray) -> np.ndarray:
    return np.concatenate([np.asarray(src_lip)[..., :1], np.asarray(drv_lip)[..., :1]], axis=-1).astype(np.float32)


def source_video_eye(frame0_eye: np.ndarray) -> float:
    """§6.3: mean of source frame 0's two eye ratios, replaced by 0.39 below 0.18."""
    c = float(np.mean(frame0_eye))
    return EYE_FALLBACK if c < SOURCE_VIDEO_EYE_THRESHOLD else c
