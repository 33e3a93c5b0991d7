"""User controls on LivePortrait's keypoint motion, without retraining (specs/controls.md, joyvasa.md §3.6).

One typed set, `ControlSet`, applied per frame by `apply_controls` after the motion model and before
stitching, in LivePortrait's convention (edits enter the un-rotated expression slot `δ` of
x_d = s·(x_c R + δ) + t):

* pose: offsets (degrees, added to the source pose) and gains (per axis, on the driven rotation away
  from the reference frame, by its Euler angles); `region` picks what the driver moves (all, pose only,
  expression only, lips only, eyes only);
* `expression_scale` (the driven expression change from the source) and `intensity` (LivePortrait's
  driving multiplier: x_d = x_s + (x_d − x_s)·m);
* keypoint sliders with the coefficients of the spec's table 1.2: gaze_x / gaze_y (eyeball units, LP's
  vertical eyelid coupling), blink, eyebrow, wink, mouth_open, grin, purse, pout, smile; `look_at_camera`
  adds Ditto's compensation dx = 0.26·Δyaw, dy = 0.28·Δpitch (Δ: the head's rotation away from the
  source pose, offsets included) so the pupils counter-rotate;
* `eye_open` / `lip_open`: targets of the eye / lip retargeting MLPs (deltas added to x_d), or "driving"
  (each driving frame's own ratio, from LivePortrait's landmarks);
* `emotion`: an additive expression offset [21, 3] times `emotion_weight`, kept off the lip keypoints
  unless `emotion_lips`;
* `head_distance` k multiplies the scale; a guard lowers k (never below 1) per frame so every keypoint's
  x and y stay within ±`head_guard` (the crop spans [−1, 1] in keypoint space);
* `auto_blink`: natural blinks (a 6-frame smooth closing of the blink row, every 60–100 frames, seeded).

Every numeric control may be a keyframed `Track` (time in seconds -> value, monotone-cubic, smoothstep or
linear between keys, constant outside), so a constant `ControlSet()` is the identity: the uncontrolled
keypoints bit for bit. Presets (an expression offset with a name) are JSON or safetensors, never pickle.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, Mapping

from flashtalk.errors import FlashTalkError

from flashtalk.model.keypoints import EYE_KEYPOINTS, LIP_KEYPOINTS, NUM_KP, keypoint_mask

BLINK_HORIZON = 25 * 60 * 30  # frames of the precomputed blink schedule (30 min at 25 fps), then it repeats
REGIONS = ("all", "pose", "exp", "lips", "eyes")
INTERPOLATIONS = ("monotone", "smoothstep", "linear")
X, Y, Z = 0, 1, 2

# (keypoint, axis, coefficient): δ[k, a] += coefficient · value (specs/controls.md table 1.2, LP convention)
KEYPOINT_ROWS: dict[str, tuple[tuple[int, int, float], ...]] = {
    "blink": ((11, Y, -0.001), (13, Y, 0.0003), (15, Y, -0.001), (16, Y, 0.0003), (1, Y, -0.00025), (2, Y, 0.00025)),
    "wink": ((11, Y, 0.001), (13, Y, -0.0003), (17, X, 0.0003), (17, Y, 0.0003), (3, Y, -0.0003)),
    # eyeball y plus LP's eyelid coupling (blink row at b = −v/2 on kps 11, 13, 15, 16), summed
    "gaze_y": ((11, Y, -0.0005), (15, Y, -0.0005), (13, Y, -0.00015), (16, Y, -0.00015)),
    "mouth_open": ((19, Y, 0.001), (19, Z, 0.0001), (17, Y, -0.0001)),
    "grin": ((20, Z, -0.001), (20, Y, -0.001), (14, Y, -0.001)),
    "purse": ((14, Y, 0.001), (3, Y, -0.0005), (7, Y, -0.0005), (17, Z, -0.0005)),
    "pout": ((19, X, 1.0),),
    "smile": ((20, Y, -0.01), (14, Y, -0.02), (17, Y, 0.0065), (17, Z, 0.003), (13, Y, -0.00275), (16, Y, -0.00275),
              (3, Y, -0.0035), (7, Y, -0.0035)),
}
# rows chosen by the value's sign: (rows for v > 0, rows for v <= 0)
SIGNED_ROWS: dict[str, tuple[tuple[tuple[int, int, float], ...], tuple[tuple[int, int, float], ...]]] = {
    "gaze_x": (((11, X, 0.0007), (15, X, 0.001)), ((11, X, 0.001), (15, X, 0.0007))),
    "eyebrow": (((1, Y, 0.001), (2, Y, -0.001)), ((1, X, -0.001), (2, X, 0.001), (1, Y, 0.0003), (2, Y, -0.0003))),
}
GAZE_COMP_YAW, GAZE_COMP_PITCH = 0.26, 0.28  # Ditto: eyeball units per degree of head yaw / pitch
GAZE_COMP_Y_ROWS = ((11, Y, -0.001), (15, Y, -0.001))  # Ditto's vertical eyeball rows (no eyelid coupling)

# numeric controls that may be tracks: name -> (identity value, lower, upper)
NUMERIC: dict[str, tuple[float, float, float]] = {
    "yaw": (0.0, -90.0, 90.0), "pitch": (0.0, -90.0, 90.0), "roll": (0.0, -90.0, 90.0),
    "yaw_gain": (1.0, 0.0, 3.0), "pitch_gain": (1.0, 0.0, 3.0), "roll_gain": (1.0, 0.0, 3.0),
    "expression_scale": (1.0, 0.0, 3.0), "intensity": (1.0, 0.0, 3.0), "head_distance": (1.0, 0.5, 2.0),
    "gaze_x": (0.0, -30.0, 30.0), "gaze_y": (0.0, -63.0, 63.0), "look_at_camera": (0.0, 0.0, 1.0),
    "blink": (0.0, -20.0, 5.0), "eyebrow": (0.0, -30.0, 30.0), "wink": (0.0, 0.0, 39.0),
    "mouth_open": (0.0, -90.0, 120.0), "grin": (0.0, -20.0, 15.0), "purse": (0.0, -20.0, 15.0),
    "pout": (0.0, -0.09, 0.09), "smile": (0.0, -0.3, 1.3), "emotion_weight": (1.0, -1.0, 2.0),
}
OPTIONAL_RATIOS = ("eye_open", "lip_open")  # None = off; [0, 0.8]: LivePortrait's retargeting range
DRIVING = "driving"  # eye_open / lip_open follow the driving video's per-frame ratios
# Source eye / lip-open ratios assumed for the retargeting MLPs when LivePortrait's 203-point landmark
# model is not available to measure them (ControlSet.source_eye / source_lip): open eyes, closed mouth.
SOURCE_EYE_RATIO, SOURCE_LIP_RATIO = 0.35, 0.05
BLINK_FRAMES, BLINK_DEPTH, BLINK_GAP = 6, -20.0, (60, 100)


# ------------------------------------------------------------------------------------------------ tracks


@dataclass(frozen=True)
class Track:
    """Keyframes (times in seconds, strictly increasing; values) of one control, interpolated without
    jumps: "monotone" (Fritsch–Carlson monotone cubic, C1, no overshoot), "smoothstep" (C1, flat at each
    key) or "linear". Constant before the first and after the last key."""

    times: tuple[float, ...]
    values: tuple[float, ...]
    interpolation: str = "monotone"

    def __post_init__(self) -> None:
        if len(self.times) != len(self.values) or not self.times:
            raise FlashTalkError(f"a track needs as many values as times (>= 1), got {len(self.times)} times "
                                 f"and {len(self.values)} values")
        if not all(math.isfinite(v) for v in (*self.times, *self.values)):
            raise FlashTalkError("track times and values must be finite numbers")
        if any(b <= a for a, b in zip(self.times, self.times[1:])):
            raise FlashTalkError(f"track times must be strictly increasing, got {list(self.times)}")
        if self.interpolation not in INTERPOLATIONS:
            raise FlashTalkError(f"interpolation must be one of {', '.join(INTERPOLATIONS)}, "
                                 f"not {self.interpolation!r}")

    def _slopes(self) -> list[float]:
        t, v = self.times, self.values
        n = len(t)
        if n == 1:
            return [0.0]
        d = [(v[i + 1] - v[i]) / (t[i + 1] - t[i]) for i in range(n - 1)]
        m = [d[0]] + [0.0 if d[i - 1] * d[i] <= 0 else (d[i - 1] + d[i]) / 2 for i in range(1, n - 1)] + [d[-1]]
        for i in range(n - 1):  # Fritsch–Carlson limiter: keeps each segment monotone
            if d[i] == 0:
                m[i] = m[i + 1] = 0.0
                continue
            a, b = m[i] / d[i], m[i + 1] / d[i]
            r = a * a + b * b
            if r > 9:
                k = 3 / math.sqrt(r)
                m[i], m[i + 1] = k * a * d[i], k * b * d[i]
        return m

    def __call__(self, t: "torch.Tensor") -> "torch.Tensor":
        """Values at times t (seconds, any shape), float64."""
        import torch

        t = t.double()
        times = torch.tensor(self.times, dtype=torch.float64, device=t.device)
        vals = torch.tensor(self.values, dtype=torch.float64, device=t.device)
        if len(self.times) == 1:
            return vals[0].expand_as(t).clone()
        tc = t.clamp(times[0], times[-1])
        i = (torch.searchsorted(times, tc, right=True) - 1).clamp(0, len(self.times) - 2)
        t0, t1, v0, v1 = times[i], times[i + 1], vals[i], vals[i + 1]
        h = t1 - t0
        u = (tc - t0) / h
        if self.interpolation == "linear":
            return v0 + (v1 - v0) * u
        if self.interpolation == "smoothstep":
            return v0 + (v1 - v0) * (u * u * (3 - 2 * u))
        m = torch.tensor(self._slopes(), dtype=torch.float64, device=t.device)
        h00, h10 = 2 * u ** 3 - 3 * u ** 2 + 1, u ** 3 - 2 * u ** 2 + u
        h01, h11 = -2 * u ** 3 + 3 * u ** 2, u ** 3 - u ** 2
        return h00 * v0 + h10 * h * m[i] + h01 * v1 + h11 * h * m[i + 1]


def load_tracks(source: str | Path | Mapping[str, Any]) -> dict[str, Track]:
    """Tracks from a JSON file or mapping: {"interpolation": "monotone", "keyframes": {"0": {"yaw": 0},
    "1.5": {"yaw": 10, "gaze_x": 5}}} (time in seconds -> control values). A control gets one track over
    the keyframes that name it."""
    where = str(source) if not isinstance(source, Mapping) else "controls"
    if not isinstance(source, Mapping):
        path = Path(source)
        if not path.is_file():
            raise FlashTalkError(f"controls file {path} not found")
        try:
            source = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise FlashTalkError(f"controls file {path}: not valid JSON ({exc})") from None
    if not isinstance(source, Mapping) or not isinstance(source.get("keyframes"), Mapping):
        raise FlashTalkError(f"{where}: expected an object with 'keyframes': {{time: {{control: value}}}}")
    extra = sorted(set(source) - {"interpolation", "keyframes"})
    if extra:
        raise FlashTalkError(f"{where}: unknown keys {extra} (known: interpolation, keyframes)")
    interp = source.get("interpolation", "monotone")
    keys: dict[str, list[tuple[float, float]]] = {}
    for time, values in source["keyframes"].items():
        try:
            t = float(time)
        except ValueError:
            raise FlashTalkError(f"{where}: keyframe time {time!r} is not a number of seconds") from None
        if not isinstance(values, Mapping):
            raise FlashTalkError(f"{where}: keyframe {time}: expected {{control: value}}, got {values!r}")
        for name, v in values.items():
            if name not in NUMERIC:
                raise FlashTalkError(f"{where}: control {name!r} at {time} s cannot be keyframed "
                                     f"(keyframed controls: {', '.join(NUMERIC)})")
            keys.setdefault(name, []).append((t, _number(name, v)))
    tracks = {}
    for name, kv in keys.items():
        kv.sort()
        track = Track(tuple(t for t, _ in kv), tuple(v for _, v in kv), interp)
        _check_range(name, min(track.values))
        _check_range(name, max(track.values))
        tracks[name] = track
    return tracks


# ------------------------------------------------------------------------------------------------ the set


def _number(name: str, v: Any) -> float:
    if isinstance(v, bool):
        raise FlashTalkError(f"control {name} must be a number, got {v!r}")
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise FlashTalkError(f"control {name} must be a number, got {v!r}") from None
    if not math.isfinite(f):
        raise FlashTalkError(f"control {name} must be finite, got {v!r}")
    return f


def _check_range(name: str, v: float) -> None:
    if name in ("yaw", "pitch", "roll"):
        if abs(v) > 90:
            raise FlashTalkError(f"{name} offset must be within ±90 degrees, got {v}")
        return
    _, lo, hi = NUMERIC[name]
    if not lo <= v <= hi:
        raise FlashTalkError(f"{name} must be in [{lo:g}, {hi:g}], got {v}")


@dataclass(frozen=True)
class ControlSet:
    """Per-frame user controls (see the module docstring); the defaults leave the motion unchanged."""

    yaw: float = 0.0  # head-pose offsets in degrees, added to the source pose
    pitch: float = 0.0
    roll: float = 0.0
    yaw_gain: float = 1.0  # gains on the driven rotation away from the reference frame
    pitch_gain: float = 1.0
    roll_gain: float = 1.0
    expression_scale: float = 1.0  # scales the expression change from the source
    intensity: float = 1.0  # LivePortrait's driving multiplier on x_d − x_s
    head_distance: float = 1.0  # scale multiplier (> 1: closer), guarded to keep the face in the crop
    head_guard: float = 0.95  # |x|, |y| bound of every keypoint that head_distance may not push past
    gaze_x: float = 0.0  # eyeball units (LP eyeball_direction_x; ~3.8 degrees of head yaw each)
    gaze_y: float = 0.0
    look_at_camera: float = 0.0  # 0..1: weight of the pupils' compensation of head rotation
    blink: float = 0.0  # ALP blink row (-20 closed .. 5)
    eyebrow: float = 0.0
    wink: float = 0.0
    mouth_open: float = 0.0  # "aaa"
    grin: float = 0.0  # "eee"
    purse: float = 0.0  # "woo"
    pout: float = 0.0
    smile: float = 0.0
    eye_open: float | str | None = None  # target eye-open ratio (0 closed .. 0.8), eye-retargeting MLP, or
    lip_open: float | str | None = None  # "driving": each driving frame's own ratio (LivePortrait landmarks)
    source_eye: tuple[float, float] | None = None  # the portrait's measured eye-open ratios (set by the
    source_lip: float | None = None  # engine from LivePortrait's 203 landmarks; None: SOURCE_*_RATIO)
    driving_eye: tuple[float, ...] | None = None  # per frame of the batch being composed (set by the
    driving_lip: tuple[float, ...] | None = None  # driving animation) for eye_open / lip_open "driving"
    emotion: tuple[float, ...] | None = None  # expression offset, 63 values (21 keypoints × xyz)
    emotion_weight: float = 1.0
    emotion_lips: bool = False  # False: the offset is kept off the lip keypoints
    region: str = "all"  # what the driver moves: all | pose | exp | lips | eyes
    auto_blink: bool = False  # natural blinks (the CLI turns them on by default)
    pose_smoothing: float = 0.99  # EMA strength on generated pose (motion generation, not per frame)
    tracks: Mapping[str, Track] = field(default_factory=dict)  # keyframed numeric controls

    def __post_init__(self) -> None:
        for name in NUMERIC:
            _check_range(name, _number(name, getattr(self, name)))
        for name in OPTIONAL_RATIOS:
            v = getattr(self, name)
            if v is not None and v != DRIVING and not 0 <= _number(name, v) <= 0.8:
                raise FlashTalkError(f"{name} must be in [0, 0.8] (LivePortrait's retargeting range), got {v}")
        if not 0 <= _number("pose_smoothing", self.pose_smoothing) < 1:
            raise FlashTalkError(f"pose_smoothing must be in [0, 1), got {self.pose_smoothing}")
        if not 0 < _number("head_guard", self.head_guard) <= 1:
            raise FlashTalkError(f"head_guard must be in (0, 1], got {self.head_guard}")
        if self.region not in REGIONS:
            raise FlashTalkError(f"region must be one of {', '.join(REGIONS)}, not {self.region!r}")
        if self.emotion is not None and len(self.emotion) != 63:
            raise FlashTalkError(f"emotion offset must have 63 values (21 keypoints × 3), got {len(self.emotion)}")
        for name, track in self.tracks.items():
            if name not in NUMERIC or not isinstance(track, Track):
                raise FlashTalkError(f"tracks: {name!r} must name a numeric control with a Track")

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    @classmethod
    def from_mapping(cls, controls: Mapping[str, Any], *, allowed: tuple[str, ...] | None = None,
                     expression_of: Callable[[str], Any] | None = None, driving: bool = False) -> "ControlSet":
        """Controls from names -> values (CLI, API, server). `controls` may name a track JSON file or
        mapping; `emotion` a preset file (.json / .safetensors), 63 numbers, or, with `expression_of`
        (path -> offset [21, 3]), an image. `allowed` limits the names a caller accepts; `driving` admits
        eye_open / lip_open = "driving" (video-driven clips)."""
        internal = ("tracks", "source_eye", "source_lip", "driving_eye", "driving_lip")
        known = allowed if allowed is not None else tuple(n for n in cls.names() if n not in internal) + ("controls",)
        unknown = sorted(set(controls) - set(known))
        if unknown:
            raise FlashTalkError(f"unknown controls {unknown} (known: {', '.join(known)})")
        values: dict[str, Any] = {}
        for k, v in controls.items():
            if v is None:
                continue
            if k == "controls":
                values["tracks"] = load_tracks(v)
            elif k == "emotion":
                values["emotion"] = _emotion(v, expression_of)
            elif k == "region":
                values[k] = str(v)
            elif k in ("emotion_lips", "auto_blink"):
                if not isinstance(v, bool):
                    raise FlashTalkError(f"control {k} must be true or false, got {v!r}")
                values[k] = v
            elif k in OPTIONAL_RATIOS and v == DRIVING:
                if not driving:
                    raise FlashTalkError(f"{k}=driving follows a driving video's frames; give one (--driving) "
                                         "or a ratio in [0, 0.8]")
                values[k] = DRIVING
            else:
                values[k] = _number(k, v)
        return cls(**values)

    def is_identity(self) -> bool:
        return self == ControlSet(pose_smoothing=self.pose_smoothing, head_guard=self.head_guard)

    def merged(self, changes: Mapping[str, Any]) -> "ControlSet":
        """A copy with `changes` (validated values) applied: the mid-stream update."""
        return replace(self, **changes)

    def values_at(self, times: "torch.Tensor | None") -> dict[str, Any]:
        """Numeric controls at the frames' times (seconds, [N]): floats, or float64 tensors [N] for tracks."""
        out: dict[str, Any] = {name: float(getattr(self, name)) for name in NUMERIC}
        for name, track in self.tracks.items():
            if times is None:
                raise FlashTalkError(f"control {name} is keyframed: frame times are needed to apply it")
            out[name] = track(times)
        return out


def _emotion(v: Any, expression_of: Callable[[str], Any] | None) -> tuple[float, ...]:
    if isinstance(v, (str, Path)):
        path = Path(v)
        if path.suffix.lower() in (".json", ".safetensors"):
            from flashtalk.model.emotion import load_preset

            return tuple(float(x) for x in load_preset(path)[1].reshape(-1).tolist())
        if expression_of is None:
            raise FlashTalkError(f"emotion {path}: an image needs the network to read its expression; "
                                 "pass a preset (.json / .safetensors) here")
        return tuple(float(x) for x in expression_of(str(path)).reshape(-1).tolist())
    try:
        flat = [float(x) for x in (v.reshape(-1).tolist() if hasattr(v, "reshape") else v)]
    except (TypeError, ValueError):
        raise FlashTalkError(f"emotion must be a preset path or 63 numbers, got {type(v).__name__}") from None
    if len(flat) != 63 or not all(math.isfinite(x) for x in flat):
        raise FlashTalkError(f"emotion must be 63 finite numbers (21 keypoints × 3), got {len(flat)} values")
    return tuple(flat)


# ------------------------------------------------------------------------------------------------ applying


def _per_frame(v: Any, like: "torch.Tensor") -> "torch.Tensor":
    """A control value as [N] in like's dtype (a float broadcasts)."""
    import torch

    if isinstance(v, torch.Tensor):
        return v.to(like.device, like.dtype)
    return torch.full((like.shape[0],), float(v), dtype=like.dtype, device=like.device)


def _is(v: Any, identity: float) -> bool:
    return not hasattr(v, "shape") and v == identity


def add_rows(delta: "torch.Tensor", rows, v: Any) -> "torch.Tensor":
    """δ [N, 21, 3] += coefficient · v at each (keypoint, axis, coefficient) row (v a float or [N])."""
    vn = _per_frame(v, delta)
    for k, a, coef in rows:
        delta[:, k, a] += coef * vn
    return delta


def add_signed_rows(delta: "torch.Tensor", rows_pos, rows_neg, v: Any) -> "torch.Tensor":
    import torch

    vn = _per_frame(v, delta)
    pos = vn > 0
    add_rows(delta, rows_pos, torch.where(pos, vn, torch.zeros_like(vn)))
    return add_rows(delta, rows_neg, torch.where(pos, torch.zeros_like(vn), vn))


def euler_degrees(R: "torch.Tensor") -> tuple["torch.Tensor", "torch.Tensor", "torch.Tensor"]:
    """Inverse of keypoints.rotation_from_degrees: R = (Rz Ry Rx)ᵀ [N, 3, 3] -> (pitch, yaw, roll) [N]."""
    import torch

    pitch = torch.atan2(R[:, 1, 2], R[:, 2, 2])
    yaw = torch.atan2(-R[:, 0, 2], torch.hypot(R[:, 1, 2], R[:, 2, 2]))
    roll = torch.atan2(R[:, 0, 1], R[:, 0, 0])
    return tuple(a * (180 / math.pi) for a in (pitch, yaw, roll))


_BLINKS: dict[tuple[int, str], Any] = {}


def _blink_table(seed: int, device: Any) -> "torch.Tensor":
    """The blink values of frames 0 .. BLINK_HORIZON - 1 for `seed`, [BLINK_HORIZON] float64, made once per
    (seed, device) and kept on the device (the schedule then needs no host sync)."""
    import torch

    key = (int(seed), str(device))
    if key not in _BLINKS:
        rng = random.Random(seed)
        starts, at = [], rng.randint(*BLINK_GAP) // 2  # the first blink comes sooner
        while at < BLINK_HORIZON:
            starts.append(at)
            at += BLINK_FRAMES + rng.randint(*BLINK_GAP)
        f = torch.arange(BLINK_HORIZON, dtype=torch.float64)
        out = torch.zeros(BLINK_HORIZON, dtype=torch.float64)
        for s in starts:
            u = (f - s + 0.5) / BLINK_FRAMES
            inside = (u > 0) & (u < 1)
            out = torch.where(inside, BLINK_DEPTH * torch.sin(math.pi * u) ** 2, out)
        if len(_BLINKS) >= 64:
            _BLINKS.pop(next(iter(_BLINKS)))
        _BLINKS[key] = out.to(device)
    return _BLINKS[key]


def blink_schedule(frames: "torch.Tensor", seed: int = 0) -> "torch.Tensor":
    """Natural blinks: the blink value (0 open .. BLINK_DEPTH closed) of frames [N] (indices): a smooth
    BLINK_FRAMES-long closing and opening, with open gaps of BLINK_GAP frames drawn from `seed`. A gather
    from the device-side table (`_blink_table`); it repeats after BLINK_HORIZON frames."""
    return _blink_table(seed, frames.device)[frames.long() % BLINK_HORIZON]


def _index(keys: tuple[int, ...], device: Any) -> "torch.Tensor":
    """[NUM_KP, 1] device mask of a keypoint group (kept on the device)."""
    return keypoint_mask(keys, device)


def apply_controls(controls: ControlSet, *, x_c: "torch.Tensor", source: Any, generated: Any, reference: Any,
                   lip_absolute: bool = True, frames: "torch.Tensor | None" = None, fps: float = 25.0,
                   retarget: Any = None, seed: int = 0) -> "torch.Tensor":
    """Driving keypoints [N, 21, 3] (before stitching) of N generated frames with the controls.

    source: the portrait's state (R, exp, scale, t, pitch, yaw, roll [1, 1], x_s); generated / reference:
    `Motion`s (R, exp, scale, t) of the N frames and of the reference frame d_0. The relative motion is
    `flashtalk.model.keypoints.relative_motion` (joyvasa.md §3.6: R = R_d R_ref^T R_s, δ = exp_s + exp_d −
    exp_ref with the lips absolute when lip_absolute, scale = s_s s_d / s_ref, t = t_s + t_d − t_ref);
    the controls act on it in three stages: pose (`_pose_stage`), expression (`_expression_stage`), scale
    and translation (`_scale_stage`). frames: output frame indices [N] (for tracks and blinks, at `fps`);
    retarget: the stitching module (for eye_open / lip_open)."""
    import torch

    from flashtalk.model.keypoints import relative_motion

    c = controls
    times = None if frames is None else frames.to(torch.float64) / fps
    v = c.values_at(times)
    rel = relative_motion(source, generated, reference, lips_absolute=lip_absolute)
    R, angles = _pose_stage(c, v, source, rel.R)
    exp = _expression_stage(c, v, source, rel.exp, angles, frames, seed)
    return _scale_stage(c, v, x_c, source, R, exp, rel, retarget)


def _pose_stage(c: ControlSet, v: dict, source: Any, R_rel: "torch.Tensor") -> tuple["torch.Tensor", Any]:
    """The rotation [N, 3, 3]: the driven change R_rel (with the gains) times the source's (with the
    offsets); the region keeps the source's when the pose is not driven. Also the gained relative angles
    (pitch, yaw, roll) when look_at_camera needs them, else None."""
    from flashtalk.model.keypoints import rotation_from_degrees

    n = R_rel.shape[0]
    gained = not all(_is(v[f"{a}_gain"], 1.0) for a in ("pitch", "yaw", "roll"))
    rel = None
    if gained or not _is(v["look_at_camera"], 0.0):
        rel = euler_degrees(R_rel)
        rel = tuple(r * _per_frame(v[f"{a}_gain"], r) for r, a in zip(rel, ("pitch", "yaw", "roll")))
        if gained:
            R_rel = rotation_from_degrees(*rel)
    R_s = source.R
    if not all(_is(v[a], 0.0) for a in ("pitch", "yaw", "roll")):
        dp, dy, dr = (_per_frame(v[a], R_rel) for a in ("pitch", "yaw", "roll"))
        R_s = rotation_from_degrees(source.pitch.reshape(-1) + dp, source.yaw.reshape(-1) + dy,
                                    source.roll.reshape(-1) + dr)
    return (R_rel @ R_s if c.region in ("all", "pose") else R_s.expand(n, -1, -1)), rel


def _expression_stage(c: ControlSet, v: dict, source: Any, exp: "torch.Tensor", rel: Any,
                      frames: "torch.Tensor | None", seed: int) -> "torch.Tensor":
    """The expression [N, 21, 3]: the region, expression_scale, the keypoint sliders, automatic blinks,
    the gaze compensation of look_at_camera and the emotion offset (group masks on the device)."""
    import torch

    if c.region != "all":
        keep = {"pose": (), "exp": tuple(range(NUM_KP)), "lips": LIP_KEYPOINTS, "eyes": EYE_KEYPOINTS}[c.region]
        exp = torch.where(_index(keep, exp.device), exp, source.exp)
    if not _is(v["expression_scale"], 1.0):
        exp = source.exp + _per_frame(v["expression_scale"], exp)[:, None, None] * (exp - source.exp)
    edits = [name for name in (*KEYPOINT_ROWS, *SIGNED_ROWS) if not _is(v[name], 0.0)]
    blinks = c.auto_blink and frames is not None
    if not (edits or blinks or rel is not None or c.emotion is not None):
        return exp
    delta = torch.zeros_like(exp)
    for name in edits:
        if name in SIGNED_ROWS:
            add_signed_rows(delta, *SIGNED_ROWS[name], v[name])
        else:
            add_rows(delta, KEYPOINT_ROWS[name], v[name])
    if blinks:
        add_rows(delta, KEYPOINT_ROWS["blink"], blink_schedule(frames, seed))
    if not _is(v["look_at_camera"], 0.0):
        w = _per_frame(v["look_at_camera"], exp)
        head_pitch = rel[0] + _per_frame(v["pitch"], exp)
        head_yaw = rel[1] + _per_frame(v["yaw"], exp)
        add_signed_rows(delta, *SIGNED_ROWS["gaze_x"], w * GAZE_COMP_YAW * head_yaw)
        add_rows(delta, GAZE_COMP_Y_ROWS, w * GAZE_COMP_PITCH * head_pitch)
    if c.emotion is not None:
        e = _emotion_tensor(c.emotion, exp)
        if not c.emotion_lips:
            e = torch.where(_index(LIP_KEYPOINTS, exp.device), torch.zeros_like(e), e)
        delta = delta + _per_frame(v["emotion_weight"], exp)[:, None, None] * e
    return exp + delta


_EMOTIONS: dict[tuple, Any] = {}


def _emotion_tensor(values: tuple[float, ...], like: "torch.Tensor") -> "torch.Tensor":
    """The emotion offset [1, 21, 3] on like's device, made once per (values, device, dtype)."""
    import torch

    key = (values, str(like.device), like.dtype)
    if key not in _EMOTIONS:
        if len(_EMOTIONS) >= 64:
            _EMOTIONS.pop(next(iter(_EMOTIONS)))
        _EMOTIONS[key] = torch.tensor(values, dtype=like.dtype).view(1, -1, 3).to(like.device)
    return _EMOTIONS[key]


def _scale_stage(c: ControlSet, v: dict, x_c: "torch.Tensor", source: Any, R: "torch.Tensor", exp: "torch.Tensor",
                 rel: Any, retarget: Any) -> "torch.Tensor":
    """Scale and translation (driven, or the source's when the pose is not), then head_distance (guarded),
    intensity and the eye / lip retargeting: x_d [N, 21, 3]."""
    import torch

    from flashtalk.model.keypoints import transform_keypoints

    n = R.shape[0]
    if c.region in ("all", "pose"):
        scale, t = rel.scale, rel.t
    else:
        scale, t = source.scale.expand(n, -1), source.t.expand(n, -1)
    distance = not _is(v["head_distance"], 1.0)
    intensity = not _is(v["intensity"], 1.0)
    if not (distance or intensity):
        x_d = transform_keypoints(x_c.expand(n, -1, -1), R, exp, scale, t)
        return x_d if c.eye_open is None and c.lip_open is None else x_d + _retarget_deltas(c, x_d, source, retarget)
    # x_d(k) = k·A + B: A the scaled part, B translation, retargeting deltas and the intensity blend
    A = transform_keypoints(x_c.expand(n, -1, -1), R, exp, scale, torch.zeros_like(t))
    B = transform_keypoints(torch.zeros_like(A), R, torch.zeros_like(A), scale, t)
    B = B + _retarget_deltas(c, A + B, source, retarget)
    if intensity:
        m = _per_frame(v["intensity"], A)[:, None, None]
        A, B = m * A, source.x_s + m * (B - source.x_s)
    k = _per_frame(v["head_distance"], A)
    if distance:
        k = head_distance_guard(A, B, k, c.head_guard)
    return k[:, None, None] * A + B


def head_distance_guard(A: "torch.Tensor", B: "torch.Tensor", k: "torch.Tensor", bound: float) -> "torch.Tensor":
    """Largest k' <= k (never below 1 when k > 1) with |k'·A + B| <= bound in x and y at every keypoint
    ([N, K, 3] each; k [N])."""
    import torch

    a, b = A[..., :2], B[..., :2]
    limit = torch.where(a > 0, (bound - b) / a, torch.where(a < 0, (-bound - b) / a, torch.full_like(a, math.inf)))
    k_max = limit.flatten(1).amin(dim=1).clamp_min(1.0)
    return torch.where(k > 1, torch.minimum(k, k_max), k)


def _retarget_deltas(c: ControlSet, x_d: "torch.Tensor", source: Any, retarget: Any) -> "torch.Tensor | float":
    if c.eye_open is None and c.lip_open is None:
        return 0.0
    if retarget is None:
        raise FlashTalkError("eye_open / lip_open need the renderer's retargeting MLPs (not given)")
    import torch

    n, out = x_d.shape[0], 0.0
    if c.eye_open is not None:
        eye = c.source_eye if c.source_eye is not None else (SOURCE_EYE_RATIO, SOURCE_EYE_RATIO)
        target = _targets(c.eye_open, c.driving_eye, n, x_d, "eye_open")
        ratio = torch.cat([x_d.new_tensor(eye).expand(n, -1), target[:, None]], dim=1)
        out = out + retarget.retarget_eye_delta(source.x_s, ratio)
    if c.lip_open is not None:
        lip = c.source_lip if c.source_lip is not None else SOURCE_LIP_RATIO
        target = _targets(c.lip_open, c.driving_lip, n, x_d, "lip_open")
        ratio = torch.stack([x_d.new_full((n,), lip), target], dim=1)
        out = out + retarget.retarget_lip_delta(source.x_s, ratio)
    return out


def _targets(value: Any, driving: tuple[float, ...] | None, n: int, like: "torch.Tensor", name: str) -> "torch.Tensor":
    """[n] retargeting targets: the control's value, or the driving frames' ratios for "driving"."""
    if value != DRIVING:
        return like.new_full((n,), float(value))
    if driving is None:
        raise FlashTalkError(f"{name}=driving needs a driving video and LivePortrait's face models "
                             "(`flashtalk download`)")
    if len(driving) != n:
        raise FlashTalkError(f"{name}=driving: {len(driving)} driving ratios for {n} frames")
    return like.new_tensor(driving)
