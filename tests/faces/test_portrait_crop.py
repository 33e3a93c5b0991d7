"""Portrait crop (`flashtalk.faces.portrait_crop`): --crop parsing and checked boxes (hostile ones from the fuzzing
campaign too), exact cuts, centre and box crops, the crop affine, paste-back of the unchanged crop, the auto crop on
the demo photo."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flashtalk.cli.animate import demo_assets
from flashtalk.errors import FlashTalkError
from flashtalk.faces.portrait_crop import Box, crop_affine, crop_box, cut, face_crop, invert_affine, parse_crop
from flashtalk.io.media import load_image
from tests.inputs import _pattern


@pytest.mark.parametrize(
    "spec, match",
    [
        ("nan,0,100,100", "finite"),
        ("0,0,inf,100", "finite"),
        ("0,0,1e300,1e300", "too large"),
        ("-1e300,-1e300,1e300,1e300", "outside"),
        ("-10,-10,1e300,1e300", "too large"),
        ("0,0,4000000000,4000000000", "too large"),
        ("1e308,1e308,1,1", "outside"),
        ("0,0,-5,10", "positive"),
        ("1,2,3", "X,Y,W,H"),
    ],
)
def test_bad_crop_boxes_are_one_error(spec, match):
    photo = np.zeros((100, 120, 3), np.uint8)
    with pytest.raises(FlashTalkError, match=match):
        crop_box(photo, spec)


def test_crop_box_from_the_api_is_checked_too():
    with pytest.raises(FlashTalkError, match="finite"):
        crop_box(np.zeros((100, 100, 3), np.uint8), (0.0, float("nan"), 10.0, 10.0))
    assert parse_crop("10,20,30,40") == (10.0, 20.0, 30.0, 40.0)


def _smooth(h: int, w: int) -> np.ndarray:
    """A band-limited pattern (period ~40 px): resampling errors are small, misalignments are not."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    r = 128 + 100 * np.sin(2 * np.pi * x / 41) * np.cos(2 * np.pi * y / 37)
    g = 128 + 90 * np.sin(2 * np.pi * (x + y) / 53)
    b = 128 + 80 * np.cos(2 * np.pi * (x - 2 * y) / 47)
    return np.stack([r, g, b], -1).round().astype(np.uint8)


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
