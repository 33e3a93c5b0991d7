"""Geometric, weights-free renderer of the preview: one dense sampling grid per frame, one bilinear warp.

Coordinates are normalised like `grid_sample` (x, y in [-1, 1], y down). For an output pixel p the grid
holds the source position to sample, built in two stages:

1. head pose, inverted: the face is an ellipsoid-like dome z(x, y) over the face box, rotated
   (pitch, then yaw, then roll) about a pivot behind the face, scaled and translated; the forward
   displacement of a surface point is weighted by a soft head mask (background stays put). Its inverse
   q = p - D(q) is solved by two fixed-point steps (the displacement is small and smooth);
2. local deformations in the face's own (canonical) frame at q: a monotone piecewise-linear vertical map
   around the mouth (upper lip up, lower lip and chin down, the mouth line stretched across the gap),
   a horizontal stretch for lip width / rounding, and per-eye upper-lid maps that pull lid skin down
   over the eye for blinks (occluding it).

The warped frame then gets the open-mouth interior darkened and a lash line along a closing lid.
All per-portrait geometry is computed once; per-frame work is elementwise torch over a batch of frames
plus one `flashtalk.kernels.warp2d` call.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from flashtalk.constants import FRAME_SIZE
from flashtalk.errors import FlashTalkError
from flashtalk.kernels.warp2d import warp2d
from flashtalk.models.preview.motion import PreviewMotion

CROP_SIZE = FRAME_SIZE


@dataclass(frozen=True)
class FaceLayout:
    """Eye and mouth centres as fractions of the crop (x right, y down). The defaults are the canonical
    face-crop geometry (face centred at a known scale); override them when the face sits elsewhere.
    The face is assumed upright in the crop."""

    left_eye: tuple[float, float] = (0.39, 0.40)  # the eye on the viewer's left
    right_eye: tuple[float, float] = (0.61, 0.40)
    mouth: tuple[float, float] = (0.50, 0.725)

    def __post_init__(self) -> None:
        for name in ("left_eye", "right_eye", "mouth"):
            point = getattr(self, name)
            if len(point) != 2 or not all(0.05 <= float(v) <= 0.95 for v in point):
                raise FlashTalkError(f"FaceLayout.{name} must be (x, y) fractions in [0.05, 0.95]; got {point}")
        (lx, ly), (rx, ry), (_, my) = self.left_eye, self.right_eye, self.mouth
        if rx - lx < 0.05:
            raise FlashTalkError(f"FaceLayout: right_eye x ({rx}) must be at least 0.05 right of left_eye x ({lx})")
        if my - max(ly, ry) < 0.05:
            raise FlashTalkError(f"FaceLayout: mouth y ({my}) must be at least 0.05 below the eyes ({ly}, {ry})")


@dataclass(frozen=True)
class _Geometry:
    """Derived per-portrait geometry in normalised units."""

    eyes: tuple[tuple[float, float], tuple[float, float]]
    mouth: tuple[float, float]
    face_c: tuple[float, float]
    face_r: tuple[float, float]
    depth: float
    pivot: tuple[float, float, float]
    eye_half_w: float
    eye_half_h: float
    mouth_reach: float  # half-width of the jaw / lip fields
    lip_h: float
    chin: float  # chin below the mouth line
    jaw_max: float

    @staticmethod
    def from_layout(layout: FaceLayout) -> "_Geometry":
        (lx, ly), (rx, ry), (mx, my) = [
            (2 * x - 1, 2 * y - 1) for x, y in (layout.left_eye, layout.right_eye, layout.mouth)
        ]
        d = math.hypot(rx - lx, ry - ly)  # inter-ocular distance
        h = my - 0.5 * (ly + ry)  # eyes-to-mouth height
        cx, cy = (lx + rx + 2 * mx) / 4, 0.5 * (ly + ry) + 0.45 * h
        face_r = (1.2 * d, 1.2 * h)
        eye_half_w = 0.22 * d
        return _Geometry(
            eyes=((lx, ly), (rx, ry)),
            mouth=(mx, my),
            face_c=(cx, cy),
            face_r=face_r,
            depth=0.6 * face_r[0],
            pivot=(cx, cy + 0.25 * h, -0.6 * face_r[0]),
            eye_half_w=eye_half_w,
            eye_half_h=0.35 * eye_half_w,
            mouth_reach=1.5 * 0.35 * d,
            lip_h=0.06 * h,
            chin=0.45 * h,
            jaw_max=0.12 * h,
        )


def _col(values, device) -> torch.Tensor:
    """Per-frame scalars as [N, 1, 1] float32 for broadcasting over [N, H, W]."""
    return torch.as_tensor(values, dtype=torch.float32, device=device).reshape(-1, 1, 1)


def _segment(u: torch.Tensor, k0, k1, s0, s1) -> torch.Tensor:
    """Linear map of u from [k0, k1] onto [s0, s1] (k1 - k0 may be 0: then the left end)."""
    return s0 + (u - k0) * (s1 - s0) / (k1 - k0).clamp_min(1e-6)


def _bump(s: torch.Tensor) -> torch.Tensor:
    """Smooth compactly supported bump (1 - s^2)^3 on |s| < 1, 0 outside."""
    t = (1 - s * s).clamp_min(0)
    return t * t * t


def _pixel_range(lo: float, hi: float, n: int = CROP_SIZE) -> slice:
    """Pixels whose centres (2i + 1) / n - 1 may fall in [lo, hi] (normalised), clamped to the image."""
    i0 = math.floor((lo + 1) * n / 2 - 0.5)
    i1 = math.ceil((hi + 1) * n / 2 - 0.5) + 1
    return slice(min(max(i0, 0), n), min(max(i1, 0), n))


class PreviewRenderer:
    """Renders frames of a `PreviewMotion` from one 512x512 face crop without learned weights."""

    MOUTH_COLOR = (0.16, 0.05, 0.05)
    MOUTH_OPACITY = 0.85
    LASH_OPACITY = 0.45
    MASK_INNER, MASK_OUTER = 1.3, 2.0  # head mask: 1 inside 1.3x the face ellipse, 0 beyond 2x
    COARSE = 129  # lattice size (per side) the head-pose displacement is solved on

    def __init__(
        self, crop: torch.Tensor, layout: FaceLayout | None = None, device: torch.device | str | None = None
    ) -> None:
        if not isinstance(crop, torch.Tensor):
            raise FlashTalkError(
                f"crop must be a torch.Tensor [3, {CROP_SIZE}, {CROP_SIZE}]; got {type(crop).__name__}"
            )
        if tuple(crop.shape) != (3, CROP_SIZE, CROP_SIZE):
            raise FlashTalkError(f"crop must have shape [3, {CROP_SIZE}, {CROP_SIZE}] (RGB); got {tuple(crop.shape)}")
        if not crop.is_floating_point():
            raise FlashTalkError(f"crop must be a float tensor with values in [0, 1]; got dtype {crop.dtype}")
        if not torch.isfinite(crop).all():
            raise FlashTalkError("crop contains NaN or infinite values")
        lo, hi = float(crop.min()), float(crop.max())
        if lo < 0.0 or hi > 1.0:
            raise FlashTalkError(f"crop values must lie in [0, 1]; got min {lo:.4g}, max {hi:.4g}")
        if layout is not None and not isinstance(layout, FaceLayout):
            raise FlashTalkError(f"layout must be a FaceLayout or None; got {type(layout).__name__}")
        self.device = torch.device(device) if device is not None else crop.device
        self.layout = layout or FaceLayout()
        self.geo = _Geometry.from_layout(self.layout)
        self.image = crop.to(self.device, torch.float32).unsqueeze(0).contiguous()

        # The head displacement is smooth: solve it on a coarse lattice whose corner points are the corner
        # pixel centres, then upsample bilinearly with align_corners=True (exact for the identity grid).
        n, k = CROP_SIZE, self.COARSE
        axis = (torch.arange(k, dtype=torch.float64, device=self.device) * ((n - 1) / (k - 1)) * 2 + 1) / n - 1
        cy, cx = torch.meshgrid(axis.float(), axis.float(), indexing="ij")
        self.cx, self.cy = cx.reshape(-1), cy.reshape(-1)  # [k*k]
        z, self.mask = self._depth_and_mask(self.cx, self.cy)
        self.points = torch.stack([self.cx, self.cy, z, torch.ones_like(z)])  # [4, k*k] surface points
        self.mouth_color = torch.tensor(self.MOUTH_COLOR, device=self.device).view(1, 3, 1, 1)

    # ---- geometry ---------------------------------------------------------------------------------
    def _depth_and_mask(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Dome depth z = depth * (1 - rho^2)^1.5 over the face ellipse, and the soft head mask."""
        g = self.geo
        ex = (x - g.face_c[0]) * (1 / g.face_r[0])
        ey = (y - g.face_c[1]) * (1 / g.face_r[1])
        rho2 = ex * ex + ey * ey
        t = (1 - rho2).clamp_min_(0)
        z = t * t.sqrt() * g.depth
        lo, hi = self.MASK_INNER**2, self.MASK_OUTER**2
        t = ((hi - rho2) * (1 / (hi - lo))).clamp_(0, 1)
        return z, t * t * (3 - 2 * t)

    def _pose_matrix(self, motion: PreviewMotion) -> torch.Tensor:
        """[N, 2, 4]: maps a surface point (x, y, z, 1) to its image displacement (dx, dy) under
        scale * Roll @ Yaw @ Pitch about the pivot, plus translation."""
        yaw, pitch, roll = (
            torch.as_tensor(getattr(motion, k), dtype=torch.float64).deg2rad() for k in ("yaw", "pitch", "roll")
        )
        zero, one = torch.zeros_like(yaw), torch.ones_like(yaw)
        cp, sp, cy, sy, cr, sr = pitch.cos(), pitch.sin(), yaw.cos(), yaw.sin(), roll.cos(), roll.sin()
        # positive pitch moves the front (z > 0) down, positive yaw moves it right, positive roll is clockwise
        r_pitch = torch.stack([one, zero, zero, zero, cp, sp, zero, -sp, cp], -1).view(-1, 3, 3)
        r_yaw = torch.stack([cy, zero, sy, zero, one, zero, -sy, zero, cy], -1).view(-1, 3, 3)
        r_roll = torch.stack([cr, -sr, zero, sr, cr, zero, zero, zero, one], -1).view(-1, 3, 3)
        scale = torch.as_tensor(motion.scale, dtype=torch.float64).view(-1, 1, 1)
        lin = (scale * r_roll @ r_yaw @ r_pitch)[:, :2] - torch.eye(2, 3, dtype=torch.float64)  # R - I
        shift = (
            torch.stack(
                [torch.as_tensor(motion.tx, dtype=torch.float64), torch.as_tensor(motion.ty, dtype=torch.float64)], -1
            )
            * 2
        )  # crop fraction -> normalised
        # d = (R - I)(P - C) + t = (R - I) P + (t - (R - I) C)
        const = shift - lin @ torch.tensor(self.geo.pivot, dtype=torch.float64)
        return torch.cat([lin, const.unsqueeze(-1)], -1).to(self.device, torch.float32)

    def _mouth(self, qx, qy, jaw, width, rounding):
        """Source offsets (vx, vy) and interior opacity for the mouth region, at canonical points q."""
        g = self.geo
        mx, my = g.mouth
        ex = qx - mx
        jx = jaw * g.jaw_max * _bump(ex * (1 / g.mouth_reach))  # opening of this column
        up, dn = 0.25 * jx, 0.75 * jx
        lip, chin, fade = g.lip_h, g.chin, 0.5 * g.chin
        opening = (jx / (0.5 * lip)).clamp(0, 1)
        e = 0.1 * lip * opening  # half-height of the mouth line stretched across the gap
        u = qy - my
        # output u -> source u, monotone piecewise linear; identity outside [-3 lip, chin + fade]
        src = torch.where(
            u < -lip - up,
            _segment(u, -3 * lip, -lip - up, -3 * lip, -lip),
            torch.where(
                u < -up,
                _segment(u, -lip - up, -up, -lip, -e),
                torch.where(
                    u < dn,
                    _segment(u, -up, dn, -e, e),
                    torch.where(
                        u < chin + 0.9 * dn,
                        _segment(u, dn, chin + 0.9 * dn, e, chin),
                        _segment(u, chin + 0.9 * dn, chin + fade, chin, chin + fade),
                    ),
                ),
            ),
        )
        inside = (u > -3 * lip) & (u < chin + fade)
        vy = torch.where(inside, src - u, torch.zeros_like(u))
        # lip width (+ spread) / rounding (narrow): horizontal stretch about the mouth centre
        k = 0.15 * width - 0.2 * rounding - 0.05 * jaw
        vx = -k * _bump(ex * (1 / g.mouth_reach)) * _bump(u * (1 / (4 * lip))) * ex
        # open-mouth interior: between the moved lips, fading in as the column opens
        tau = 1.0 / CROP_SIZE
        dark = opening * torch.sigmoid((u + up) / tau) * torch.sigmoid((dn - u) / tau)
        return vx, vy, dark

    def _mouth_box(self) -> tuple[float, float, float, float]:
        g = self.geo
        mx, my = g.mouth
        return mx - g.mouth_reach, mx + g.mouth_reach, my - 4 * g.lip_h, my + 1.5 * g.chin

    def _eye(self, eye, qx, qy, blink):
        """Source offset vy and lash-line opacity for one upper lid, at canonical points q."""
        g = self.geo
        ex, u = qx - eye[0], qy - eye[1]
        hw, hh = g.eye_half_w * 1.5, g.eye_half_h
        s4 = (ex * (1 / hw)) ** 4
        we = (1 - s4).clamp_min(0) ** 2  # flat-topped across the eye, 0 beyond its corners
        drop = blink * 2.2 * hh * we  # how far the lid margin comes down (to below the lower lid)
        edge = -hh + drop
        # lid skin [-2.5hh, -hh] stretched over [-2.5hh, edge]; eye rows above the new edge are covered
        lid = (u > -2.5 * hh) & (u < edge)
        src = -2.5 * hh + (u + 2.5 * hh) * (1.5 * hh) / (1.5 * hh + drop)
        vy = torch.where(lid, src - u, torch.zeros_like(u))
        lash = blink * we * torch.exp(-(((u - edge) / (0.3 * hh)) ** 2))
        return vy, lash

    def _eye_box(self, eye) -> tuple[float, float, float, float]:
        g = self.geo
        hw, hh = g.eye_half_w * 1.5, g.eye_half_h
        return eye[0] - hw, eye[0] + hw, eye[1] - 2.5 * hh, eye[1] + 2.5 * hh

    # ---- frames -----------------------------------------------------------------------------------
    def render(self, motion: PreviewMotion, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Frames [N, 3, 512, 512] float32 in [0, 1] for motion frames [start, stop)."""
        start, stop = self._check_range(motion, start, stop)
        part = motion.slice(start, stop)
        dev, n, count = self.device, CROP_SIZE, stop - start
        pose = self._pose_matrix(part)  # [N, 2, 4]

        # inverse head pose, q = p - D(q): two fixed-point steps from q = p, on the coarse grid
        k = self.COARSE
        disp = (pose.view(2 * count, 4) @ self.points).view(count, 2, k * k).mul_(self.mask)  # [N, 2, k*k]
        qx, qy = torch.sub(self.cx, disp[:, 0]), torch.sub(self.cy, disp[:, 1])  # [N, k*k] each
        z, w = self._depth_and_mask(qx, qy)
        for axis in (0, 1):
            a = pose[:, axis].unsqueeze(-1)  # [N, 4, 1]
            torch.addcmul(a[:, 3], a[:, 0], qx, out=disp[:, axis]).addcmul_(a[:, 1], qy).addcmul_(a[:, 2], z)
        disp.mul_(w.unsqueeze(1))
        lo, hi = torch.aminmax(disp)
        reach = max(-float(lo), float(hi)) + 4.0 / n  # bounds |p - q|: where local fields can land
        coarse = torch.stack([self.cx, self.cy]).sub(disp).view(count, 2, k, k)
        planes = F.interpolate(coarse, size=(n, n), mode="bilinear", align_corners=True)  # [N, 2, H, W]
        grid = planes.permute(0, 2, 3, 1)  # [N, H, W, 2] view: x and y planes stay contiguous

        # local deformations, in the face frame, only where they can reach
        overlays = []
        rows, cols = self._boxes(self._mouth_box(), reach)
        cell = grid[:, rows, cols]
        vx, vy, dark = self._mouth(
            cell[..., 0], cell[..., 1], _col(part.jaw, dev), _col(part.lip_width, dev), _col(part.lip_round, dev)
        )
        cell[..., 0] += vx
        cell[..., 1] += vy
        overlays.append((rows, cols, dark))
        blink = _col(part.blink, dev)
        for eye in self.geo.eyes:
            rows, cols = self._boxes(self._eye_box(eye), reach)
            cell = grid[:, rows, cols]
            vy, lash = self._eye(eye, cell[..., 0], cell[..., 1], blink)
            cell[..., 1] += vy
            overlays.append((rows, cols, lash))

        frames = warp2d(self.image.expand(count, -1, -1, -1), grid, padding="border")
        rows, cols, dark = overlays[0]
        frames[:, :, rows, cols] = torch.lerp(
            frames[:, :, rows, cols], self.mouth_color, self.MOUTH_OPACITY * dark.unsqueeze(1)
        )
        for rows, cols, lash in overlays[1:]:
            frames[:, :, rows, cols] *= 1 - self.LASH_OPACITY * lash.unsqueeze(1)
        return frames.clamp_(0, 1)

    @staticmethod
    def _boxes(box, reach) -> tuple[slice, slice]:
        x0, x1, y0, y1 = box
        return _pixel_range(y0 - reach, y1 + reach), _pixel_range(x0 - reach, x1 + reach)

    @staticmethod
    def _check_range(motion: PreviewMotion, start: int, stop: int | None) -> tuple[int, int]:
        if not isinstance(motion, PreviewMotion):
            raise FlashTalkError(f"motion must be a PreviewMotion; got {type(motion).__name__}")
        stop = len(motion) if stop is None else stop
        if not 0 <= start < stop <= len(motion):
            raise FlashTalkError(f"frame range [{start}, {stop}) is empty or outside the motion's {len(motion)} frames")
        return start, stop


__all__ = ["CROP_SIZE", "FaceLayout", "PreviewRenderer"]
