"""The full-network backend on CPU: tiny preset, seeded weights (the picture is noise, the plumbing is real).

Rendering a tiny-preset frame costs about a second on CPU, so most checks compare the driving keypoints
(the renderer's only per-frame input) and only a few frames are rendered."""

from __future__ import annotations

import av
import numpy as np
import pytest
import soundfile as sf
import torch

from flashtalk.cli import main
from flashtalk.cli.animate import demo_assets
from flashtalk.errors import FlashTalkError
from flashtalk.io.audio import load_audio
from flashtalk.models.joyvasa.pipeline import relative_driving
from flashtalk.models.liveportrait.keypoints import Motion, rotation_from_degrees
from flashtalk.runtime.backends.network import Controls, compose
from flashtalk.runtime.engine import Engine
from flashtalk.weights.bundle import seeded_networks, write_bundle
from tests.utils import speech_keypoints


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    """(2-s and 0.6-s WAV paths) cut from the bundled speech clip."""
    clip = load_audio(demo_assets()[1])
    folder = tmp_path_factory.mktemp("speech")
    paths = []
    for seconds in (2.0, 0.6):
        path = folder / f"speech_{seconds}.wav"
        sf.write(path, clip.samples[: int(seconds * 16000)], 16000)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def engine():
    return Engine.from_weights(None, seeded=True, preset="tiny", device="cpu")


def _keypoints(engine, audio, seed=0, **controls) -> torch.Tensor:
    clip = engine.prepare(demo_assets()[0], audio, seed=seed, watermark=False, **controls)
    return speech_keypoints(clip.animation)


def _video(path):
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(v)]
    with av.open(str(path)) as c:
        a = c.streams.audio[0] if c.streams.audio else None
        audio_seconds = sum(f.samples for f in c.decode(a)) / a.rate if a is not None else None
    return frames, audio_seconds


@pytest.mark.slow
def test_cli_two_second_clip(speech, tmp_path, capsys):
    out = tmp_path / "out.mp4"
    rc = main(
        [
            "animate",
            str(demo_assets()[0]),
            str(speech[0]),
            "-o",
            str(out),
            "--seeded-weights",
            "--preset",
            "tiny",
            "--device",
            "cpu",
            "--fps",
            "5",
            "--steps",
            "4",
            "--batch-size",
            "4",
        ]
    )
    assert rc == 0
    assert "NOT a face" in capsys.readouterr().err
    frames, audio_seconds = _video(out)
    assert abs(len(frames) - 10) <= 1  # 2 s at 5 fps
    assert frames[0].shape == (512, 512, 3)
    assert abs(audio_seconds - 2.0) < 0.1
    assert float(np.std(frames[0])) > 1.0  # a rendered picture, not a flat fill
    assert not np.array_equal(frames[0], frames[-1])  # it moves


def test_frame_count_and_sync(engine, speech):
    clip = engine.prepare(demo_assets()[0], speech[0], watermark=False)
    # 32000 samples + 1 trailing silent frame, the 2 leading silent frames dropped: 51 frames from t = 0
    assert clip.num_frames == 51
    assert len(speech_keypoints(clip.animation)) == 51


def test_seed_reproducible(engine, speech):
    a, b, c = (_keypoints(engine, speech[1], seed=s) for s in (0, 0, 1))
    assert torch.equal(a, b)
    assert (a - c).abs().max() > 1e-4
    frames = [
        next(engine.prepare(demo_assets()[0], speech[1], seed=s, watermark=False).animation.frames_at([5], 1))
        for s in (0, 0, 1)
    ]
    assert torch.equal(frames[0], frames[1])
    assert not torch.equal(frames[0], frames[2])


@pytest.mark.parametrize(
    "control",
    [
        dict(yaw=15.0),
        dict(pitch=-10.0),
        dict(roll=5.0),
        dict(expression_scale=1.8),
        dict(eye_open=0.0),
        dict(lip_open=0.6),
        dict(pose_smoothing=0.5),
    ],
    ids=lambda c: next(iter(c)),
)
def test_each_control_changes_the_motion(engine, speech, control):
    base = _keypoints(engine, speech[1])
    changed = _keypoints(engine, speech[1], **control)
    assert base.shape == changed.shape
    assert (base - changed).abs().max() > 1e-4


def test_zero_controls_equal_no_controls(engine, speech):
    base = _keypoints(engine, speech[1])
    zero = _keypoints(engine, speech[1], yaw=0.0, pitch=0.0, roll=0.0, expression_scale=1.0, pose_smoothing=0.99)
    assert torch.equal(base, zero)


def test_compose_matches_the_pipeline_mapping(engine):
    """Without controls, `compose` is JoyVASA's relative mapping (motion_pipeline.relative_driving)."""
    g = torch.Generator().manual_seed(3)
    crop = torch.rand(3, 512, 512, generator=g)
    src = engine.backend.encode(crop)

    def motion(n):
        angles = [torch.randn(n, generator=g) * 10 for _ in range(3)]
        return Motion(
            R=rotation_from_degrees(*angles),
            exp=torch.randn(n, 21, 3, generator=g) * 0.02,
            scale=1 + 0.1 * torch.rand(n, 1, generator=g),
            t=torch.randn(n, 3, generator=g) * 0.02,
        )

    gen, ref = motion(5), motion(1)
    ours = compose(engine.backend.nets.renderer, src, gen, ref, Controls())
    theirs = relative_driving(src.x_c, Motion(R=src.R, exp=src.exp, scale=src.scale, t=src.t), gen, ref)
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-5)
    # the reference frame itself maps the source onto itself (lips aside, which are absolute)
    same = compose(engine.backend.nets.renderer, src, ref, ref, Controls(), lip_absolute=False)
    torch.testing.assert_close(same, src.x_s, atol=1e-6, rtol=1e-5)
    # a yaw offset turns the head: same as composing with a source of yaw + 20
    turned = compose(engine.backend.nets.renderer, src, gen, ref, Controls(yaw=20.0))
    R_s = rotation_from_degrees(src.pitch, src.yaw + 20, src.roll)
    want = relative_driving(src.x_c, Motion(R=R_s, exp=src.exp, scale=src.scale, t=src.t), gen, ref)
    torch.testing.assert_close(turned, want, atol=1e-6, rtol=1e-5)


def _write_video(path, n_frames, with_audio):
    with av.open(str(path), "w") as c:
        v = c.add_stream("libx264", rate=25)
        v.width, v.height, v.pix_fmt = 96, 64, "yuv420p"
        a = c.add_stream("aac", rate=16000) if with_audio else None
        if a is not None:
            a.layout = "mono"
        yy, xx = np.mgrid[:64, :96]
        for i in range(n_frames):
            img = np.stack([(xx * 2 + i * 20) % 256, (yy * 3) % 256, np.full_like(xx, 40 * i % 256)], -1)
            for p in v.encode(av.VideoFrame.from_ndarray(img.astype(np.uint8), format="rgb24")):
                c.mux(p)
        for p in v.encode():
            c.mux(p)
        if a is not None:
            t = np.arange(int(16000 * n_frames / 25)) / 16000
            frame = av.AudioFrame.from_ndarray(
                (0.3 * np.sin(2 * np.pi * 220 * t))[None].astype(np.float32), format="flt", layout="mono"
            )
            frame.sample_rate = 16000
            for p in a.encode(frame):
                c.mux(p)
            for p in a.encode():
                c.mux(p)


@pytest.mark.parametrize("with_audio", [True, False], ids=["audio", "silent"])
def test_driving_video(tmp_path, capsys, with_audio):
    video, out = tmp_path / "drive.mp4", tmp_path / "out.mp4"
    _write_video(video, 5, with_audio)
    rc = main(
        [
            "animate",
            str(demo_assets()[0]),
            "--driving",
            str(video),
            "-o",
            str(out),
            "--seeded-weights",
            "--preset",
            "tiny",
            "--device",
            "cpu",
            "-q",
        ]
    )
    assert rc == 0
    frames, audio_seconds = _video(out)
    assert abs(len(frames) - 5) <= 1
    assert frames[0].shape == (512, 512, 3)
    assert abs(audio_seconds - 0.2) < 0.15  # AAC frames of 1024 samples (64 ms), encoded twice


def test_driving_first_frame_is_the_source(engine, tmp_path):
    video = tmp_path / "drive.mp4"
    _write_video(video, 3, False)
    clip = engine.prepare(demo_assets()[0], None, driving=video, watermark=False)
    x_d = torch.cat(list(clip.animation.keypoints()))
    assert len(x_d) == clip.num_frames == 3
    src = engine.backend.encode(torch.from_numpy(clip.crop.image).permute(2, 0, 1).float() / 255)
    torch.testing.assert_close(x_d[0], src.x_s[0], atol=1e-5, rtol=1e-4)
    assert (x_d[2] - x_d[0]).abs().max() > 1e-5


def test_bundle_round_trip(engine, speech, tmp_path):
    path = write_bundle(seeded_networks("tiny"), tmp_path / "tiny.safetensors")
    loaded = Engine.from_weights(path, device="cpu")
    assert loaded.backend.nets.preset == "tiny"
    assert torch.equal(_keypoints(engine, speech[1]), _keypoints(loaded, speech[1]))
    a, b = (
        next(e.prepare(demo_assets()[0], speech[1], watermark=False).animation.frames_at([3], 1))
        for e in (engine, loaded)
    )
    assert torch.equal(a, b)


@pytest.mark.parametrize(
    "controls, match",
    [
        (dict(eye_open=2.0), "eye_open"),
        (dict(yaw=200.0), "yaw"),
        (dict(pose_smoothing=1.0), "pose_smoothing"),
        (dict(gaze=1.0), "unknown controls"),
        (dict(expression_scale="big"), "expression_scale"),
    ],
)
def test_bad_controls(engine, speech, controls, match):
    with pytest.raises(FlashTalkError, match=match):
        engine.prepare(demo_assets()[0], speech[1], watermark=False, **controls)


def test_cli_errors(speech, tmp_path):
    out = str(tmp_path / "o.mp4")
    portrait = str(demo_assets()[0])
    assert main(["animate", portrait, str(speech[1]), "-o", out, "--yaw", "10"]) == 2  # control without the network
    assert main(["animate", portrait, str(speech[1]), "-o", out, "--preset", "tiny"]) == 2
    with pytest.raises(SystemExit):  # argparse: not one of the choices
        main(["animate", portrait, str(speech[1]), "-o", out, "--seeded-weights", "--sampler", "euler"])
    assert main(["animate", portrait, str(speech[1]), "-o", out, "--weights", str(tmp_path / "none")]) == 2
    assert not (tmp_path / "o.mp4").exists()
