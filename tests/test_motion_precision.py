"""Motion-path precision (`Networks.to(device, precision)`): bf16 / fp16 audio encoder and motion transformer
with fp32 norms, gated against the same networks in fp32 on the JoyVASA golden inputs (CPU: bf16 numerics
outside `tl.dot` are right there). Gates: `tests/utils.py` NETWORK_REL_TOLERANCES, MOTION_SEED_SPREAD_FACTOR."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from flashtalk.errors import FlashTalkError
from flashtalk.golden.joyvasa import _seeded_audio_encoder, seeded_motion_generator
from flashtalk.models.hubert import joyvasa_audio_features
from flashtalk.models.layers import FP32GroupNorm, FP32LayerNorm, set_compute_dtype
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


def test_fp32_norms_equal_torch_and_keep_fp32_statistics():
    torch.manual_seed(0)
    x = torch.randn(2, 7, 48) * 30 + 5  # a large mean: bf16 statistics would lose it
    ln, ref = FP32LayerNorm(48), nn.LayerNorm(48)
    gn, gref = FP32GroupNorm(7, 7), nn.GroupNorm(7, 7)
    with torch.no_grad():
        for m, r in ((ln, ref), (gn, gref)):
            m.weight.uniform_(0.5, 1.5), m.bias.uniform_(-1, 1)
            r.load_state_dict(m.state_dict())
    assert torch.equal(ln(x), ref(x)) and torch.equal(gn(x), gref(x))  # fp32: the same op, bit for bit
    xb = x.bfloat16()
    out = ln(xb)
    assert out.dtype == torch.bfloat16
    want = ref(xb.float())  # fp32 statistics of the bf16 input, then one rounding
    assert torch.equal(out, want.bfloat16())


def test_set_compute_dtype_keeps_norms_fp32():
    net = nn.Sequential(nn.Linear(4, 4), FP32LayerNorm(4), nn.Sequential(nn.Conv1d(2, 2, 3), FP32GroupNorm(1, 2)))
    net.register_buffer("table", torch.ones(3))
    set_compute_dtype(net, torch.bfloat16)
    assert net[0].weight.dtype == net[2][0].bias.dtype == net.table.dtype == torch.bfloat16
    assert net[1].weight.dtype == net[2][1].bias.dtype == torch.float32
    with pytest.raises(TypeError, match="LayerNorm would get fp32 parameters"):
        set_compute_dtype(nn.Sequential(nn.LayerNorm(4)), torch.float16)


def test_networks_to_sets_the_motion_path_precision():
    nets = seeded_networks("tiny")
    assert nets.to("cpu").motion_precision == "fp32"  # the CPU default
    nets.to("cpu", "bf16")
    assert nets.motion_precision == "bf16"
    assert nets.motion.denoising_net.feature_proj.weight.dtype == torch.bfloat16
    assert nets.audio.encoder.layers[0].attention.q_proj.weight.dtype == torch.bfloat16
    assert nets.motion.denoising_net.transformer.layers[0].norm1.weight.dtype == torch.float32
    assert nets.audio.encoder.layers[0].layer_norm.weight.dtype == torch.float32
    # the sampler's side stays fp32: schedule, start tokens, audio projection
    assert nets.motion.diffusion_sched.alpha_bars.dtype == torch.float32
    assert nets.motion.start_motion_feat.dtype == nets.motion.audio_feature_map.weight.dtype == torch.float32
    with pytest.raises(FlashTalkError, match="precision must be one of fp32, bf16, fp16, got 'half'"):
        nets.to("cpu", "half")


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
