"""User controls on LivePortrait's keypoint motion, without retraining (docs/specs/controls.md, docs/specs/joyvasa.md §3.6).

One typed set, `ControlSet` (this module: its ranges, keyframed tracks and parsing), applied per frame by
`flashtalk.controls.apply.apply_controls` after the motion model and before stitching, in
LivePortrait's convention (edits enter the un-rotated expression slot `δ` of x_d = s·(x_c R + δ) + t):

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
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flashtalk.errors import FlashTalkError

if TYPE_CHECKING:
    import torch

REGIONS = ("all", "pose", "exp", "lips", "eyes")
INTERPOLATIONS = ("monotone", "smoothstep", "linear")
# numeric controls that may be tracks: name -> (identity value, lower, upper)
NUMERIC: dict[str, tuple[float, float, float]] = {
    "yaw": (0.0, -90.0, 90.0),
    "pitch": (0.0, -90.0, 90.0),
    "roll": (0.0, -90.0, 90.0),
    "yaw_gain": (1.0, 0.0, 3.0),
    "pitch_gain": (1.0, 0.0, 3.0),
    "roll_gain": (1.0, 0.0, 3.0),
    "expression_scale": (1.0, 0.0, 3.0),
    "intensity": (1.0, 0.0, 3.0),
    "head_distance": (1.0, 0.5, 2.0),
    "gaze_x": (0.0, -30.0, 30.0),
    "gaze_y": (0.0, -63.0, 63.0),
    "look_at_camera": (0.0, 0.0, 1.0),
    "blink": (0.0, -20.0, 5.0),
    "eyebrow": (0.0, -30.0, 30.0),
    "wink": (0.0, 0.0, 39.0),
    "mouth_open": (0.0, -90.0, 120.0),
    "grin": (0.0, -20.0, 15.0),
    "purse": (0.0, -20.0, 15.0),
    "pout": (0.0, -0.09, 0.09),
    "smile": (0.0, -0.3, 1.3),
    "emotion_weight": (1.0, -1.0, 2.0),
}
OPTIONAL_RATIOS = ("eye_open", "lip_open")  # None = off; [0, 0.8]: LivePortrait's retargeting range
DRIVING = "driving"  # eye_open / lip_open follow the driving video's per-frame ratios
# Source eye / lip-open ratios assumed for the retargeting MLPs when LivePortrait's 203-point landmark
# model is not available to measure them (ControlSet.source_eye / source_lip): open eyes, closed mouth.
SOURCE_EYE_RATIO, SOURCE_LIP_RATIO = 0.35, 0.05


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
            raise FlashTalkError(
                f"a track needs as many values as times (>= 1), got {len(self.times)} times "
                f"and {len(self.values)} values"
            )
        if not all(math.isfinite(v) for v in (*self.times, *self.values)):
            raise FlashTalkError("track times and values must be finite numbers")
        if any(b <= a for a, b in zip(self.times, self.times[1:])):
            raise FlashTalkError(f"track times must be strictly increasing, got {list(self.times)}")
        if self.interpolation not in INTERPOLATIONS:
            raise FlashTalkError(
                f"interpolation must be one of {', '.join(INTERPOLATIONS)}, not {self.interpolation!r}"
            )

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
        h00, h10 = 2 * u**3 - 3 * u**2 + 1, u**3 - 2 * u**2 + u
        h01, h11 = -2 * u**3 + 3 * u**2, u**3 - u**2
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
                raise FlashTalkError(
                    f"{where}: control {name!r} at {time} s cannot be keyframed "
                    f"(keyframed controls: {', '.join(NUMERIC)})"
                )
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
    def from_mapping(
        cls,
        controls: Mapping[str, Any],
        *,
        allowed: tuple[str, ...] | None = None,
        expression_of: Callable[[str], Any] | None = None,
        driving: bool = False,
    ) -> "ControlSet":
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
                    raise FlashTalkError(
                        f"{k}=driving follows a driving video's frames; give one (--driving) or a ratio in [0, 0.8]"
                    )
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
            from flashtalk.controls.emotion import load_preset

            return tuple(float(x) for x in load_preset(path)[1].reshape(-1).tolist())
        if expression_of is None:
            raise FlashTalkError(
                f"emotion {path}: an image needs the network to read its expression; "
                "pass a preset (.json / .safetensors) here"
            )
        return tuple(float(x) for x in expression_of(str(path)).reshape(-1).tolist())
    try:
        flat = [float(x) for x in (v.reshape(-1).tolist() if hasattr(v, "reshape") else v)]
    except (TypeError, ValueError):
        raise FlashTalkError(f"emotion must be a preset path or 63 numbers, got {type(v).__name__}") from None
    if len(flat) != 63 or not all(math.isfinite(x) for x in flat):
        raise FlashTalkError(f"emotion must be 63 finite numbers (21 keypoints × 3), got {len(flat)} values")
    return tuple(flat)
