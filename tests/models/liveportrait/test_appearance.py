"""LivePortrait appearance feature extractor F: golden output at fp32 and fp64 (full size, once each) and input errors
(its key layout and config values are checked with W's, in test_warping.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flashtalk.errors import FlashTalkError
from flashtalk.models.liveportrait.appearance import AppearanceConfig, AppearanceFeatureExtractor
from tests.models.liveportrait.helpers import PRECISIONS, check_golden, run_with_chanmeans, seeded


@pytest.mark.slow
@pytest.mark.parametrize("precision", list(PRECISIONS))
def test_appearance_golden(lp_golden, precision):
    dtype = PRECISIONS[precision]
    ref = np.load(lp_golden / "appearance_feature_extractor.npz")
    net = seeded("appearance_feature_extractor", lp_golden, dtype)
    names = ["first", "down_blocks.0", "down_blocks.1", "second", "resblocks_3d.3dr0", "resblocks_3d.3dr5"]
    f_s, means = run_with_chanmeans(net, names, torch.from_numpy(ref["in_image"]).to(dtype))
    assert f_s.dtype == dtype and f_s.shape == (1, 32, 16, 64, 64)
    check_golden(lp_golden, "appearance_feature_extractor.npz", {"out_feature_3d": f_s}, means, ref, precision)


@pytest.mark.parametrize(
    "image, match",
    [
        pytest.param(torch.rand(1, 1, 32, 32), r"shape \[B, 3, H, W\].*\(1, 1, 32, 32\)", id="gray"),
        pytest.param(torch.rand(3, 32, 32), r"shape \[B, 3, H, W\]", id="no-batch"),
        pytest.param(torch.rand(1, 3, 30, 32), r"multiples of 4.*\(1, 3, 30, 32\)", id="odd-size"),
        pytest.param(torch.rand(1, 3, 32, 32) * 255, r"values must be in \[0, 1\].*max", id="0-255"),
        pytest.param(torch.rand(1, 3, 32, 32) * 2 - 1, r"values must be in \[0, 1\].*min", id="minus1-1"),
        pytest.param(torch.full((1, 3, 32, 32), float("nan")), r"values must be in \[0, 1\]", id="nan"),
        pytest.param(torch.zeros(1, 3, 32, 32, dtype=torch.uint8), r"floating.*uint8", id="uint8"),
    ],
)
def test_appearance_rejects_bad_images(image, match):
    f = AppearanceFeatureExtractor(AppearanceConfig.tiny())
    with pytest.raises(FlashTalkError, match=match):
        f(image)
