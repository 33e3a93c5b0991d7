"""The checkpoint toolkit (safe_load, check_keys, write_safetensors)."""

from __future__ import annotations

import argparse
import os

import pytest
import torch

from flashtalk.errors import FlashTalkError
from flashtalk.models.liveportrait.renderer import build_network
from flashtalk.weights import liveportrait as lpw
from flashtalk.weights.checkpoint import check_keys, read_safetensors, safe_load, tensor_dict, write_safetensors

STITCHING = "liveportrait/retargeting_models/stitching_retargeting_module.pth"


def _published_stitching(root):
    """The published stitching file: three DDP state dicts (`module.` prefix), torch.save'd."""
    module = build_network("stitching_retargeting_module", "tiny")
    obj = {
        part: {f"module.{k}": torch.full_like(v, 0.25) for k, v in getattr(module, part).state_dict().items()}
        for part in lpw.STITCHING_PARTS
    }
    path = root / STITCHING
    path.parent.mkdir(parents=True)
    torch.save(obj, path)
    return path


def test_mismatch_report_names_missing_unexpected_and_misshaped_keys():
    expected = {f"layer{i}.weight": torch.Size([4, 4]) for i in range(8)} | {"bn.num_batches_tracked": torch.Size([])}
    got = {f"layer{i}.weight": torch.ones(4, 4) for i in range(1, 8)}  # layer0 missing, bn optional
    got["layer3.weight"] = torch.ones(4, 5)
    got |= {f"extra{i}": torch.ones(1) for i in range(7)}
    with pytest.raises(FlashTalkError) as info:
        check_keys(expected, got, where="w.pth", fits="test network", optional=["*.num_batches_tracked"])
    msg = str(info.value)
    assert msg.startswith("w.pth does not fit the test network: missing keys (1): layer0.weight; ")
    assert "unexpected keys (7): extra0, extra1, extra2, extra3, extra4 … and 2 more" in msg
    assert "mis-shaped keys (1): layer3.weight: file (4, 5) vs expected (4, 4)" in msg
    assert "num_batches_tracked" not in msg and "\n" not in msg


def test_mismatch_report_ignore_and_optional():
    expected = {"a": torch.zeros(2), "computed.pe": torch.zeros(3)}
    got = {"a": torch.ones(2), "recomputed": torch.ones(9)}
    out = check_keys(expected, got, where="x", fits="y", ignore=["recomputed"], optional=["computed.*"])
    assert set(out) == {"a"} and torch.equal(out["a"], torch.ones(2))
    with pytest.raises(FlashTalkError, match=r"x does not fit the y: missing keys \(1\): computed.pe"):
        check_keys(expected, got, where="x", fits="y", ignore=["recomputed"])


def test_published_stitching_file_reads_and_a_truncated_one_is_one_error(tmp_path):
    path = _published_stitching(tmp_path)
    state = lpw.read_checkpoint(path, "stitching_retargeting_module")
    assert all(k.startswith(lpw.STITCHING_PARTS) and "module." not in k for k in state)
    assert all(torch.all(v == 0.25) for v in state.values())
    cut = tmp_path / "cut.pth"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(
        FlashTalkError,
        match=r"cut.pth: cannot read the checkpoint \(truncated or corrupt file\? "
        r"expected a LivePortrait stitching/retargeting module checkpoint\)",
    ):
        lpw.read_checkpoint(cut, "stitching_retargeting_module")


def test_non_checkpoint_files_name_file_and_what(tmp_path):
    text = tmp_path / "notes.pt"
    text.write_text("this is not a checkpoint\n")
    with pytest.raises(FlashTalkError, match=r"notes.pt: cannot read the checkpoint .*expected a JoyVASA checkpoint"):
        safe_load(text, what="JoyVASA checkpoint")
    fake = tmp_path / "model.safetensors"
    fake.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{broken}")
    with pytest.raises(FlashTalkError, match=r"model.safetensors: cannot read the safetensors file .*expected a HF"):
        safe_load(fake, what="HF weights file")
    with pytest.raises(FlashTalkError, match=r"JoyVASA checkpoint .*absent.pt does not exist"):
        safe_load(tmp_path / "absent.pt", what="JoyVASA checkpoint")


def test_non_tensor_objects_are_refused_unless_allowed(tmp_path):
    path = tmp_path / "ckpt.pt"
    torch.save({"args": argparse.Namespace(fps=25), "model": {"w": torch.ones(2)}}, path)
    with pytest.raises(
        FlashTalkError,
        match=r"ckpt.pt: refused to unpickle a non-tensor object \(a motion checkpoint "
        r"may hold only tensors\).*Namespace",
    ):
        safe_load(path, what="motion checkpoint")
    obj = safe_load(path, what="motion checkpoint", allow=[argparse.Namespace])
    assert obj["args"].fps == 25 and torch.equal(obj["model"]["w"], torch.ones(2))
    with pytest.raises(FlashTalkError, match=r"ckpt.pt \['model'\]: holds non-tensor entries: step \(int\)"):
        tensor_dict({"w": torch.ones(1), "step": 3}, where=f"{path} ['model']")


def test_writer_refuses_to_clobber_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "bundle.safetensors"
    path.write_bytes(b"the user's file")
    with pytest.raises(FlashTalkError, match=r"bundle.safetensors already exists \(pass --overwrite"):
        lpw.write_bundle({"motion_extractor": {"w": torch.ones(3)}}, path)
    assert path.read_bytes() == b"the user's file"
    lpw.write_bundle({"motion_extractor": {"w": torch.arange(3.0)}}, path, overwrite=True)
    assert torch.equal(lpw.read_bundle(path)["motion_extractor"]["w"], torch.arange(3.0))
    assert sorted(os.listdir(tmp_path)) == ["bundle.safetensors"]
    with pytest.raises(FlashTalkError, match="is a folder"):
        write_safetensors({"w": torch.ones(1)}, tmp_path, metadata={})


def test_writer_keeps_metadata_and_non_contiguous_tensors(tmp_path):
    t = torch.arange(12.0).view(3, 4).t()
    path = write_safetensors({"t": t}, tmp_path / "a.safetensors", metadata={"format": "x", "n": "1"})
    tensors, meta = read_safetensors(path, what="test file")
    assert torch.equal(tensors["t"], t) and meta == {"format": "x", "n": "1"}
