"""Fuzz family `images`: portrait files and `--crop` boxes.

Inputs: JPEG / PNG (RGB, RGBA, palette, grey 8 and 16 bit) / WebP / TIFF (mode I and F) / GIF / BMP
portraits, with EXIF orientation; byte mutations of them; PNGs with text-chunk decompression bombs and
huge declared sizes; `--crop` values with NaN, inf, 1e300, boxes far larger than the photo, garbage.
Target: `load_image`, then the crop box and the 512x512 cut (`crop_box`, `cut`; never "auto" and no
landmarks: face detection is not what is fuzzed).
Unmutated grey-gradient images must convert to the gradient's mean (within 2 levels), so a washed-out
or black conversion counts as a crash ("wrong output").
"""

from __future__ import annotations

import io
import struct
import tempfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.fuzz.core import Case, Mutator, Wrong, run_cases

TARGET = "benchmarks.fuzz.images:target"
SIZE = 96
BAD_CROPS = (
    "nan,0,100,100",
    "0,0,inf,100",
    "0,0,1e300,1e300",
    "-1e300,-1e300,1e300,1e300",
    "0,0,0,10",
    "0,0,-5,10",
    "1,2,3",
    "a,b,c,d",
    "",
    ",,,",
    "0,0,4000000000,4000000000",
    "1e308,1e308,1,1",
    "50,50,90000,90000",
    "0x10,0,50,50",
    "center,1",
    "10,10,-inf,nan",
    "1" * 5000,
)
GOOD_CROPS = ("center", "0,0,64,64", "10.5,20.25,50,70", "-30,-30,200,200", "90,90,300,10")


def warm(_: Any) -> str:
    import flashtalk.faces.portrait_crop
    import flashtalk.io.media  # noqa: F401

    return "warm"


def target(arg: dict) -> str:
    from flashtalk.faces.portrait_crop import crop_box, cut
    from flashtalk.io.media import load_image

    photo = load_image(arg["path"])
    crop = cut(photo, crop_box(photo, arg["crop"]))
    if crop.shape != (512, 512, 3) or crop.dtype != np.uint8:
        raise Wrong(f"crop is {crop.dtype} {crop.shape}")
    if arg.get("mean") is not None:
        got = float(photo.mean())
        if abs(got - arg["mean"]) > 2.0:
            raise Wrong(f"grey level {got:.1f}, expected {arg['mean']:.1f} (bad bit-depth conversion)")
    return f"{photo.shape[1]}x{photo.shape[0]}"


def _gradient() -> np.ndarray:
    return np.linspace(0.0, 1.0, SIZE * SIZE).reshape(SIZE, SIZE)


def base_images() -> list[tuple[str, str, bytes, float | None]]:
    """(name, suffix, file bytes, expected mean grey level or None)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8))
    g = _gradient()
    out = []

    def save(name: str, image, fmt: str, suffix: str, mean: float | None = None, **kw) -> None:
        buf = io.BytesIO()
        image.save(buf, fmt, **kw)
        out.append((name, suffix, buf.getvalue(), mean))

    save("rgb-jpeg", rgb, "JPEG", ".jpg")
    exif = Image.Exif()
    exif[0x0112] = 6
    save("exif-jpeg", rgb, "JPEG", ".jpg", exif=exif.tobytes())
    save("rgb-png", rgb, "PNG", ".png")
    save("rgba-png", rgb.convert("RGBA"), "PNG", ".png")
    save("p-png", rgb.convert("P"), "PNG", ".png")
    save("webp", rgb, "WEBP", ".webp")
    save("gif", rgb.convert("P"), "GIF", ".gif")
    save("bmp", rgb, "BMP", ".bmp")
    mean8 = float(np.rint(g * 255).mean())
    save("grey8-png", Image.fromarray(np.rint(g * 255).astype(np.uint8)), "PNG", ".png", mean8)
    save("grey16-png", Image.fromarray(np.rint(g * 65535).astype(np.uint16)), "PNG", ".png", mean8)
    save("int-tiff", Image.fromarray(np.rint(g * 65535).astype(np.int32)), "TIFF", ".tif", mean8)
    save("float-tiff", Image.fromarray(g.astype(np.float32)), "TIFF", ".tif", mean8)
    return out


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def crafted_pngs(png: bytes) -> list[tuple[str, bytes]]:
    """Structurally valid PNGs (right CRCs) that a byte mutator rarely finds."""
    head, rest = png[:33], png[33:]  # signature + IHDR
    bomb = zlib.compress(b"a" * (48 << 20), 9)
    out = [
        ("ztxt-bomb", head + _chunk(b"zTXt", b"Comment\0\0" + bomb) + rest),
        ("itxt-bomb", head + _chunk(b"iTXt", b"XML:com.adobe.xmp\0\1\0\0\0" + bomb) + rest),
        ("iccp-bomb", head + _chunk(b"iCCP", b"icc\0\0" + bomb) + rest),
    ]
    for w, h in ((1 << 31) - 1, 1), (65535, 65535), (0, 10), (20000, 20000):
        ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
        out.append((f"ihdr-{w}x{h}", png[:8] + _chunk(b"IHDR", ihdr) + rest))
    return out


def cases(seed: int, n: int, folder: Path) -> Iterator[Case]:
    m = Mutator(seed)
    bases = base_images()
    rgb_png = next(b for name, _, b, _ in bases if name == "rgb-png")
    crafted = crafted_pngs(rgb_png)
    for i in range(n):
        kind = i % 8
        mean = None
        crop = "center"
        if kind == 0:  # an unmutated base image (correct conversion checked)
            name, suffix, data, mean = bases[(i // 8) % len(bases)]
            crop = m.choice(GOOD_CROPS)
            what = f"{name} crop={crop}"
        elif kind == 1:  # bad crop boxes on a good image
            name, suffix, data, _ = bases[0]
            crop = m.choice(BAD_CROPS + GOOD_CROPS)
            what = f"crop={crop[:40]!r}"
        elif kind == 2:
            name, data = crafted[(i // 8) % len(crafted)]
            suffix, what = ".png", name
        else:  # byte mutations
            name, suffix, data, _ = m.choice(bases)
            data, how = m.bytes(data)
            what = f"{name} {how}"
        path = folder / f"case{i}{suffix}"
        path.write_bytes(data)
        arg = {"path": str(path), "crop": crop, "mean": mean, "expect_ok": kind == 0}
        yield Case(what, TARGET, arg, timeout=10.0)
        path.unlink(missing_ok=True)


def campaign(seed: int, n: int, budget_s: float) -> dict:
    with tempfile.TemporaryDirectory(prefix="flashtalk-fuzz-images-") as tmp:
        return run_cases("images", cases(seed, n, Path(tmp)), budget_s, warm="benchmarks.fuzz.images:warm")
