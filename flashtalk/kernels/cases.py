"""The conformance cases of every kernel op: the input makers and case lists that our kernel tests
parametrise over and that `flashtalk kernels verify` runs against any implementation (odd sizes,
non-contiguous and sliced inputs, every mask kind, edge coordinates, every supported dtype).

`cases(op, full)` gives `Case`s: an id, the input dtype (which picks the tolerance) and `make()` -> (args,
kwargs) of one call of the op's public function. Tensors are made on the default device from the global RNG
(callers seed it); `full=False` is the short list CI affords on 2 cores, `full=True` every combination.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

FLOATS = (torch.float32, torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class Case:
    op: str
    id: str
    dtype: torch.dtype
    make: Callable[[], tuple[tuple, dict]]


def dtype_id(dtype: torch.dtype) -> str:
    return {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.uint8: "uint8"}[dtype]


def noncontig(t: torch.Tensor) -> torch.Tensor:
    """The same values with other strides: a channels-last copy viewed back, i.e. permuted memory."""
    perm = [0, *range(2, t.dim()), 1]
    inv = [0, t.dim() - 1, *range(1, t.dim() - 1)]
    return t.permute(perm).contiguous().permute(inv)


# ------------------------------------------------------------------------------------------------ attention

ATTENTION_LENGTHS = [
    (1, 1),
    (7, 7),
    (63, 63),
    (110, 110),
    (111, 111),
    (257, 257),
    (7, 110),
    (111, 63),
    (1, 257),
    (257, 7),
]
MASK_KINDS = [
    "bool-LqLk",
    "bool-B1LqLk-allmasked-rows",
    "bool-transposed",
    "additive-BHLqLk",
    "additive-neginf-B11Lk",
    "keypad",
    "causal",
    "causal-keypad-bool",
    "causal-additive-keypad",
]
LAYOUTS = ["contiguous", "transposed", "sliced", "dmajor"]


def attention_inputs(B, H, Lq, Lk, D, dtype, layout="contiguous"):
    """q, k, v with a given memory layout: contiguous; "transposed" (stored [B, L, H, D], as a projection
    writes them); "sliced" (every other row of a longer buffer and the first D of a wider one, unit
    stride along neither L nor D for k); "dmajor" (stored [B, H, D, L], so D has a non-unit stride)."""

    def one(L):
        if layout == "contiguous":
            return torch.randn(B, H, L, D, dtype=dtype)
        if layout == "transposed":
            return torch.randn(B, L, H, D, dtype=dtype).transpose(1, 2)
        if layout == "sliced":
            return torch.randn(B, H, 2 * L, D + 8, dtype=dtype)[:, :, ::2, :D]
        if layout == "dmajor":
            return torch.randn(B, H, D, L, dtype=dtype).transpose(2, 3)
        raise AssertionError(layout)

    return one(Lq), one(Lk), one(Lk)


def attention_masks(kind, B, H, Lq, Lk, dtype):
    """(attn_mask, key_padding_mask, causal) for a named mask case."""
    if kind == "bool-LqLk":
        return torch.rand(Lq, Lk) < 0.7, None, False
    if kind == "bool-B1LqLk-allmasked-rows":
        m = torch.rand(B, 1, Lq, Lk) < 0.7
        m[0, 0, 3] = False
        m[-1, 0, -1] = False
        return m, None, False
    if kind == "bool-transposed":
        return (torch.rand(B, H, Lk, Lq) < 0.7).transpose(2, 3), None, False
    if kind == "additive-BHLqLk":
        return torch.randn(B, H, Lq, Lk, dtype=dtype) * 2, None, False
    if kind == "additive-neginf-B11Lk":
        m = torch.randn(B, 1, 1, Lk, dtype=dtype)
        m[..., ::3] = float("-inf")
        return m, None, False
    if kind == "keypad":
        kpm = torch.rand(B, Lk) < 0.3
        kpm[-1] = True  # the whole last batch element is padding: every row of it is all-masked
        return None, kpm, False
    if kind == "causal":
        return None, None, True
    if kind == "causal-keypad-bool":
        kpm = torch.zeros(B, Lk, dtype=torch.bool)
        kpm[0, -5:] = True
        return torch.rand(Lq, Lk) < 0.8, kpm, True
    if kind == "causal-additive-keypad":
        kpm = torch.zeros(B, Lk, dtype=torch.bool)
        kpm[:, :2] = True
        return torch.randn(Lq, Lk, dtype=dtype), kpm, True
    raise AssertionError(kind)


def _attention(full: bool) -> list[Case]:
    out = []

    def add(name, dtype, B, H, Lq, Lk, D, layout="contiguous", kind=None):
        def make():
            q, k, v = attention_inputs(B, H, Lq, Lk, D, dtype, layout)
            am, kpm, causal = attention_masks(kind, B, H, Lq, Lk, dtype) if kind else (None, None, False)
            return (q, k, v), dict(attn_mask=am, key_padding_mask=kpm, causal=causal)

        out.append(Case("attention", f"{name}-{dtype_id(dtype)}", dtype, make))

    dtypes = FLOATS if full else (torch.float32, torch.bfloat16)
    lengths = ATTENTION_LENGTHS if full else [(1, 1), (7, 110), (111, 111), (257, 7)]
    for dtype in dtypes:
        for Lq, Lk in lengths:
            add(f"B1-H2-Lq{Lq}-Lk{Lk}-D32", dtype, 1, 2, Lq, Lk, 32)
        add("B1-H1-Lq63-Lk257-D64-causal", dtype, 1, 1, 63, 257, 64, kind="causal")
        for kind in MASK_KINDS if full or dtype == torch.float32 else MASK_KINDS[::3]:
            add(f"B2-H2-Lq37-Lk110-D16-{kind}", dtype, 2, 2, 37, 110, 16, kind=kind)
            if full:
                add(f"B2-H2-Lq150-Lk131-D16-{kind}", dtype, 2, 2, 150, 131, 16, kind=kind)
        for layout in LAYOUTS[1:]:
            add(f"B2-H3-Lq63-Lk110-D32-{layout}-causal-keypad", dtype, 2, 3, 63, 110, 32, layout, "keypad")
    if full:
        add("B1-H2-Lq5-Lk0-D16-no-keys", torch.float32, 1, 2, 5, 0, 16)
    return out


# ------------------------------------------------------------------------------------------------ warping


def keypoints(B: int, K: int, spread: float = 1.2) -> tuple[torch.Tensor, torch.Tensor]:
    """Source keypoints up to ±spread and driving ones moved by up to ±0.3, so some motions leave [-1, 1]
    (|g| up to ~1.5), plus exact hits: keypoint 0 does not move (S = G), keypoint 1 shifts by exactly one
    half-volume (S lands on the corners ±1 and the centre 0)."""
    xs = (torch.rand(B, K, 3) * 2 - 1) * spread
    xd = xs + (torch.rand(B, K, 3) * 2 - 1) * 0.3
    xd[:, 0] = xs[:, 0]
    if K > 1:
        xs[:, 1], xd[:, 1] = 0.5, -0.5
    return xs, xd


def grid2d(B: int, Ho: int, Wo: int) -> torch.Tensor:
    """A sampling grid up to ±1.5 with the corners, the centre and points past the edges written in."""
    g = (torch.rand(B, Ho, Wo, 2) * 2 - 1) * 1.5
    special = torch.tensor([[-1.0, -1.0], [1.0, 1.0], [0.0, 0.0], [1.0, -1.0], [1.5, 0.2], [-1.2, 1.4]])
    n = min(len(special), Ho * Wo)
    g.view(B, -1, 2)[:, :n] = special[:n].to(g.device)
    return g


# B, K, C, (D, H, W), strided
DMI_CASES = [
    (1, 1, 4, (1, 1, 1), False, "B1-K1-C4-D1H1W1"),
    (2, 5, 4, (3, 5, 7), False, "B2-K5-C4-D3H5W7"),
    (3, 3, 2, (4, 6, 5), True, "B3-K3-C2-D4H6W5-strided"),
]
# B, K, C, (D, H, W), feature (Df, Hf, Wf), strided
DW_CASES = [
    (1, 1, 3, (1, 1, 1), (2, 3, 2), False, "B1-K1-C3-D1H1W1-feat2x3x2"),
    (2, 5, 6, (3, 5, 7), (3, 5, 7), False, "B2-K5-C6-D3H5W7"),
    (2, 4, 5, (4, 3, 5), (5, 6, 3), True, "B2-K4-C5-D4H3W5-feat5x6x3-strided"),
]
# B, C, (H, W), out (Ho, Wo), strided
W2_CASES = [
    (1, 1, (1, 1), (2, 3), False, "B1-C1-H1W1-out2x3"),
    (2, 3, (7, 9), (5, 6), False, "B2-C3-H7W9-out5x6"),
    (3, 4, (6, 5), (7, 3), True, "B3-C4-H6W5-out7x3-strided"),
]


def _dense_motion_input(full: bool) -> list[Case]:
    def case(B, K, C, size, strided, name, dtype):
        def make():
            c = torch.randn(B, C, *size).to(dtype)
            xs, xd = keypoints(B, K)
            if strided:
                c, xs, xd = (
                    noncontig(c),
                    xs.transpose(1, 2).contiguous().transpose(1, 2),
                    xd.transpose(0, 1).contiguous().transpose(0, 1),
                )
            return (c, xs, xd), {}

        return Case("dense_motion_input", f"{name}-{dtype_id(dtype)}", dtype, make)

    return [case(*c, dtype) for c in DMI_CASES for dtype in FLOATS]


def _deform_warp(full: bool) -> list[Case]:
    def case(B, K, C, size, fsize, strided, name, dtype, saturated=False):
        def make():
            logits = (torch.randn(B, K + 1, *size) * (80 if saturated else 4)).to(dtype)
            feature = torch.randn(B, C, *fsize).to(dtype)
            xs, xd = keypoints(B, K)
            if strided:
                logits, feature = noncontig(logits), noncontig(feature)
            return (logits, xs, xd, feature), dict(return_deformation=True)

        return Case("deform_warp", f"{name}{'-saturated' if saturated else ''}-{dtype_id(dtype)}", dtype, make)

    out = [case(*c, dtype) for c in DW_CASES for dtype in FLOATS]
    return out + [case(2, 4, 3, (3, 4, 5), (3, 4, 5), False, "B2-K4-C3-D3H4W5", torch.float32, saturated=True)]


def _warp2d(full: bool) -> list[Case]:
    def case(B, C, size, osize, strided, name, dtype, padding):
        def make():
            image = torch.randn(B, C, *size).to(dtype)
            grid = grid2d(B, *osize)
            if strided:
                image, grid = noncontig(image), grid.permute(0, 2, 1, 3).contiguous().permute(0, 2, 1, 3)
            return (image, grid), dict(padding=padding)

        return Case("warp2d", f"{name}-{padding}-{dtype_id(dtype)}", dtype, make)

    return [case(*c, dtype, p) for c in W2_CASES for dtype in FLOATS for p in ("zeros", "border")]


def rotation_affine(angle: float, scale: float, tx: float, ty: float) -> list[list[float]]:
    c, s = scale * math.cos(angle), scale * math.sin(angle)
    return [[c, -s, tx], [s, c, ty]]


def _paste_back(full: bool) -> list[Case]:
    from flashtalk.kernels.paste_back import make_feather_mask

    def case(dtype, name, identity):
        def make():
            h, w = 20, 26
            crop = noncontig(torch.rand(2, 3, h, w).to(dtype))
            bg = torch.randint(0, 256, (1, 37, 45, 3), dtype=torch.uint8)  # broadcast over B
            affine = torch.tensor(
                [[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]]
                if identity
                else [rotation_affine(0.3, 0.8, -4.2, -2.5), rotation_affine(-0.1, 1.3, -15.7, -6.1)]
            )
            return (crop, bg, affine, make_feather_mask((h, w))), {}

        return Case("paste_back", f"B2-crop20x26-frame37x45-{name}-{dtype_id(dtype)}", dtype, make)

    return [case(d, "rotated", False) for d in FLOATS] + [case(torch.float32, "identity", True)]


# ------------------------------------------------------------------------------------------------ frames

# (N, H, W), cell, M, noncontig, id
WATERMARK_CASES = [
    ((1, 1, 1), 4, 32, False, "N1-1x1"),
    ((2, 7, 9), 3, 5, False, "N2-7x9-cell3-M5"),
    ((1, 37, 53), 4, 32, False, "N1-37x53"),
    ((3, 33, 130), 4, 32, True, "N3-33x130-noncontig"),
    ((1, 131, 129), 4, 32, False, "N1-131x129-wraps-tile"),
]


def watermark_frames(shape, noncontig_: bool, generator=None) -> torch.Tensor:
    """uint8 frames [N, H, W, 3] with saturated rows (255 at the top, 0 at the bottom); `noncontig_`:
    channel-planar storage viewed as [N, H, W, 3], every other frame of a bigger batch."""
    N, H, W = shape
    if noncontig_:
        frames = torch.randint(0, 256, (2 * N, 3, H, W), dtype=torch.uint8, generator=generator).permute(0, 2, 3, 1)
        frames = frames[::2]
    else:
        frames = torch.randint(0, 256, (N, H, W, 3), dtype=torch.uint8, generator=generator)
    frames[..., :2, :] = 255  # saturated rows: the clamp at both ends is exercised
    frames[..., -1:, :, :] = 0
    return frames


def _watermark_embed(full: bool) -> list[Case]:
    def case(shape, cell, M, nc, name):
        def make():
            frames = watermark_frames(shape, nc)
            table = (torch.rand(M, M) * 2 - 1).to(torch.float32)
            return (frames, table), dict(cell=cell, base=2.6, gain=1.3, act_ref=16.0)

        return Case("watermark_embed", name, torch.uint8, make)

    return [case(*c) for c in WATERMARK_CASES]


# ------------------------------------------------------------------------------------------------ renderer

# (B, C, H, W), layout, id
SPADE_CASES = [
    ((1, 3, 5, 7), "contiguous", "B1-C3-5x7"),
    ((2, 19, 13, 11), "contiguous", "B2-C19-13x11"),
    ((2, 17, 9, 15), "channels_last", "B2-C17-9x15-cl"),
    ((1, 20, 12, 16), "sliced", "B1-C20-12x16-slice"),
]


def spade_input(shape, layout, dtype, seed):
    g = torch.Generator(torch.get_default_device()).manual_seed(seed)
    if layout == "sliced":  # a non-contiguous view: every other column of a wider tensor
        b, c, h, w = shape
        return (3 * torch.randn(b, c, h, 2 * w, generator=g) + 1.5)[..., ::2].to(dtype)
    t = (3 * torch.randn(shape, generator=g) + 1.5).to(dtype)
    return t.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else t


def _spade_norm(full: bool) -> list[Case]:
    def case(shape, layout, name, dtype, slope):
        def make():
            x = spade_input(shape, layout, dtype, 1)
            gamma = 0.5 * spade_input(shape, layout, dtype, 2) - 0.7
            beta = spade_input(shape, "contiguous", dtype, 3)  # mixed layouts across the three inputs
            return (x, gamma, beta, slope), {}

        return Case("spade_norm", f"{name}-{'lrelu0.2' if slope else 'noact'}-{dtype_id(dtype)}", dtype, make)

    return [case(*c, dtype, slope) for c in SPADE_CASES for dtype in FLOATS for slope in (0.2, None)]


# id: B, Cin, K (keypoints), ks, (D, H, W), C, (Df, Hf, Wf), layout
WARP_TAIL_CASES = {
    "B1-Cin5-K3-k3-3x4x5": (1, 5, 3, 3, (3, 4, 5), 3, (2, 3, 4), "contiguous"),
    "B2-Cin19-K21-k5-2x3x9-cl3d": (2, 19, 21, 5, (2, 3, 9), 32, (2, 3, 9), "channels_last"),
    "B1-Cin33-K6-k3-4x5x3-slice": (1, 33, 6, 3, (4, 5, 3), 7, (3, 6, 2), "sliced"),
}


def warp_tail_inputs(B, cin, K, ks, size, C, fsize, layout, dtype, seed=0):
    """prediction, weight, bias, kp_source, kp_driving, feature; large moves so that part of the volume
    samples past its edges (exact zeros)."""
    g = torch.Generator().manual_seed(seed)
    D, H, W = size
    if layout == "sliced":  # every other channel of a wider volume: non-contiguous channel stride
        pred = torch.randn(B, 2 * cin, D, H, W, generator=g)[:, ::2]
    else:
        pred = torch.randn(B, cin, D, H, W, generator=g)
        if layout == "channels_last":
            pred = pred.contiguous(memory_format=torch.channels_last_3d)
    weight = torch.randn(K + 1, cin, ks, ks, ks, generator=g) * (2.0 / (cin * ks**3) ** 0.5)
    bias = 0.3 * torch.randn(K + 1, generator=g)
    kp_s = 1.2 * torch.rand(B, K, 3, generator=g) - 0.6
    kp_d = kp_s + 0.4 * torch.randn(B, K, 3, generator=g)
    kp_d[:, ::2] -= 1.5
    feature = torch.randn(B, C, *fsize, generator=g)
    if layout == "channels_last":
        feature = feature.contiguous(memory_format=torch.channels_last_3d)
    return pred.to(dtype), weight.to(dtype), bias, kp_s, kp_d, feature.to(dtype)


def _warp_tail(full: bool) -> list[Case]:
    def case(name, spec, dtype):
        device = torch.get_default_device()
        return Case(
            "warp_tail",
            f"{name}-{dtype_id(dtype)}",
            dtype,
            lambda: (tuple(t.to(device) for t in warp_tail_inputs(*spec, dtype)), {}),
        )

    return [
        case(name, spec, dtype)
        for name, spec in WARP_TAIL_CASES.items()
        for dtype in (FLOATS if full or name.startswith("B1-Cin5") else (torch.float32, torch.bfloat16))
    ]


_BUILDERS = {
    "attention": _attention,
    "dense_motion_input": _dense_motion_input,
    "deform_warp": _deform_warp,
    "warp2d": _warp2d,
    "paste_back": _paste_back,
    "watermark_embed": _watermark_embed,
    "spade_norm": _spade_norm,
    "warp_tail": _warp_tail,
}


def cases(op: str, full: bool = False) -> list[Case]:
    """The conformance cases of `op` (the short CI list, or with `full` every combination)."""
    return _BUILDERS[op](full)
