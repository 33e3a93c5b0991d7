"""Media I/O and face crop: image loading (EXIF, alpha, formats), atomic output, MP4 writing, crop geometry."""

from __future__ import annotations

import os
import signal
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from flashtalk.cli.animate import demo_assets
from flashtalk.errors import FlashTalkError
from flashtalk.faces.portrait_crop import Box, crop_affine, crop_box, cut, face_crop, invert_affine, parse_crop
from flashtalk.io.media import PngWriter, Terminated, VideoWriter, atomic_output, load_image, raise_if_signalled


def _pattern(h: int, w: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def _smooth(h: int, w: int) -> np.ndarray:
    """A band-limited pattern (period ~40 px): resampling errors are small, misalignments are not."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    r = 128 + 100 * np.sin(2 * np.pi * x / 41) * np.cos(2 * np.pi * y / 37)
    g = 128 + 90 * np.sin(2 * np.pi * (x + y) / 53)
    b = 128 + 80 * np.cos(2 * np.pi * (x - 2 * y) / 47)
    return np.stack([r, g, b], -1).round().astype(np.uint8)


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


# ---------------------------------------------------------------------------------------------- face crop


def test_parse_crop():
    assert parse_crop("auto") == "auto" and parse_crop("center") == "center"
    assert parse_crop("10,20,30.5,40") == (10.0, 20.0, 30.5, 40.0)
    for bad in ("10,20,30", "a,b,c,d", "1,2,0,5", "faces"):
        with pytest.raises(FlashTalkError, match="--crop"):
            parse_crop(bad)


def test_cut_is_exact_for_an_unscaled_box():
    photo = _pattern(600, 700)
    box = crop_box(photo, (30, 40, 512, 512))
    assert box == Box(30, 40, 512)
    assert (cut(photo, box) == photo[40:552, 30:542]).all()


def test_cut_repeats_border_pixels_outside_the_photo():
    photo = _pattern(300, 300)
    out = cut(photo, Box(-100, 50, 512), size=512)  # 100 columns left of the photo
    assert (out[:, :100] == out[:, :1]).all()  # repeated first column
    assert (out[:250, 100] == photo[50:300, 0]).all()  # crop column 100 is photo column 0
    assert (out[250:, 100] == photo[299, 0]).all()  # below the photo: its last row repeats


def test_center_and_box_crops_are_square():
    photo = _pattern(300, 200)
    assert crop_box(photo, "center") == Box(0, 50, 200)
    assert crop_box(photo, (10, 20, 50, 100)) == Box(-15, 20, 100)
    with pytest.raises(FlashTalkError, match="outside the 200x300"):
        crop_box(photo, (250, 10, 20, 20))


def test_crop_affine_maps_pixel_centres():
    box = Box(10.0, -20.0, 256.0)
    m = crop_affine(box)
    # Box edges are pixel edges (pixel i spans [i, i + 1), as PIL crops); the affine uses pixel centres
    # (pixel i at i, as OpenCV), so the box's left edge x is at x - 0.5 and the crop's outer edge at -0.5.
    corners = m @ np.array([[-0.5, -0.5, 1.0], [511.5, 511.5, 1.0]]).T
    np.testing.assert_allclose(corners.T, [[9.5, -20.5], [265.5, 235.5]])
    np.testing.assert_allclose(invert_affine(m) @ np.array([9.5, -20.5, 1.0]), [-0.5, -0.5])


def test_paste_back_of_the_unchanged_crop_restores_the_photo():
    """The crop affine and the paste-back kernel agree: pasting the crop back reproduces the photo."""
    from flashtalk.kernels.paste_back import make_feather_mask, paste_back

    photo = _smooth(260, 300)
    fc = face_crop(photo, (60, 20, 180, 180))
    crop = torch.from_numpy(fc.image).permute(2, 0, 1)[None].float() / 255
    out = paste_back(
        crop,
        torch.from_numpy(photo)[None],
        torch.tensor(fc.photo_to_crop, dtype=torch.float32)[None],
        make_feather_mask(512),
    )[0].numpy()
    assert out.shape == photo.shape
    inner = (slice(50, 170), slice(100, 220))  # well inside the feather mask
    err = np.abs(out[inner].astype(int) - photo[inner].astype(int))
    assert err.max() <= 3, err.max()
    outside = np.abs(out[:, :40].astype(int) - photo[:, :40].astype(int))
    assert outside.max() == 0  # outside the crop the photo is untouched


def test_auto_crop_finds_the_demo_face():
    portrait, _ = demo_assets()
    photo = load_image(portrait)
    fc = face_crop(photo, "auto")
    # The face (eyes ~ (127, 100) and (173, 104) in the photo, mouth ~ (150, 143), by eye) must sit in the
    # crop where LivePortrait's crop puts faces: centred, eyes near the middle, mouth below.
    m = fc.photo_to_crop
    left, right, mouth = (m @ np.array([x, y, 1.0]) / 512 for x, y in ((127, 100), (173, 104), (150, 143)))
    assert 0.35 < left[0] < 0.45 and 0.55 < right[0] < 0.65
    assert 0.42 < left[1] < 0.56 and 0.62 < mouth[1] < 0.76
    assert fc.landmarks is not None
    for found, expected in (
        (fc.landmarks.left_eye, left),
        (fc.landmarks.right_eye, right),
        (fc.landmarks.mouth, mouth),
    ):
        assert np.hypot(*(np.array(found) - expected)) < 0.03


def test_auto_crop_without_a_face_says_so():
    photo = _smooth(200, 240)
    with pytest.raises(FlashTalkError, match="no face found in portrait x.png; pass --crop center"):
        face_crop(photo, "auto", name="portrait x.png")
