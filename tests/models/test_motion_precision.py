"""Motion-path precision (`Networks.to(device, precision)`): bf16 / fp16 audio encoder and motion transformer
with fp32 norms, gated against the same networks in fp32 on the JoyVASA golden inputs (CPU: bf16 numerics
outside `tl.dot` are right there). Gates: `tests/utils.py` NETWORK_REL_TOLERANCES, MOTION_SEED_SPREAD_FACTOR."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flashtalk.golden.joyvasa import _seeded_audio_encoder, seeded_motion_generator
from flashtalk.models.hubert import joyvasa_audio_features
from flashtalk.models.layers import set_compute_dtype
from flashtalk.samplers import dpmpp_2m_sample
from flashtalk.weights.bundle import seeded_networks
from tests.conftest import golden_dir
from tests.utils import MOTION_SEED_SPREAD_FACTOR, NETWORK_REL_TOLERANCES

LOW = [pytest.param(torch.bfloat16, id="bf16"), pytest.param(torch.float16, id="fp16")]
AUDIO_SAMPLES = 6400  # the first 0.4 s of the golden audio (10 motion frames): the CPU runs bf16 slowly


def _rel(actual: torch.Tensor, expected: torch.Tensor) -> float:
    a, e = actual.double(), expected.double()
    return ((a - e).norm() / e.norm()).item()


@pytest.fixture(scope="module")
def motion_fp32():
    return seeded_motion_generator(golden_dir("joyvasa"), torch.float32, "cpu")


def test_tiny_stream_in_bf16_is_fp32_out_and_close():
    from flashtalk.models.joyvasa.pipeline import MotionStream, SamplerConfig

    nets = seeded_networks("tiny")
    cfg = nets.motion.cfg
    audio = torch.randn(1, cfg.window_samples, generator=torch.Generator().manual_seed(3)) * 0.1
    x_T = torch.randn(1, cfg.n_motions, cfg.motion_feat_dim, generator=torch.Generator().manual_seed(4))
    outs = {}
    for precision in ("fp32", "bf16"):
        nets.to("cpu", precision)
        with torch.no_grad():
            feats = joyvasa_audio_features(nets.audio, audio, cfg.n_motions)
            stream = MotionStream(nets.motion, sampler=SamplerConfig("dpmpp_2m", 4, 0.0, 2.0), x_T=x_T.clone())
            outs[precision] = (feats, stream.push(feats).coef)
    (f32, c32), (fb, cb) = outs["fp32"], outs["bf16"]
    assert fb.dtype == cb.dtype == torch.float32 and torch.isfinite(cb).all()
    assert not torch.equal(cb, c32)  # it really ran in bf16
    assert _rel(fb, f32) <= NETWORK_REL_TOLERANCES[torch.bfloat16]


@pytest.mark.parametrize("dtype", LOW)
def test_denoiser_golden_inputs_within_gate(motion_fp32, dtype):
    g = np.load(golden_dir("joyvasa") / "denoiser_forward.npz")
    args = [
        torch.from_numpy(g[k]).float() for k in ("motion_feat", "audio_feat", "prev_motion_feat", "prev_audio_feat")
    ]
    step = torch.from_numpy(g["step"])
    net = motion_fp32.denoising_net
    with torch.no_grad():
        ref = net(*args, step)
        low = set_compute_dtype(
            seeded_motion_generator(golden_dir("joyvasa"), torch.float32, "cpu").denoising_net, dtype
        )
        out = low(*args, step)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    rel = _rel(out, ref)
    assert 0 < rel <= NETWORK_REL_TOLERANCES[dtype], f"denoiser {dtype} relative error {rel:.3e}"
    # the golden README's own check for fp16 / bf16 kernels: atol 2e-2, rtol 2e-2 against the fp64 output
    golden = torch.from_numpy(g["out_buggy"])
    assert ((out.double() - golden).abs() <= 2e-2 + 2e-2 * golden.abs()).all()


@pytest.mark.parametrize("dtype", LOW)
def test_hubert_features_golden_audio_within_gate(dtype):
    folder = golden_dir("joyvasa")
    audio = torch.from_numpy(np.load(folder / "audio_encoder.npz")["audio"][:1, :AUDIO_SAMPLES]).float()
    enc = _seeded_audio_encoder(folder, torch.float32, "cpu", 0)
    frames = AUDIO_SAMPLES // 640
    with torch.no_grad():
        ref = joyvasa_audio_features(enc, audio, frames)
        out = joyvasa_audio_features(set_compute_dtype(enc, dtype), audio, frames)
    assert out.dtype == torch.float32 and out.shape == ref.shape == (1, frames, 768) and torch.isfinite(out).all()
    rel = _rel(out, ref)
    assert 0 < rel <= NETWORK_REL_TOLERANCES[dtype], f"HuBERT features {dtype} relative error {rel:.3e}"


def test_bf16_sampled_motion_within_seed_spread():
    """The production sampler (DPM-Solver++ 2M, CFG 2) on the golden window: bf16 - fp32 from the same x_T
    is no larger than what another seed changes (fp32 vs fp32)."""
    folder = golden_dir("joyvasa")
    g = np.load(folder / "sampler_T50.npz")
    audio, x_T = (torch.from_numpy(g[k][:1]).float() for k in ("audio_feat_w0", "x_T"))
    other = torch.randn(x_T.shape, generator=torch.Generator().manual_seed(1))
    runs = {}
    for name, dtype, x in (("fp32", torch.float32, x_T), ("seed", torch.float32, other), ("bf16", torch.bfloat16, x_T)):
        model = seeded_motion_generator(folder, torch.float32, "cpu")
        set_compute_dtype(model.denoising_net, dtype)
        pm, pa = model.start_context(1)
        with torch.no_grad():
            runs[name] = dpmpp_2m_sample(model.guided_x0_fn(audio, pm, pa, 2.0), x, model.schedule(), 4)
    rms = lambda t: t.double().pow(2).mean().sqrt().item()  # noqa: E731
    err, spread = rms(runs["bf16"] - runs["fp32"]), rms(runs["seed"] - runs["fp32"])
    assert runs["bf16"].dtype == torch.float32 and spread > 0
    assert 0 < err <= MOTION_SEED_SPREAD_FACTOR * spread, f"bf16 motion RMS {err:.3e} vs seed spread {spread:.3e}"
