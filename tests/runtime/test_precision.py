"""`--precision` through the network pipeline (CPU: tiny preset, seeded weights): fp32 on the reference renderer by
default on the CPU, bf16 rendering close to fp32, recorded by the CLI, bad values as one-line errors."""

from __future__ import annotations

import math

import av
import pytest
import soundfile as sf
import torch

from flashtalk.cli import main
from flashtalk.cli.animate import demo_assets
from flashtalk.errors import FlashTalkError
from flashtalk.io.audio import load_audio
from flashtalk.runtime.backends.network import NetworkBackend
from flashtalk.runtime.engine import Engine
from flashtalk.weights.bundle import seeded_networks
from tests.utils import assert_close, speech_keypoints

BF16_CPU_PSNR_DB = 30.0  # measured ~44 dB on the tiny preset with seeded weights (warping fp32 on the CPU)


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = (a.double() - b.double()).pow(2).mean().item()
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


@pytest.fixture(scope="module")
def short_speech(tmp_path_factory):
    """0.04 s of the bundled speech: 2 output frames."""
    path = tmp_path_factory.mktemp("speech") / "short.wav"
    sf.write(path, load_audio(demo_assets()[1]).samples[:640], 16000)
    return path


@pytest.fixture(scope="module")
def fp32_engine():
    return Engine.from_weights(None, seeded=True, preset="tiny", device="cpu")


@pytest.fixture(scope="module")
def driving(fp32_engine, short_speech):
    """(source, driving keypoints [2, 21, 3]) of the short clip."""
    clip = fp32_engine.prepare(demo_assets()[0], short_speech, crop="center", watermark=False)
    return clip.animation.portrait, speech_keypoints(clip.animation)


def test_default_on_cpu_is_fp32_on_the_reference_renderer(fp32_engine, driving):
    explicit = Engine.from_weights(None, seeded=True, preset="tiny", device="cpu", precision="fp32").backend
    default = fp32_engine.backend
    assert default.precision == explicit.precision == "fp32"
    assert default.fast is None and explicit.fast is None
    source, x_d = driving
    a = default.render_keypoints(source.f_s, source.x_s, x_d[:1])
    b = explicit.render_keypoints(source.f_s, source.x_s, x_d[:1])
    assert torch.equal(a, b)
    with torch.no_grad():
        assert torch.equal(a, default.nets.renderer.render(source, x_d[:1]).clamp(0, 1))


def test_bf16_on_cpu_renders_close_to_fp32(fp32_engine, driving):
    source, x_d = driving
    bf16 = NetworkBackend(seeded_networks("tiny"), torch.device("cpu"), precision="bf16")
    assert bf16.fast is not None and not bf16.fast.graphs  # eager on the CPU
    ref = fp32_engine.backend.render_keypoints(source.f_s, source.x_s, x_d)
    out = bf16.render_keypoints(source.f_s, source.x_s, x_d)
    assert out.dtype == torch.float32 and not torch.isnan(out).any()
    assert _psnr(out, ref) > BF16_CPU_PSNR_DB
    # per-frame gathered sources (several portraits in one call) through the same fast renderer
    gathered = bf16.render_keypoints(source.f_s.expand(2, -1, -1, -1, -1), source.x_s.expand(2, -1, -1), x_d)
    assert_close(gathered.clamp(0, 1), out, atol=1e-5)


def test_cli_bf16_end_to_end_records_precision(short_speech, tmp_path, capsys):
    out = tmp_path / "bf16.mp4"
    rc = main(
        [
            "animate",
            str(demo_assets()[0]),
            str(short_speech),
            "-o",
            str(out),
            "--seeded-weights",
            "--preset",
            "tiny",
            "--device",
            "cpu",
            "--precision",
            "bf16",
            "--no-watermark",
            "--crop",
            "center",  # no face detector: OpenCV 5.x has no Haar cascade
            "-q",
        ]
    )
    assert rc == 0, capsys.readouterr().err
    with av.open(str(out)) as c:
        assert c.metadata.get("flashtalk_precision") == "bf16"
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(c.streams.video[0])]
    assert len(frames) == 2 and all(f.shape == (512, 512, 3) and f.std() > 0 for f in frames)


@pytest.mark.parametrize(
    "argv",
    [
        ["animate", "--demo", "--seeded-weights", "--preset", "tiny", "--precision", "fp8"],
        ["animate", "--demo", "--precision", "bf16"],  # the preview has no precision
        ["serve", "--seeded-weights", "--preset", "tiny", "--precision", "half"],
    ],
    ids=["animate-bad-string", "animate-preview", "serve-bad-string"],
)
def test_bad_precision_is_a_one_line_error(argv, tmp_path, capsys):
    if argv[0] == "animate":
        argv = argv + ["-o", str(tmp_path / "x.mp4")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "precision" in err
    assert not (tmp_path / "x.mp4").exists()


def test_bad_precision_in_the_api():
    with pytest.raises(FlashTalkError, match="precision must be one of fp32, bf16, fp16, got 'float16'"):
        Engine.from_weights(None, seeded=True, preset="tiny", device="cpu", precision="float16")
