"""Expression presets (`flashtalk.controls.emotion`): save / load round trip (JSON, safetensors) into a ControlSet, and
bad preset files."""

from __future__ import annotations

import pytest
import torch

from flashtalk.controls.control_set import ControlSet
from flashtalk.controls.emotion import load_preset, save_preset
from flashtalk.errors import FlashTalkError

D = torch.float64


@pytest.mark.parametrize("suffix", [".json", ".safetensors"])
def test_preset_round_trip(tmp_path, suffix):
    offset = torch.linspace(-0.02, 0.03, 63, dtype=D).view(21, 3)
    path = save_preset(tmp_path / f"happy{suffix}", offset, "happy")
    name, back = load_preset(path)
    assert name == "happy"
    torch.testing.assert_close(back, offset, atol=1e-7 if suffix == ".safetensors" else 0, rtol=0)
    c = ControlSet.from_mapping({"emotion": str(path), "emotion_weight": 0.5})
    torch.testing.assert_close(torch.tensor(c.emotion, dtype=D), back.reshape(-1), atol=0, rtol=0)


def test_bad_presets(tmp_path):
    bad = tmp_path / "x.json"
    bad.write_text('{"format": "flashtalk-expression-preset", "offset": [[1, 2]]}')
    with pytest.raises(FlashTalkError, match=r"x.json.*\[21, 3\]"):
        load_preset(bad)
    (tmp_path / "y.json").write_text('{"offset": []}')
    with pytest.raises(FlashTalkError, match="not a flashtalk-expression-preset"):
        load_preset(tmp_path / "y.json")
    (tmp_path / "z.pkl").write_bytes(b"\x80\x04")
    with pytest.raises(FlashTalkError, match="json or .safetensors"):
        load_preset(tmp_path / "z.pkl")
    with pytest.raises(FlashTalkError, match="json or .safetensors"):
        save_preset(tmp_path / "p.pkl", torch.zeros(21, 3), "p")
