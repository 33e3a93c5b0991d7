"""A center or box crop never runs a face detector; without OpenCV's Haar cascade (OpenCV 5.x) and without
LivePortrait's face models, `--crop auto` fails with one line saying what to do, never a traceback."""

from __future__ import annotations

import numpy as np
import pytest

from flashtalk.cli import main
from flashtalk.cli.animate import demo_assets
from flashtalk.errors import FlashTalkError
from flashtalk.faces import portrait_crop
from flashtalk.faces.portrait_crop import face_crop
from flashtalk.io.media import load_image


@pytest.fixture
def no_detector(monkeypatch):
    """Any call of a detector fails the test."""

    def called(*args, **kwargs):
        raise AssertionError("a face detector ran")

    monkeypatch.setattr(portrait_crop, "detect_face", called)
    monkeypatch.setattr(portrait_crop, "_cascade", called)


@pytest.fixture
def opencv5(monkeypatch):
    """OpenCV as 5.x wheels ship it: no CascadeClassifier, no cv2.data."""
    import cv2

    monkeypatch.delattr(cv2, "CascadeClassifier", raising=False)
    monkeypatch.delattr(cv2, "data", raising=False)


@pytest.mark.parametrize("spec", ["center", (40.0, 30.0, 200.0, 220.0)], ids=["center", "box"])
def test_center_and_box_crops_run_no_detector(spec, no_detector):
    photo = load_image(demo_assets()[0])
    fc = face_crop(photo, spec)
    assert fc.method == ("center" if spec == "center" else "box")
    assert fc.landmarks is None and fc.image.shape == (512, 512, 3)


def test_center_crop_works_on_opencv5(opencv5):
    assert not portrait_crop.haar_available()
    fc = face_crop(np.full((300, 200, 3), 90, np.uint8), "center")
    assert fc.box.side == 200 and fc.landmarks is None


def test_auto_crop_without_haar_or_face_models_is_one_clear_line(opencv5):
    with pytest.raises(FlashTalkError) as info:
        face_crop(load_image(demo_assets()[0]), "auto", faces=None)
    message = str(info.value)
    assert "\n" not in message
    assert "LivePortrait's face models" in message and "--crop center" in message and "OpenCV" in message


def test_animate_auto_crop_without_haar_says_so_without_traceback(opencv5, tmp_path, capsys):
    portrait, speech = demo_assets()
    rc = main(["animate", str(portrait), str(speech), "-o", str(tmp_path / "x.mp4"), "--crop", "auto", "-q"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert err[0].startswith("flashtalk animate: error: --crop auto needs LivePortrait's face models")
    assert not (tmp_path / "x.mp4").exists()
