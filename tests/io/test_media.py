"""Media I/O: image loading (EXIF, alpha, formats, high bit depth, a PNG text-chunk bomb, NaN pixels), atomic output,
MP4 and PNG writing."""

from __future__ import annotations

import io
import os
import signal
import zlib
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from flashtalk.errors import FlashTalkError
from flashtalk.io.media import PngWriter, Terminated, VideoWriter, atomic_output, load_image, raise_if_signalled
from tests.inputs import _pattern, _png_chunk

# ---------------------------------------------------------------------------------------------- images


def test_load_image_applies_exif_orientation(tmp_path):
    pixels = _pattern(80, 120)
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif, quality=95)
    out = load_image(path)
    assert out.shape == (120, 80, 3)  # displayed upright: width and height swap
    stored = np.asarray(Image.open(path).convert("RGB"), dtype=np.float64)
    # orientation 6 is displayed after a 90 degree clockwise turn: out[r, c] = stored[H - 1 - c, r]
    assert np.abs(out.astype(np.float64) - np.rot90(stored, k=-1)).max() == 0


def test_load_image_flattens_alpha_onto_white(tmp_path):
    rgba = np.zeros((70, 90, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:, :45, 3] = 255  # left half opaque red-ish, right half fully transparent
    rgba[:, 45:, :3] = (10, 20, 30)
    path = tmp_path / "alpha.png"
    Image.fromarray(rgba, "RGBA").save(path)
    out = load_image(path)
    assert out.shape == (70, 90, 3)
    assert (out[:, :45] == (200, 0, 0)).all()
    assert (out[:, 45:] == 255).all()


def test_load_image_reads_webp_and_grey(tmp_path):
    grey = (np.arange(64 * 96) % 251).astype(np.uint8).reshape(64, 96)
    Image.fromarray(grey, "L").save(tmp_path / "g.webp", lossless=True)
    out = load_image(tmp_path / "g.webp")
    assert out.shape == (64, 96, 3)
    assert (out == grey[..., None]).all()


@pytest.mark.parametrize(
    "content,match",
    [
        (b"this is not an image", "not a readable image"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "not a readable image"),
    ],
)
def test_load_image_rejects_non_images(tmp_path, content, match):
    path = tmp_path / "bad.png"
    path.write_bytes(content)
    with pytest.raises(FlashTalkError, match=match) as info:
        load_image(path)
    assert str(path) in str(info.value)


def test_load_image_rejects_missing_and_tiny(tmp_path):
    with pytest.raises(FlashTalkError, match="file not found"):
        load_image(tmp_path / "nope.jpg")
    Image.fromarray(_pattern(20, 300)).save(tmp_path / "tiny.png")
    with pytest.raises(FlashTalkError, match="300x20"):
        load_image(tmp_path / "tiny.png")


# ---------------------------------------------------------------------------------------------- output


def test_atomic_output_leaves_nothing_on_error(tmp_path):
    target = tmp_path / "out.mp4"
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_output(target, overwrite=False) as tmp:
            tmp.write_bytes(b"half a video")
            assert tmp.parent == tmp_path and tmp != target
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


class _SignalInFinalizer:
    """Sends `sig` to this process from a finalizer: the handler runs there, and Python prints its exception
    ("Exception ignored in ...") and goes on, as it does for a signal landing in any finalizer or C callback."""

    def __init__(self, sig: int) -> None:
        self.sig = sig

    def __del__(self) -> None:
        os.kill(os.getpid(), self.sig)


@pytest.fixture
def default_signals():
    """Python's own SIGINT / SIGTERM dispositions (a background job starts with SIGINT ignored)."""
    saved = {
        sig: signal.signal(sig, default)
        for sig, default in ((signal.SIGINT, signal.default_int_handler), (signal.SIGTERM, signal.SIG_DFL))
    }
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the lost exception, printed
@pytest.mark.parametrize("sig, exc", [(signal.SIGTERM, Terminated), (signal.SIGINT, KeyboardInterrupt)])
def test_a_signal_whose_exception_was_swallowed_still_stops_the_write(tmp_path, sig, exc, default_signals):
    target = tmp_path / "out.mp4"
    with pytest.raises(exc):
        with atomic_output(target, overwrite=False) as tmp:
            tmp.write_bytes(b"a whole video")
            _SignalInFinalizer(sig)  # collected at once: the signal's own exception is lost
            raise_if_signalled()  # what render's batch loop calls: the stop comes here
            pytest.fail("raise_if_signalled did not raise")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(exc):  # and without the loop's check, before the commit
        with atomic_output(target, overwrite=False) as tmp:
            tmp.write_bytes(b"a whole video")
            _SignalInFinalizer(sig)
    assert list(tmp_path.iterdir()) == []  # never committed
    assert (
        signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
        and signal.getsignal(signal.SIGINT) is signal.default_int_handler
    )

    def write_ok() -> None:
        with atomic_output(target, overwrite=False) as tmp:
            tmp.write_bytes(b"ok")

    with ThreadPoolExecutor(1) as pool:  # the next write starts clean, also off the main thread (no handlers there)
        pool.submit(write_ok).result()
    assert target.read_bytes() == b"ok"


def test_atomic_output_refuses_existing_and_replaces_with_overwrite(tmp_path):
    target = tmp_path / "out.mp4"
    target.write_bytes(b"old")
    with pytest.raises(FlashTalkError, match="already exists.*--overwrite"):
        with atomic_output(target, overwrite=False):
            pass
    assert target.read_bytes() == b"old"
    with atomic_output(target, overwrite=True) as tmp:
        tmp.write_bytes(b"new")
        assert target.read_bytes() == b"old"  # the old file stays until the new one is complete
    assert target.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mp4"]


def test_atomic_output_folder_refuses_foreign_files(tmp_path):
    frames = tmp_path / "frames"
    frames.mkdir()
    (frames / "notes.txt").write_text("mine")
    with pytest.raises(FlashTalkError, match="notes.txt"):
        with atomic_output(frames, overwrite=True, folder=True):
            pass
    assert (frames / "notes.txt").read_text() == "mine"


def test_atomic_output_folder_replaces_old_frames(tmp_path):
    frames = tmp_path / "frames"
    frames.mkdir()
    (frames / "frame_000007.png").write_bytes(b"old")
    with atomic_output(frames, overwrite=True, folder=True) as tmp:
        (tmp / "frame_000000.png").write_bytes(b"new")
    assert [p.name for p in frames.iterdir()] == ["frame_000000.png"]
    assert [p.name for p in tmp_path.iterdir()] == ["frames"]


def test_atomic_output_missing_folder(tmp_path):
    with pytest.raises(FlashTalkError, match="does not exist"):
        with atomic_output(tmp_path / "no" / "out.mp4", overwrite=False):
            pass


def test_png_writer_numbers_frames(tmp_path):
    frames = np.stack([_pattern(16, 24, seed=s) for s in range(3)])
    writer = PngWriter(tmp_path)
    writer.write(frames[:2])
    writer.write(frames[2:])
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["frame_000000.png", "frame_000001.png", "frame_000002.png"]
    assert (np.asarray(Image.open(tmp_path / "frame_000002.png")) == frames[2]).all()


def _decode(path: Path):
    import av

    with av.open(str(path)) as c:
        meta = dict(c.metadata)
        video = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    with av.open(str(path)) as c:
        audio = np.concatenate([f.to_ndarray().reshape(-1) for f in c.decode(audio=0)]) if c.streams.audio else None
        rate = c.streams.audio[0].rate if c.streams.audio else None
    return meta, np.stack(video), audio, rate


def test_video_writer_frames_audio_and_metadata(tmp_path):
    rate, fps, n = 16000, 25, 30
    t = np.arange(int(1.2 * rate)) / rate  # 1.2 s of audio = 30 frames
    tone = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    levels = np.linspace(20, 230, n).round().astype(np.uint8)
    frames = np.broadcast_to(levels[:, None, None, None], (n, 64, 96, 3)).copy()
    path = tmp_path / "v.mp4"
    w = VideoWriter(
        path,
        width=96,
        height=64,
        fps=fps,
        audio=SimpleNamespace(samples=tone, rate=rate),
        metadata={"comment": "synthetic: test", "flashtalk_watermark": "off"},
    )
    for i in range(0, n, 7):
        w.write(frames[i : i + 7])
    w.close()
    meta, video, audio, arate = _decode(path)
    assert meta["comment"] == "synthetic: test" and meta["flashtalk_watermark"] == "off"
    assert video.shape == (n, 64, 96, 3)
    assert np.abs(video.astype(int).mean(axis=(1, 2, 3)) - levels).max() < 3  # flat grey frames survive
    assert arate == rate
    assert abs(len(audio) - len(tone)) <= 1024  # AAC priming / padding is at most one frame
    # the tone is there: its spectrum peaks at 440 Hz
    spec = np.abs(np.fft.rfft(audio[2048 : 2048 + 8192]))
    assert abs(np.argmax(spec) * rate / 8192 - 440) < 4


def test_video_writer_odd_size_drops_last_row_and_column(tmp_path):
    frames = np.full((3, 65, 97, 3), 120, np.uint8)
    path = tmp_path / "odd.mp4"
    w = VideoWriter(path, width=97, height=65, fps=Fraction(30000, 1001), audio=None, metadata={})
    w.write(frames)
    w.close()
    _, video, audio, _ = _decode(path)
    assert video.shape == (3, 64, 96, 3) and audio is None


def test_a_png_text_chunk_bomb_is_one_error(tmp_path):
    buf = io.BytesIO()
    Image.new("RGB", (96, 96), (90, 60, 30)).save(buf, "PNG")
    png = buf.getvalue()
    bomb = _png_chunk(b"zTXt", b"Comment\0\0" + zlib.compress(b"a" * (48 << 20), 9))
    (tmp_path / "bomb.png").write_bytes(png[:33] + bomb + png[33:])
    with pytest.raises(FlashTalkError, match="not a readable image.*(too large|MAX_TEXT)"):
        load_image(tmp_path / "bomb.png")


def _gradient():
    return np.linspace(0.0, 1.0, 96 * 96).reshape(96, 96)


@pytest.mark.parametrize("kind", ["png16", "tiff-I", "tiff-F"])
def test_high_bit_depth_grey_images_keep_their_tones(tmp_path, kind):
    g = _gradient()
    image = {
        "png16": Image.fromarray(np.rint(g * 65535).astype(np.uint16)),
        "tiff-I": Image.fromarray(np.rint(g * 65535).astype(np.int32)),
        "tiff-F": Image.fromarray(g.astype(np.float32)),
    }[kind]
    path = tmp_path / ("x.png" if kind == "png16" else "x.tif")
    image.save(path)
    rgb = load_image(path)
    expected = np.rint(g * 255)  # the 8-bit version of the same gradient
    # rule: one 8-bit level (the two roundings, to 16 bits and to 8 bits); clipping would be off by up to 254
    assert rgb.shape == (96, 96, 3) and np.abs(rgb[..., 0].astype(float) - expected).max() <= 1


def test_a_float_image_with_nan_pixels_is_refused(tmp_path):
    a = _gradient().astype(np.float32)
    a[3, 3] = np.nan
    Image.fromarray(a).save(tmp_path / "x.tif")
    with pytest.raises(FlashTalkError, match="NaN"):
        load_image(tmp_path / "x.tif")
