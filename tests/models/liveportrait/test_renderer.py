"""LivePortrait renderer (`flashtalk.models.liveportrait.renderer`: F + M + W + G + stitching): `build_network`'s key
layout of M, G and the stitching MLPs against the manifest, the tiny presets end to end through the Renderer, and
bad inputs."""

from __future__ import annotations

import json

import pytest
import torch

from flashtalk.errors import FlashTalkError
from flashtalk.models.liveportrait import keypoints as kpm
from flashtalk.models.liveportrait.motion_extractor import MotionExtractor, MotionExtractorConfig
from flashtalk.models.liveportrait.renderer import Renderer, RendererConfig, build_network
from flashtalk.models.liveportrait.spade import SPADEConfig, SPADEDecoder
from flashtalk.models.liveportrait.stitching import StitchingRetargeting
from flashtalk.weights.liveportrait import seeded_renderer
from tests.utils import assert_close


@pytest.mark.parametrize("network", ["motion_extractor", "spade_generator", "stitching_retargeting_module"])
def test_state_dict_matches_manifest(lp_golden, network):
    net = json.loads((lp_golden / "manifest.json").read_text())["networks"][network]
    if "sub_networks" in net:
        expected = [
            (f"{p}.{e['key']}", tuple(e["shape"])) for p, s in net["sub_networks"].items() for e in s["entries"]
        ]
    else:
        expected = [(e["key"], tuple(e["shape"])) for e in net["entries"]]
    ours = [(k, tuple(v.shape)) for k, v in build_network(network).state_dict().items()]
    assert ours == expected  # same keys, shapes and order


def test_tiny_presets_shapes():
    m = MotionExtractor(MotionExtractorConfig.tiny()).eval()
    with torch.no_grad():
        out = m(torch.rand(2, 3, 256, 256))
    shapes = {k: tuple(v.shape) for k, v in out.items()}
    assert shapes == {
        "kp": (2, 63),
        "scale": (2, 1),
        "pitch": (2, 66),
        "yaw": (2, 66),
        "roll": (2, 66),
        "t": (2, 3),
        "exp": (2, 63),
    }
    g = SPADEDecoder(SPADEConfig.tiny()).eval()
    with torch.no_grad():
        img = g(torch.randn(1, SPADEConfig.tiny().input_channels, 16, 16))
    assert img.shape == (1, 3, 128, 128) and bool(((img >= 0) & (img <= 1)).all())


def test_tiny_renderer_end_to_end():
    r = seeded_renderer("tiny", base_seed=7)
    image = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(1))
    src = r.encode_source(image)
    assert src.f_s.shape == (1, 4, 8, 64, 64) and src.x_s.shape == (1, 21, 3)
    n = 3
    g = torch.Generator().manual_seed(2)
    x_d = r.driving_keypoints(
        src,
        pitch=torch.tensor([0.0, 10.0, -15.0]),
        yaw=torch.tensor([0.0, 5.0, 20.0]),
        roll=torch.zeros(n),
        exp=src.exp + 0.02 * torch.randn(n, 21, 3, generator=g),
        scale=src.scale.expand(n, 1),
        t=src.t.expand(n, 3),
    )
    frames = r.render(src, x_d)
    assert frames.shape == (n, 3, 512, 512)
    assert bool(torch.isfinite(frames).all()) and frames.min() >= 0 and frames.max() <= 1
    assert (frames[0] - frames[2]).abs().max() > 1e-4  # different poses give different frames
    # Batched over frames == one frame at a time (f_s broadcast, no cross-frame mixing).
    # (fp32 convolutions pick batch-dependent algorithms: ~1e-5 apart; a frame mix-up is > 1e-3.)
    assert_close(r.render(src, x_d[1:2]), frames[1:2], 1e-4)
    # Stitching changes the keypoints the warp sees.
    assert (r.render(src, x_d[2:], stitching=False) - frames[2:]).abs().max() > 1e-6


def test_bad_inputs():
    r = Renderer(RendererConfig.from_name("tiny"))
    with pytest.raises(FlashTalkError, match=r"image must be \[B, 3, 256, 256\]"):
        r.encode_source(torch.rand(1, 3, 128, 128))
    with pytest.raises(FlashTalkError, match=r"\[0, 1\]"):
        r.encode_source(torch.rand(1, 3, 256, 256) * 255)
    with pytest.raises(FlashTalkError, match="float"):
        r.encode_source(torch.zeros(1, 3, 256, 256, dtype=torch.uint8))
    src = r.encode_source(torch.rand(1, 3, 256, 256))
    with pytest.raises(FlashTalkError, match=r"x_d must be driving keypoints \[N, 21, 3\]"):
        r.render(src, torch.zeros(2, 20, 3))
    with pytest.raises(FlashTalkError, match="pitch, yaw, roll"):
        r.driving_keypoints(src, exp=src.exp, scale=src.scale, t=src.t)
    with pytest.raises(FlashTalkError, match="unknown renderer preset"):
        RendererConfig.from_name("huge")
    with pytest.raises(FlashTalkError, match=r"feature must be \[B, 16, H, W\]"):
        r.spade_generator(torch.zeros(1, 15, 8, 8))
    with pytest.raises(FlashTalkError, match=r"\[B, 66\]"):
        kpm.bins_to_degrees(torch.zeros(2, 65))
    s = StitchingRetargeting()
    with pytest.raises(FlashTalkError, match="x_d must be"):
        s.stitch(torch.zeros(1, 21, 3), torch.zeros(1, 63))
    with pytest.raises(FlashTalkError, match=r"eye_ratio must be \[B, 3\]"):
        s.retarget_eye_delta(torch.zeros(1, 21, 3), torch.zeros(1, 2))
