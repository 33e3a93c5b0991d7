"""LivePortrait's face pipeline on real onnxruntime sessions of small synthetic models with the published
signatures (tests/faces_onnx.py): signature checks, clear errors, the crop path chosen and logged, and
the measured eye / lip ratios reaching the retargeting inputs."""

from __future__ import annotations

import logging

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from flashtalk.errors import FlashTalkError
from flashtalk.faces import onnx_models
from flashtalk.faces.portrait_crop import face_crop
from tests.faces_onnx import EYE_RATIO, LIP_RATIO, face_image, l106_model, l203_model, write_face_models


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    return write_face_models(tmp_path_factory.mktemp("faces"))


@pytest.fixture(scope="module")
def models(models_dir):
    return onnx_models.load(models_dir)


def test_liveportrait_crop_measures_the_layout_ratios(models, caplog):
    caplog.set_level(logging.INFO, logger="flashtalk")
    fc = face_crop(face_image(), "auto", faces=models)
    assert fc.method == "liveportrait" and "LivePortrait landmarks" in caplog.text
    assert fc.image.shape == (512, 512, 3) and fc.image.dtype == np.uint8
    # ratios are invariant under the similarity that maps the 203 model's crop to the photo
    assert fc.ratios.eye == pytest.approx(EYE_RATIO, rel=1e-5)
    assert fc.ratios.lip == pytest.approx(LIP_RATIO, rel=1e-5)
    assert fc.landmarks.ratios == fc.ratios
    # the paste-back affine maps the crop centre onto the detected face's crop centre (inside the photo)
    cx, cy = fc.crop_to_photo @ np.array([255.5, 255.5, 1.0])
    assert 0 < cx < 512 and 0 < cy < 512


def test_a_resized_photo_keeps_the_paste_back_affine_on_the_photo(models):
    small = face_image()
    big = np.repeat(np.repeat(small, 3, 0), 3, 1)  # 1536 px: size-limited to 1280 first
    a, b = face_crop(small, "auto", faces=models), face_crop(big, "auto", faces=models)
    centre = np.array([255.5, 255.5, 1.0])
    ca, cb = a.crop_to_photo @ centre, b.crop_to_photo @ centre
    assert np.allclose((cb + 0.5) / 3 - 0.5, ca, atol=1.0)  # same face, 3x the pixels
    assert b.box.side == pytest.approx(3 * a.box.side, rel=0.02)


def test_no_face_is_one_line_suggesting_center_or_a_box(models):
    with pytest.raises(FlashTalkError) as e:
        face_crop(face_image(blocks=()), "auto", faces=models, name="photo.png")
    msg = str(e.value)
    assert "\n" not in msg and "photo.png" in msg and "--crop center" in msg and "X,Y,W,H" in msg


def test_several_faces_use_the_largest_and_say_so(models, caplog):
    caplog.set_level(logging.WARNING, logger="flashtalk")
    fc = face_crop(face_image(blocks=((64, 64), (320, 320))), "auto", faces=models)
    assert fc.method == "liveportrait"
    assert "2 faces found" in caplog.text and "largest" in caplog.text


def test_without_the_files_the_haar_path_runs_and_is_logged(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="flashtalk")
    assert onnx_models.load_if_present(tmp_path) is None
    photo = np.full((256, 256, 3), 128, np.uint8)
    fc = face_crop(photo, "center", faces=None)
    assert fc.method == "center" and fc.ratios is None
    with pytest.raises(FlashTalkError, match="no face found"):
        face_crop(photo, "auto", faces=None)
    assert "Haar cascade" in caplog.text


def test_a_folder_without_the_files_names_them(tmp_path):
    with pytest.raises(FlashTalkError) as e:
        onnx_models.load(tmp_path)
    msg = str(e.value)
    assert "det_10g.onnx" in msg and "2d106det.onnx" in msg and "landmark.onnx" in msg and "flashtalk download" in msg


def test_a_truncated_onnx_file_is_a_clear_error(tmp_path):
    folder = write_face_models(tmp_path)
    path = folder / onnx_models.L106
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(FlashTalkError) as e:
        onnx_models.load(folder)
    msg = str(e.value)
    assert "2d106det.onnx" in msg and "not a readable ONNX model" in msg and "\n" not in msg


def test_a_model_with_other_inputs_is_rejected_naming_the_difference(tmp_path):
    folder = write_face_models(tmp_path, l203=l203_model(input_name="image"))
    with pytest.raises(FlashTalkError) as e:
        onnx_models.load(folder)
    msg = str(e.value)
    assert "landmark.onnx" in msg and "'image'" in msg and "'input'" in msg


def test_a_partial_set_is_an_error_not_a_silent_fallback(tmp_path):
    folder = write_face_models(tmp_path)
    (folder / onnx_models.DET).unlink()
    with pytest.raises(FlashTalkError, match="det_10g.onnx"):
        onnx_models.load_if_present(folder)


def test_signature_check_rejects_wrong_output_widths():
    class Arg:
        def __init__(self, name, shape):
            self.name, self.shape = name, shape

    outs = [Arg(str(i), ["n", w]) for i, w in enumerate([1, 1, 1, 4, 4, 4, 10, 10, 10])]
    onnx_models.check_signature("det", "det.onnx", [Arg("input.1", [1, 3, "?", "?"])], outs)
    outs[4] = Arg("4", ["n", 5])
    with pytest.raises(FlashTalkError, match=r"det\.onnx: not the SCRFD"):
        onnx_models.check_signature("det", "det.onnx", [Arg("input.1", [1, 3, "?", "?"])], outs)
    with pytest.raises(FlashTalkError, match="inputs"):
        onnx_models.check_signature("l106", "l.onnx", [Arg("data", [1, 3, 112, 112])], [Arg("fc1", [1, 212])])


def test_measured_ratios_feed_eye_and_lip_retargeting():
    import torch

    from flashtalk.controls.apply import retarget_deltas
    from flashtalk.controls.control_set import SOURCE_EYE_RATIO, SOURCE_LIP_RATIO, ControlSet
    from flashtalk.faces.portrait_crop import FaceRatios, Landmarks
    from flashtalk.runtime.driving import with_source_ratios

    class Recorder:
        def __init__(self):
            self.eye = self.lip = None

        def retarget_eye_delta(self, x_s, ratio):
            self.eye = ratio.clone()
            return torch.zeros_like(x_s)

        def retarget_lip_delta(self, x_s, ratio):
            self.lip = ratio.clone()
            return torch.zeros_like(x_s)

    class Source:
        x_s = torch.zeros(1, 21, 3)

    lm = Landmarks((0.4, 0.5), (0.6, 0.5), (0.5, 0.7), ratios=FaceRatios((0.21, 0.27), 0.13))
    c = with_source_ratios(ControlSet.from_mapping({"eye_open": 0.5, "lip_open": 0.3}), lm.ratios)
    rec = Recorder()
    retarget_deltas(c, torch.zeros(2, 21, 3), Source(), rec)
    assert rec.eye.shape == (2, 3) and rec.eye[0].tolist() == pytest.approx([0.21, 0.27, 0.5])
    assert rec.lip[0].tolist() == pytest.approx([0.13, 0.3])
    rec = Recorder()  # the Haar path has no ratios: the assumed ones
    retarget_deltas(
        with_source_ratios(ControlSet.from_mapping({"eye_open": 0.5, "lip_open": 0.3}), None),
        torch.zeros(1, 21, 3),
        Source(),
        rec,
    )
    assert rec.eye[0].tolist() == pytest.approx([SOURCE_EYE_RATIO, SOURCE_EYE_RATIO, 0.5])
    assert rec.lip[0].tolist() == pytest.approx([SOURCE_LIP_RATIO, 0.3])
    with pytest.raises(FlashTalkError, match="unknown controls"):
        ControlSet.from_mapping({"source_eye": (0.1, 0.1)})


def test_the_engine_crops_with_its_face_models(models):
    from flashtalk.runtime.engine import Engine

    engine = Engine.preview("cpu")
    engine.faces = models
    audio = np.zeros(16000, np.float32)
    from flashtalk.io.audio import AudioClip

    clip = engine.prepare(face_image(), AudioClip(audio, 16000, 1.0, "silence"), watermark=False)
    assert clip.crop.method == "liveportrait" and clip.crop.ratios is not None
    box = engine.prepare(
        face_image(), AudioClip(audio, 16000, 1.0, "silence"), crop=(150, 150, 200, 200), watermark=False
    )
    assert box.crop.method == "box" and box.crop.ratios is None


def test_the_106_model_normalisation_follows_insightfaces_rule(models, tmp_path):
    from flashtalk.faces.landmark106 import normalisation, to_blob

    assert normalisation(["_minus0", "_mul0", "conv0"]) == (0.0, 1.0)
    assert normalisation(["bn_data", "conv0"]) == (0.0, 1.0)
    assert normalisation(["Sub_1", "conv0"]) == (127.5, 128.0)  # subtraction alone is not enough
    assert models.l106_norm == (0.0, 1.0)
    other = onnx_models.load(write_face_models(tmp_path, l106=l106_model(self_normalising=False)))
    assert other.l106_norm == (127.5, 128.0)
    aimg = np.full((192, 192, 3), (0, 128, 255), np.uint8)  # BGR
    assert to_blob(aimg)[0, :, 0, 0].tolist() == [255.0, 128.0, 0.0]
    assert to_blob(aimg, 127.5, 128.0)[0, :, 0, 0].tolist() == pytest.approx([127.5 / 128, 0.5 / 128, -127.5 / 128])


def test_serve_crops_with_the_face_models_beside_its_weights(models_dir):
    """`flashtalk serve --weights DIR` finds the face models in DIR (as `animate` does) and its portraits get
    LivePortrait's crop, not the Haar one."""
    from flashtalk.runtime.backends.preview import PreviewBackend
    from flashtalk.serving.state import BackendSpec, ServeConfig, ServerState, build_faces

    assert build_faces(BackendSpec(), "cpu") is None  # the preview has no weights folder
    faces = build_faces(BackendSpec("network", weights=str(models_dir)), "cpu")
    assert faces is not None
    state = ServerState(ServeConfig(), PreviewBackend("cpu"), faces)
    try:
        got = state.encode(face_image()).crop
    finally:
        state.close()
    assert np.array_equal(got, face_crop(face_image(), "auto", faces=faces).image)
    assert not np.array_equal(got, face_crop(face_image(), "center").image)


@pytest.mark.slow
def test_a_live_stream_uses_the_portraits_measured_ratios():
    """The ratios measured at the crop travel with the encoded portrait, so a live session's eye_open /
    lip_open retarget from them (as `animate` does), not from the assumed ones."""
    import torch

    from flashtalk.constants import HOP
    from flashtalk.faces.portrait_crop import FaceRatios, Landmarks
    from flashtalk.runtime.backends.network import NetworkBackend
    from flashtalk.weights.bundle import seeded_networks

    backend = NetworkBackend(seeded_networks("tiny"), "cpu", seeded=True)
    crop = torch.rand(3, 512, 512, generator=torch.Generator().manual_seed(3))
    lm = Landmarks((0.4, 0.5), (0.6, 0.5), (0.5, 0.7), ratios=FaceRatios((0.21, 0.27), 0.13))
    for landmarks, eye, lip in ((lm, (0.21, 0.27), 0.13), (None, None, None)):
        stream = backend.open(backend.encode(crop, landmarks), seed=0)
        audio = np.sin(np.arange(8 * HOP, dtype=np.float32) / 9)
        backend.motion([(stream, audio, {"eye_open": 0.5, "lip_open": 0.3}, 0)])
        got = stream.controls
        if eye is None:  # not measured (the Haar crop): the retargeting's assumed ratios
            assert got.source_eye is None and got.source_lip is None
        else:
            assert tuple(got.source_eye) == pytest.approx(eye) and got.source_lip == pytest.approx(lip)
