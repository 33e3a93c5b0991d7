"""`--precision` through the network pipelines, and the CUDA-graphed motion sampler (CPU: tiny preset,
seeded weights; the capture logic through the eager capture backend; one GPU test that skips on CPU)."""

from __future__ import annotations

import logging
import math

import av
import numpy as np
import pytest
import soundfile as sf
import torch

from flashtalk.cli import main
from flashtalk.cli.animate import demo_assets
from flashtalk.constants import HOP
from flashtalk.controls.control_set import ControlSet
from flashtalk.errors import FlashTalkError
from flashtalk.io.audio import load_audio
from flashtalk.runtime.backends.network import NetworkBackend
from flashtalk.runtime.engine import Engine
from flashtalk.runtime.graphs import EagerBackend
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


# ----------------------------------------------------------------------------------- graphed sampler


@pytest.fixture(scope="module")
def tiny_nets():
    return seeded_networks("tiny")


def _audio(nets, frames: int) -> np.ndarray:
    g = torch.Generator().manual_seed(3)
    return (0.1 * torch.randn(frames * HOP, generator=g)).numpy()


def _motions(backend: NetworkBackend, windows: int = 2) -> list:
    """Motion of `windows` windows of one stream through the backend's motion call: a whole first window,
    then a partial one (3 frames short) flushed as due."""
    W, stream = backend.cfg.n_motions, backend.open(None, seed=5)
    controls = ControlSet(pose_smoothing=0.9)
    sizes = [W - stream.lead] + [W - 3] * (windows - 1)
    audio = _audio(backend.nets, sum(sizes))
    out, done = [], 0
    for n in sizes:
        (m,) = backend.motion([(stream, audio[done * HOP : (done + n) * HOP], controls, n)])
        out.append(m.motion)
        done += n
    return out


@pytest.mark.parametrize("sampler,steps", [("dpmpp", 4), ("ddpm", None)])
def test_graphed_sampler_capture_logic_equals_eager(tiny_nets, sampler, steps):
    """Static buffers, up-front noise from the stream's generator, context / EMA updates: through the eager
    capture backend the motion is the eager sampler's exactly, window after window."""
    eager = _motions(NetworkBackend(tiny_nets, "cpu", sampler=sampler, steps=steps, graphs=False))
    graphed_backend = NetworkBackend(
        tiny_nets, "cpu", sampler=sampler, steps=steps, graphs=True, graph_backend=EagerBackend()
    )
    graphed = _motions(graphed_backend)
    ws = graphed_backend.window_sampler
    assert ws.runner is not None and ws.failed is None
    for a, b in zip(graphed, eager):
        for name in ("R", "exp", "scale", "t"):
            assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert graphed[1].R.shape[0] == tiny_nets.motion.cfg.n_motions - 3


class _FailingBackend:
    def capture(self, fn):
        raise RuntimeError("operation not permitted when stream is capturing")


def test_graphed_sampler_falls_back_to_eager_when_capture_fails(tiny_nets, caplog):
    eager = _motions(NetworkBackend(tiny_nets, "cpu", steps=3, graphs=False), 1)
    backend = NetworkBackend(tiny_nets, "cpu", steps=3, graphs=True, graph_backend=_FailingBackend())
    with caplog.at_level(logging.WARNING):
        got = _motions(backend, 1)
    assert backend.window_sampler.runner is None and "not permitted" in backend.window_sampler.failed
    assert "sampling eagerly" in caplog.text
    assert torch.equal(got[0].exp, eager[0].exp)


@pytest.mark.gpu
@pytest.mark.parametrize("sampler,steps", [("dpmpp", 10), ("ddim", 10), ("ddpm", None)])
def test_cuda_graphed_sampler_matches_eager(sampler, steps):
    nets = seeded_networks("tiny")
    eager = _motions(NetworkBackend(nets, "cuda", sampler=sampler, steps=steps, graphs=False))
    backend = NetworkBackend(nets, "cuda", sampler=sampler, steps=steps)  # graphs by default on CUDA
    graphed = _motions(backend)
    assert backend.window_sampler.failed is None, backend.window_sampler.failed
    for a, b in zip(graphed, eager):
        assert_close(a.exp, b.exp, atol=1e-4, rtol=1e-4)
        assert_close(a.R, b.R, atol=1e-4, rtol=1e-4)
