"""JoyVASA motion pipeline (`flashtalk.models.joyvasa.pipeline`): EMA smoothing and the conversion to renderer motion,
relative driving with absolute lips, streaming = offline and the clip's window layout."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flashtalk.errors import FlashTalkError
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
from tests.models.joyvasa.helpers import _tiny
from tests.utils import assert_close


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
