"""LivePortrait SPADE decoder G: the full-size golden output (fp32), the spectral-norm sigmas (fp64), and
SpectralNormConv2d equal to torch's spectral_norm in eval mode."""

from __future__ import annotations

import pytest
import torch

from flashtalk.models.liveportrait.spade import SpectralNormConv2d
from tests.models.liveportrait.helpers import _load, _seeded
from tests.utils import assert_close


@pytest.mark.slow
def test_spade_generator_golden_fp32(lp_golden):
    """Full-size G once in fp32 (the fp64 run is part of test_verify_golden)."""
    d = _load(lp_golden, "spade_generator.npz", torch.float32)
    g = _seeded(lp_golden, "spade_generator", torch.float32)
    with torch.no_grad():
        out = g(d["in_feature"])
    assert out.shape == (1, 3, 512, 512)
    assert_close(out, d["out_image"], 1e-5)


@pytest.mark.slow
def test_spectral_norm_sigma_golden_fp64(lp_golden):
    g = _seeded(lp_golden, "spade_generator", torch.float64)
    d = _load(lp_golden, "spade_generator.npz", torch.float64)
    names = [k.removeprefix("dbg_sigma_") for k in d if k.startswith("dbg_sigma_")]
    assert len(names) == 18
    for name in names:
        layer = g.get_submodule(name)
        assert isinstance(layer, SpectralNormConv2d)
        assert abs(layer.sigma().item() - d[f"dbg_sigma_{name}"].item()) < 1e-12, name


def test_spectral_norm_matches_torch_eval():
    """Our W_eff = weight_orig / (u·W v) equals torch's legacy spectral_norm in eval mode, with u, v
    left by a few training-mode power iterations (so they are not the seeded ones)."""
    ref = torch.nn.utils.spectral_norm(torch.nn.Conv2d(6, 5, 3, padding=1).double())
    x = torch.randn(2, 6, 9, 7, dtype=torch.float64)
    ref.train()
    for _ in range(3):
        ref(x)
    ref.eval()
    ours = SpectralNormConv2d(6, 5, 3, padding=1).double()
    ours.load_state_dict(ref.state_dict(), strict=True)
    with torch.no_grad():
        assert_close(ours(x), ref(x), 1e-12)
