"""JoyVASA motion generator, samplers and motion pipeline: golden parity (fp32 / fp64, both PE modes),
the diagonal cross-attention fast path, sampler purity and consistency, streaming = offline."""

from __future__ import annotations

import argparse
import math

import numpy as np
import pytest
import torch

from flashtalk.errors import FlashTalkError
from flashtalk.golden.joyvasa import seeded_motion_generator
from flashtalk.models.joyvasa.denoiser import MotionGenerator, MotionGeneratorConfig, sinusoid_table
from flashtalk.models.joyvasa.pipeline import (
    MotionStream,
    MotionTemplate,
    clip_layout,
    ema_smooth,
    generate_motion,
    motion_to_renderer,
    relative_driving,
)
from flashtalk.models.liveportrait.keypoints import Motion, rotation_from_degrees
from flashtalk.samplers import (
    Schedule,
    cosine_schedule,
    ddim_sample,
    ddpm_sample,
    dpmpp_2m_sample,
    timestep_index,
    timesteps,
)
from tests.conftest import golden_dir
from tests.utils import assert_close

GATES = {torch.float32: {"denoiser": 5e-6, "sampler": 2e-5}, torch.float64: {"denoiser": 1e-10, "sampler": 1e-10}}
DTYPES = [pytest.param(torch.float32, id="fp32"), pytest.param(torch.float64, id="fp64")]


@pytest.fixture(scope="module")
def models():
    folder = golden_dir("joyvasa")
    return folder, {dt: seeded_motion_generator(folder, dt, "cpu") for dt in (torch.float32, torch.float64)}


def _t(a, dtype):
    return torch.from_numpy(np.asarray(a)).to(dtype)


def _tiny(seed: int = 0, dtype=torch.float64, **kw) -> MotionGenerator:
    torch.manual_seed(seed)
    model = MotionGenerator(MotionGeneratorConfig.tiny(**kw), dtype=dtype).eval()
    with torch.no_grad():  # non-trivial weights everywhere (biases and norms too)
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", ["fixed", "buggy"])
def test_denoiser_matches_golden(models, dtype, mode):
    folder, nets = models
    g = np.load(folder / "denoiser_forward.npz")
    net = nets[dtype].denoising_net
    net.pe_mode = mode
    args = [_t(g[k], dtype) for k in ("motion_feat", "audio_feat", "prev_motion_feat", "prev_audio_feat")]
    with torch.no_grad():
        out = net(*args, torch.from_numpy(g["step"]))
        assert_close(
            net.time_embedding(torch.from_numpy(g["step"])), _t(g["t_emb"], torch.float64), GATES[dtype]["denoiser"]
        )
    assert_close(out, _t(g[f"out_{mode}"], torch.float64), GATES[dtype]["denoiser"])
    assert torch.equal(~net.alignment_mask, ~torch.from_numpy(g["alignment_mask"]))


def test_pe_modes_differ_and_default_is_buggy():
    assert MotionGeneratorConfig().pe_mode == "buggy"
    net = _tiny().denoising_net
    L = net.cfg.seq_len
    net.pe_mode = "buggy"
    buggy = net.positional(L)
    assert torch.equal(buggy, net.PE.pe[0, L].expand(L, -1))  # row L on every token
    net.pe_mode = "fixed"
    assert torch.equal(net.positional(L), net.PE.pe[0, :L])
    with pytest.raises(FlashTalkError, match="pe_mode"):
        MotionGeneratorConfig(pe_mode="learned")


def test_sinusoid_table_formula():
    pe = sinusoid_table(7, 8)[0]
    p, i = 5, 3
    w = 10000 ** (-2 * i / 8)
    assert pe[p, 2 * i].item() == pytest.approx(math.sin(p * w), abs=1e-15)
    assert pe[p, 2 * i + 1].item() == pytest.approx(math.cos(p * w), abs=1e-15)


@pytest.mark.parametrize("dtype", DTYPES)
def test_diagonal_fast_path_equals_masked_attention(dtype):
    model = _tiny(dtype=dtype)
    net, cfg = model.denoising_net, model.cfg
    N, W, P = 3, cfg.n_motions, cfg.n_prev_motions
    args = (
        torch.randn(N, W, cfg.motion_feat_dim, dtype=dtype),
        torch.randn(N, W, cfg.feature_dim, dtype=dtype),
        torch.randn(N, P, cfg.motion_feat_dim, dtype=dtype),
        torch.randn(N, P, cfg.feature_dim, dtype=dtype),
        torch.tensor([1, 3, 6]),
    )
    with torch.no_grad():
        net.cross_attention = "diagonal"
        fast = net(*args)
        net.cross_attention = "masked"
        masked = net(*args)
        # the mask matters: attention over all memory tokens gives something else
        layer, h, mem = (
            net.transformer.layers[0],
            torch.randn(N, P + W, cfg.feature_dim, dtype=dtype),
            torch.randn(N, P + W, cfg.feature_dim, dtype=dtype),
        )
        free = layer.multihead_attn(h, mem, None)
    assert fast.std() > 0.1
    assert_close(fast, masked, 1e-12 if dtype == torch.float64 else 2e-6)
    assert (free - layer.multihead_attn.per_frame(mem)).abs().max() > 1e-3


def test_schedule_matches_golden_and_spec(jv_golden):
    g = np.load(jv_golden / "sampler_T50.npz")
    s = cosine_schedule(50)
    for name in Schedule._fields:
        assert_close(getattr(s, name), _t(g[f"sched_{name}"], torch.float64), 1e-15)
    assert s.betas[1].item() == pytest.approx(0.001748, abs=5e-7) and s.betas[50].item() == pytest.approx(0.999)
    g5 = np.load(jv_golden / "sampler_T5.npz")
    assert_close(cosine_schedule(5).alpha_bars, _t(g5["sched_alpha_bars"], torch.float64), 1e-15)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", ["fixed", "buggy"])
def test_ddpm_t5_matches_golden(models, dtype, mode):
    folder, nets = models
    g = np.load(folder / "sampler_T5.npz")
    model = nets[dtype]
    model.denoising_net.pe_mode = mode
    x0_fn = model.guided_x0_fn(
        *(_t(g[k], dtype) for k in ("audio_feat", "prev_motion_feat", "prev_audio_feat")), float(g["cfg_scale"])
    )
    with torch.no_grad():
        traj = ddpm_sample(
            x0_fn, _t(g["x_T"], dtype), cosine_schedule(5, dtype=dtype), noise=_t(g["z"], dtype), trajectory=True
        )
    assert_close(traj, _t(g[f"traj_{mode}"], torch.float64), GATES[dtype]["sampler"])


def test_sampler_purity_and_generators():
    model = _tiny()
    cfg = model.cfg
    audio = torch.randn(2, cfg.n_motions, cfg.feature_dim, dtype=torch.float64)
    pm, pa = model.start_context(2)
    x0_fn = model.guided_x0_fn(audio, pm, pa, 2.0)
    x_T = torch.randn(2, cfg.n_motions, cfg.motion_feat_dim, dtype=torch.float64)
    sched = model.schedule()
    with torch.no_grad():
        runs = [ddpm_sample(x0_fn, x_T, sched, generator=torch.Generator().manual_seed(7)) for _ in range(2)]
        other = ddpm_sample(x0_fn, x_T, sched, generator=torch.Generator().manual_seed(8))
        ddim = [
            ddim_sample(x0_fn, x_T, sched, 3, eta=0.5, generator=torch.Generator().manual_seed(1)) for _ in range(2)
        ]
        dpm = [dpmpp_2m_sample(x0_fn, x_T, sched, 4) for _ in range(2)]
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], other)
    assert torch.equal(ddim[0], ddim[1]) and torch.equal(dpm[0], dpm[1])
    assert torch.isfinite(dpm[0]).all() and dpm[0].std() > 0.05
    with pytest.raises(FlashTalkError, match="noise must be shaped"):
        ddpm_sample(x0_fn, x_T, sched, noise=torch.zeros(2, 2))


def test_ddim_eta1_all_steps_is_ddpm(models):
    """DDIM with eta = 1 over all T steps and the same per-step noise is the ancestral sampler (exactly,
    up to round-off): checked against the golden T = 5 trajectory's end point."""
    folder, nets = models
    g = np.load(folder / "sampler_T5.npz")
    model = nets[torch.float64]
    model.denoising_net.pe_mode = "fixed"
    x0_fn = model.guided_x0_fn(
        *(_t(g[k], torch.float64) for k in ("audio_feat", "prev_motion_feat", "prev_audio_feat")), float(g["cfg_scale"])
    )
    with torch.no_grad():
        out = ddim_sample(
            x0_fn, _t(g["x_T"], torch.float64), cosine_schedule(5), 5, eta=1.0, noise=_t(g["z"], torch.float64)
        )
    assert_close(out, _t(g["traj_fixed"][-1], torch.float64), 1e-10)


def test_few_step_samplers_on_exact_x0():
    """With an oracle x0 prediction (x0_fn returns the true x0), DDIM (eta 0) and DPM-Solver++ must
    return that x0 exactly at any step count; the schedule grid is strictly decreasing to 0."""
    x0 = torch.randn(2, 5, 3, dtype=torch.float64)
    sched = cosine_schedule(50, dtype=torch.float64)
    x_T = torch.randn_like(x0)
    oracle = lambda x, t: x0  # noqa: E731
    for steps in (1, 4, 7, 10):
        grid = timesteps(50, steps)
        assert grid[0] == 50 and grid[-1] == 0 and all(a > b for a, b in zip(grid, grid[1:]))
        assert len(grid) == steps + 1 and (steps == 1 or grid[-2] == 1)
        assert_close(ddim_sample(oracle, x_T, sched, steps), x0, 1e-12)
        assert_close(dpmpp_2m_sample(oracle, x_T, sched, steps), x0, 1e-12)
    with pytest.raises(FlashTalkError, match="1..50"):
        timesteps(50, 51)


def test_device_timestep_index_equals_the_grid():
    """The graph-capturable index (device ops only) is the same grid as the Python list, for every step count."""
    for T in (5, 50):
        for steps in range(1, T + 1):
            assert timestep_index(T, steps).tolist() == timesteps(T, steps), (T, steps)


def test_config_from_args_reads_only_the_constructor_fields():
    ns = argparse.Namespace(
        n_motions=50,
        n_prev_motions=25,
        feature_dim=256,
        motion_feat_dim=70,
        n_diff_steps=50,
        fps=25,
        pad_mode="zero",
        n_layers=6,
        audio_model="hubert_zh",
    )
    cfg = MotionGeneratorConfig.from_args(ns)
    assert (cfg.n_motions, cfg.n_prev_motions, cfg.n_layers, cfg.n_heads, cfg.ffn_dim) == (50, 25, 8, 8, 1024)
    assert cfg.window_samples == 32000 and cfg.seq_len == 75
    assert MotionGeneratorConfig.from_args({"n_motions": 100}, pe_mode="fixed").pe_mode == "fixed"
    with pytest.raises(FlashTalkError, match="n_motions"):
        MotionGeneratorConfig.from_args({"n_motions": "many"})


def test_ema_and_renderer_conversion():
    x = torch.randn(2, 9, 7, dtype=torch.float64)
    # sequential definition, written out
    ref, s = [], x[:, 0]
    for k in range(9):
        s = 0.3 * x[:, k] + 0.7 * s
        ref.append(s)
    assert_close(ema_smooth(x, 0.3), torch.stack(ref, 1), 1e-12)
    # streaming: two halves with the carried state equal one pass
    first = ema_smooth(x[:, :4], 0.3)
    assert_close(ema_smooth(x[:, 4:], 0.3, first[:, -1]), torch.stack(ref, 1)[:, 4:], 1e-12)

    t = {
        "mean_exp": np.linspace(-0.1, 0.1, 63),
        "std_exp": np.linspace(0.01, 0.05, 63),
        "min_scale": [1.2],
        "max_scale": [1.8],
        "min_t": [-0.1, -0.2, -0.3],
        "max_t": [0.1, 0.2, 0.3],
        "min_pitch": [-20.0],
        "max_pitch": [20.0],
        "min_yaw": [-30.0],
        "max_yaw": [30.0],
        "min_roll": [-10.0],
        "max_roll": [10.0],
    }
    template = MotionTemplate.from_dict(t)
    coef = torch.rand(5, 70, dtype=torch.float64)
    m = motion_to_renderer(coef, template, ema_alpha=None)
    assert m.exp.shape == (5, 21, 3) and m.exp.dtype == torch.float32
    assert m.exp[2, 4, 1].item() == pytest.approx(coef[2, 13].item() * t["std_exp"][13] + t["mean_exp"][13], rel=1e-6)
    assert m.yaw[3].item() == pytest.approx(coef[3, 68].item() * 60 - 30, rel=1e-6)
    assert m.t[1, 2].item() == pytest.approx(coef[1, 66].item() * 0.6 - 0.3, rel=1e-5, abs=1e-7)
    assert_close(m.R, rotation_from_degrees(m.pitch, m.yaw, m.roll), 0)
    with pytest.raises(FlashTalkError, match="std_exp"):
        MotionTemplate.from_dict({k: v for k, v in t.items() if k != "std_exp"})
    with pytest.raises(FlashTalkError, match="min_t"):
        MotionTemplate.from_dict({**t, "min_t": [0.0]})


def test_relative_driving_lips_absolute():
    B = 3
    gen = Motion(
        R=rotation_from_degrees(torch.randn(B) * 5, torch.randn(B) * 5, torch.randn(B) * 5),
        exp=torch.randn(B, 21, 3) * 0.02,
        scale=1.5 + 0.1 * torch.rand(B, 1),
        t=torch.randn(B, 3) * 0.05,
    )
    src = Motion(
        R=rotation_from_degrees(torch.tensor([3.0]), torch.tensor([-4.0]), torch.tensor([1.0])),
        exp=torch.randn(1, 21, 3) * 0.02,
        scale=torch.tensor([[1.4]]),
        t=torch.tensor([[0.01, 0.02, 0.3]]),
    )
    ref = Motion(gen.R[:1], gen.exp[:1], gen.scale[:1], gen.t[:1])
    x_c = torch.randn(1, 21, 3) * 0.3
    x_d = relative_driving(x_c, src, gen, ref)
    # frame 0 is the reference: everything but the lips equals the source's own keypoints
    exp0 = src.exp.clone()
    exp0[:, [6, 12, 14, 17, 19, 20]] = gen.exp[:1, [6, 12, 14, 17, 19, 20]]
    want = src.scale[:, :, None] * (x_c @ src.R + exp0) + torch.cat([src.t[:, :2], torch.zeros(1, 1)], 1)[:, None]
    assert_close(x_d[:1], want, 1e-6)
    assert (x_d[1:] - x_d[:1]).abs().max() > 1e-3


def test_stream_equals_offline_and_layout():
    assert clip_layout(84800, 640, 100) == (135, 2)
    assert clip_layout(100 * 640 - 1920, 640, 100) == (100, 1)
    model = _tiny(seed=3)
    cfg = model.cfg
    proj = torch.randn(cfg.window_samples // cfg.n_motions, cfg.audio_dim, dtype=torch.float64)

    def features(win):  # a deterministic stand-in encoder: [B, samples] -> [B, n_motions, audio_dim]
        return win.view(win.shape[0], cfg.n_motions, -1) @ proj

    audio = torch.randn(1, int(2.3 * cfg.window_samples), dtype=torch.float64)
    n_frames, n_windows = clip_layout(audio.shape[1], cfg.samples_per_frame, cfg.n_motions)
    x_T = torch.randn(1, cfg.n_motions, cfg.motion_feat_dim, dtype=torch.float64)
    noise = torch.randn(n_windows, cfg.n_diff_steps - 1, 1, cfg.n_motions, cfg.motion_feat_dim, dtype=torch.float64)
    coef = generate_motion(model, features, audio, x_T=x_T, noise=noise)
    assert coef.shape == (1, n_frames, cfg.motion_feat_dim) and n_windows == 3
    # by hand: shifted by two frames of silence, zero-padded, windows with the previous window's context
    spf, win = cfg.samples_per_frame, cfg.window_samples
    padded = torch.cat(
        [
            torch.zeros(1, 2 * spf, dtype=torch.float64),
            audio,
            torch.zeros(1, n_windows * win - audio.shape[1] - 2 * spf, dtype=torch.float64),
        ],
        1,
    )
    stream = MotionStream(model, x_T=x_T)
    pieces = [stream.push(features(padded[:, w * win : (w + 1) * win]), noise=noise[w]).coef for w in range(n_windows)]
    assert torch.equal(coef, torch.cat(pieces, 1)[:, :n_frames])
    assert not torch.allclose(pieces[0], pieces[1])


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "fp64"])
def test_verify_golden_cli(jv_golden, precision, capsys):
    """Every gated array of every JoyVASA golden file (audio encoder, denoiser, T=50 and T=5 samplers with
    chained windows, offline pipeline with de-normalisation and EMA), both PE modes, through the CLI. fp64
    leaves out the T=50 sampler (37 s of fp64 matmuls on a CPU): the T=5 one runs the same sampler code at the
    1e-9 gates, and T=50 runs in fp32; and the audio encoder, which test_audio_encoder.py checks in fp64 at the
    same gates."""
    from flashtalk.cli import main

    only = ["--only", "denoiser_forward", "sampler_T5.npz", "pipeline"] if precision == "fp64" else []
    rc = main(["verify-golden", str(jv_golden), "--precision", precision, "--device", "cpu", *only])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert ("58 passed, 0 failed" if precision == "fp32" else "40 passed, 0 failed") in out, out
    assert (precision == "fp32") == ("sampler_T50.npz" in out)
