"""JoyVASA motion generator (`flashtalk.models.joyvasa.denoiser`): golden parity (fp32 / fp64, both PE modes), the PE
modes, the sinusoid table, the diagonal cross-attention fast path, the config read from a checkpoint's args."""

from __future__ import annotations

import argparse
import math

import numpy as np
import pytest
import torch

from flashtalk.errors import FlashTalkError
from flashtalk.golden.joyvasa import seeded_motion_generator
from flashtalk.models.joyvasa.denoiser import MotionGeneratorConfig, sinusoid_table
from tests.conftest import golden_dir
from tests.models.joyvasa.helpers import DTYPES, GATES, _t, _tiny
from tests.utils import assert_close


@pytest.fixture(scope="module")
def models():
    folder = golden_dir("joyvasa")
    return folder, {dt: seeded_motion_generator(folder, dt, "cpu") for dt in (torch.float32, torch.float64)}


@pytest.mark.slow
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
