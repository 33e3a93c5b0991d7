"""Driving videos with LivePortrait's face models (synthetic ONNX models, tests/faces_onnx.py): tracking,
the clip's one crop box, per-frame eye / lip ratios, and eye_open / lip_open = "driving"."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from flashtalk.errors import FlashTalkError
from flashtalk.faces import onnx_models
from flashtalk.faces.pipeline import plan_driving
from tests.faces_onnx import EYE_RATIO, LIP_RATIO, face_image, write_face_models


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return onnx_models.load(write_face_models(tmp_path_factory.mktemp("faces")))


def _frames(n, w=320, h=256, first_face=0):
    out = []
    for i in range(n):
        img = np.zeros((h, w, 3), np.uint8)
        if i >= first_face:
            img[64:160, 96 + 4 * i : 192 + 4 * i] = 255
        out.append(img)
    return out


def test_plan_tracks_and_boxes_a_non_square_clip(models):
    plan = plan_driving(iter(_frames(4, first_face=1)), models)
    assert plan.box is not None and plan.box[2] - plan.box[0] == pytest.approx(plan.box[3] - plan.box[1], rel=1e-5)
    assert plan.eye_ratio.shape == (4, 2) and plan.lip_ratio.shape == (4, 1)
    assert np.allclose(plan.eye_ratio, EYE_RATIO, rtol=1e-5) and np.allclose(plan.lip_ratio, LIP_RATIO, rtol=1e-5)


def test_a_square_clip_is_not_cropped_and_a_faceless_one_is_an_error(models):
    assert plan_driving(iter(_frames(2, w=256)), models).box is None
    with pytest.raises(FlashTalkError, match="no face found in any frame"):
        plan_driving(iter(_frames(2, first_face=5)), models)


def _write(path, frames):
    import av

    with av.open(str(path), "w") as c:
        v = c.add_stream("libx264", rate=25)
        v.width, v.height, v.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        for f in frames:
            for p in v.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(p)
        for p in v.encode():
            c.mux(p)


@pytest.mark.slow
def test_eye_and_lip_open_follow_the_driving_frames(models, tmp_path):
    import torch

    from flashtalk.runtime.engine import Engine

    video = tmp_path / "drive.mp4"
    _write(video, _frames(3))
    engine = Engine.from_weights(None, seeded=True, preset="tiny", device="cpu")
    with pytest.raises(FlashTalkError, match="face models"):
        engine.prepare(face_image(), None, driving=video, crop="center", watermark=False, eye_open="driving")
    engine.faces = models

    def keypoints(**controls):
        clip = engine.prepare(face_image(), None, driving=video, watermark=False, **controls)
        return clip, torch.cat(list(clip.animation.keypoints()))

    clip, driven = keypoints(eye_open="driving", lip_open="driving")
    assert clip.crop.method == "liveportrait" and clip.animation.plan.box is not None
    # every driving frame shows the layout, so "driving" equals the layout's constant ratios
    _, fixed = keypoints(eye_open=float(EYE_RATIO[0]), lip_open=float(LIP_RATIO))
    _, plain = keypoints()
    torch.testing.assert_close(driven, fixed, atol=1e-5, rtol=1e-4)
    assert (driven - plain).abs().max() > 1e-4  # the retargeting did something


def test_driving_ratios_need_a_driving_video():
    from flashtalk.controls.control_set import ControlSet

    with pytest.raises(FlashTalkError, match="driving video"):
        ControlSet.from_mapping({"eye_open": "driving"})
    assert ControlSet.from_mapping({"lip_open": "driving"}, driving=True).lip_open == "driving"
