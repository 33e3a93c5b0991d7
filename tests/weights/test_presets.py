"""`Preset.from_name` (`flashtalk.weights.presets`): the tiny and full presets' sizes, and an unknown name."""

from __future__ import annotations

import pytest

from flashtalk.constants import PRESETS
from flashtalk.errors import FlashTalkError
from flashtalk.weights.presets import Preset


def test_preset_from_name():
    tiny = Preset.from_name("tiny")
    assert tiny.name == "tiny" and tiny.audio.hidden_size == tiny.motion.audio_dim == 32
    assert tiny.motion.motion_feat_dim == 70 and tiny.motion.n_motions == 8
    full = Preset.from_name("liveportrait")
    assert full.audio.hidden_size == full.motion.audio_dim == 768 and full.renderer.motion.num_kp == 21
    with pytest.raises(FlashTalkError, match=r"unknown preset 'huge' \(known: liveportrait, tiny\)"):
        Preset.from_name("huge")
    assert PRESETS == ("liveportrait", "tiny")
