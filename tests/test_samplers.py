"""Samplers (`flashtalk.samplers`): the cosine schedule and JoyVASA's DDPM trajectories against the golden data (fp32 /
fp64, both PE modes), purity and seeded generators, DDIM with eta = 1 is DDPM, few-step DDIM and DPM-Solver++ on an
exact x0, the device timestep grid."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flashtalk.errors import FlashTalkError
from flashtalk.golden.joyvasa import seeded_motion_generator
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
from tests.models.joyvasa.helpers import DTYPES, GATES, _t, _tiny
from tests.utils import assert_close


@pytest.fixture(scope="module")
def models():
    folder = golden_dir("joyvasa")
    return folder, {dt: seeded_motion_generator(folder, dt, "cpu") for dt in (torch.float32, torch.float64)}


def test_schedule_matches_golden_and_spec(jv_golden):
    g = np.load(jv_golden / "sampler_T50.npz")
    s = cosine_schedule(50)
    for name in Schedule._fields:
        assert_close(getattr(s, name), _t(g[f"sched_{name}"], torch.float64), 1e-15)
    assert s.betas[1].item() == pytest.approx(0.001748, abs=5e-7) and s.betas[50].item() == pytest.approx(0.999)
    g5 = np.load(jv_golden / "sampler_T5.npz")
    assert_close(cosine_schedule(5).alpha_bars, _t(g5["sched_alpha_bars"], torch.float64), 1e-15)


@pytest.mark.slow
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


@pytest.mark.slow
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
