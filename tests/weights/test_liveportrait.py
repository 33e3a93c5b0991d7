"""LivePortrait checkpoint loading: files written in the exact published layout (from the golden manifest,
golden-rule tensors in float32) load back unchanged, round-trip through the safetensors bundle, and bad
files fail with clear errors."""

from __future__ import annotations

import json
import pickle
import shutil

import pytest
import torch

from flashtalk.errors import FlashTalkError
from flashtalk.models.liveportrait.renderer import build_network
from flashtalk.weights import liveportrait as lpw
from flashtalk.weights.liveportrait import load_renderer


def _published_tensors(manifest: dict, network: str) -> dict:
    """The file content of `network` as the published checkpoint holds it (float32, int64 counters)."""
    state = lpw.seeded_state_dict(network, manifest, base_seed=0)
    return {k: v if v.dtype == torch.int64 else v.float() for k, v in state.items()}


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory):
    from tests.conftest import golden_dir

    manifest = json.loads((golden_dir("liveportrait") / "manifest.json").read_text())
    root = tmp_path_factory.mktemp("weights")
    expected = {}
    for network, (rel, _) in lpw.NETWORKS.items():
        state = _published_tensors(manifest, network)
        expected[network] = state
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if network == "stitching_retargeting_module":
            # Three DDP-prefixed sub-dicts, as the official training script saved them.
            obj = {
                part: {f"module.{k.split('.', 1)[1]}": v for k, v in state.items() if k.startswith(part + ".")}
                for part in lpw.STITCHING_PARTS
            }
        else:
            obj = state
        # Keys in manifest order, as the official classes' state_dict produces them.
        keys = [e["key"] for e in manifest["networks"][network].get("entries", [])]
        assert network == "stitching_retargeting_module" or list(obj) == keys
        torch.save(obj, path)
        del obj
    yield root, expected, manifest
    shutil.rmtree(root, ignore_errors=True)


def _assert_same(got: dict, expected: dict, what: str) -> None:
    assert list(got) == list(expected) or sorted(got) == sorted(expected), what
    for k, v in expected.items():
        assert got[k].dtype == v.dtype and got[k].shape == v.shape and torch.equal(got[k], v), f"{what}: {k}"


@pytest.mark.slow
def test_published_folder_loads_and_bundles(weights_dir, tmp_path, monkeypatch):
    root, expected, _ = weights_dir
    states = lpw.read_folder(root)
    assert sorted(states) == sorted(lpw.NETWORKS)
    for network in lpw.NETWORKS:
        _assert_same(states[network], expected[network], network)
    assert "retarget_eye.mlp.10.weight" in states["stitching_retargeting_module"]

    renderer = load_renderer(root)
    ours = renderer.state_dict()
    for network, sd in expected.items():
        for k, v in sd.items():
            assert torch.equal(ours[f"{network}.{k}"], v), f"{network}.{k}"
    del renderer, ours, states

    bundle = lpw.convert_folder(root, tmp_path / "liveportrait.safetensors")
    from safetensors import safe_open

    with safe_open(str(bundle), framework="pt") as f:
        meta = f.metadata()
        assert meta["format"] == "flashtalk-weights" and meta["version"] == "1"
        assert sorted(json.loads(meta["networks"])) == sorted(lpw.NETWORKS)
        assert "motion_extractor.detector.fc_kp.weight" in set(f.keys())

    def no_pickle(*args, **kwargs):
        raise AssertionError("a safetensors bundle must load without unpickling")

    monkeypatch.setattr(torch, "load", no_pickle)
    monkeypatch.setattr(pickle, "load", no_pickle)
    monkeypatch.setattr(pickle, "loads", no_pickle)
    loaded = lpw.read_bundle(bundle)
    for network in lpw.NETWORKS:
        _assert_same(loaded[network], expected[network], f"bundle {network}")
    renderer = load_renderer(bundle)
    assert torch.equal(
        renderer.spade_generator.up_1.conv_s.weight_v, expected["spade_generator"]["up_1.conv_s.weight_v"]
    )


def test_bundle_keeps_other_networks(tmp_path):
    """A later network (e.g. the motion generator) sits beside the renderer's in the same bundle format."""
    states = {
        "joyvasa_motion_generator": {"a.weight": torch.arange(6.0).view(2, 3)},
        "motion_extractor": {"detector.norm.bias": torch.ones(3)},
    }
    path = lpw.write_bundle(states, tmp_path / "b.safetensors")
    back = lpw.read_bundle(path)
    assert torch.equal(back["joyvasa_motion_generator"]["a.weight"], states["joyvasa_motion_generator"]["a.weight"])
    assert torch.equal(back["motion_extractor"]["detector.norm.bias"], torch.ones(3))
    with pytest.raises(FlashTalkError, match="holds no appearance_feature_extractor weights"):
        load_renderer(path)


@pytest.mark.slow
def test_checkpoint_of_another_network(weights_dir):
    root, _, _ = weights_dir
    wrong = lpw.read_checkpoint(root / lpw.NETWORKS["motion_extractor"][0], "appearance_feature_extractor")
    module = build_network("appearance_feature_extractor")
    with pytest.raises(FlashTalkError, match="this looks like a motion extractor") as err:
        lpw.check_state_dict(module, wrong, "appearance_feature_extractor", "appearance_feature_extractor.pth")
    assert "missing keys (" in str(err.value) and "unexpected keys (212)" in str(err.value)
    with pytest.raises(FlashTalkError, match="this looks like a stitching/retargeting checkpoint"):
        lpw.read_checkpoint(root / lpw.NETWORKS["stitching_retargeting_module"][0], "spade_generator")


@pytest.mark.slow
def test_missing_num_batches_tracked_is_tolerated(weights_dir):
    root, expected, _ = weights_dir
    state = lpw.read_checkpoint(root / lpw.NETWORKS["appearance_feature_extractor"][0], "appearance_feature_extractor")
    dropped = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    assert len(dropped) < len(state)
    module = build_network("appearance_feature_extractor")
    module.load_state_dict(lpw.check_state_dict(module, dropped, "appearance_feature_extractor", "F"), strict=True)
    for k, v in module.state_dict().items():
        assert torch.equal(v, expected["appearance_feature_extractor"][k]), k


@pytest.mark.slow
def test_misshaped_key(weights_dir, tmp_path):
    root, _, _ = weights_dir
    obj = torch.load(root / lpw.NETWORKS["stitching_retargeting_module"][0], weights_only=True)
    obj["retarget_mouth"]["module.mlp.2.weight"] = torch.zeros(128, 127)
    path = tmp_path / "stitching_retargeting_module.pth"
    torch.save(obj, path)
    state = lpw.read_checkpoint(path, "stitching_retargeting_module")
    with pytest.raises(
        FlashTalkError,
        match=r"mis-shaped keys \(1\): retarget_mouth.mlp.2.weight: file \(128, 127\) "
        r"vs expected \(128, 128\)",
    ):
        lpw.check_state_dict(
            build_network("stitching_retargeting_module"), state, "stitching_retargeting_module", str(path)
        )


@pytest.mark.slow
def test_truncated_file(weights_dir, tmp_path):
    root, _, _ = weights_dir
    data = (root / lpw.NETWORKS["stitching_retargeting_module"][0]).read_bytes()
    path = tmp_path / "cut.pth"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(FlashTalkError, match=r"cut.pth: cannot read the checkpoint \(truncated or corrupt"):
        lpw.read_checkpoint(path, "stitching_retargeting_module")
    bundle = lpw.write_bundle({"motion_extractor": {"w": torch.ones(1000)}}, tmp_path / "b.safetensors")
    bundle.write_bytes(bundle.read_bytes()[:200])
    with pytest.raises(
        FlashTalkError,
        match=r"b.safetensors: cannot read the safetensors file \(truncated or corrupt\? expected a FlashTalk weights bundle",
    ):
        lpw.read_bundle(bundle)


class _Payload:
    def __reduce__(self):
        return (print, ("unpickled!",))


@pytest.mark.parametrize(
    "obj",
    [
        pytest.param({"w": torch.ones(2), "x": _Payload()}, id="custom-class"),
        # a stdlib function, not print: Ray (started by earlier tests in the same process) replaces builtins.print,
        # which pickle then refuses to save by name
        pytest.param({"w": torch.ones(2), "f": shutil.which}, id="function"),
    ],
)
def test_pickle_with_non_tensor_object_is_refused(tmp_path, obj, capsys):
    path = tmp_path / "evil.pth"
    torch.save(obj, path)
    with pytest.raises(FlashTalkError, match="refused to unpickle a non-tensor object"):
        lpw.read_checkpoint(path, "motion_extractor")
    assert "unpickled!" not in capsys.readouterr().out


def test_plain_values_in_state_dict_are_refused(tmp_path):
    path = tmp_path / "odd.pth"
    torch.save({"detector.norm.weight": torch.ones(3), "epoch": 7}, path)
    with pytest.raises(FlashTalkError, match=r"non-tensor entries: epoch \(int\)"):
        lpw.read_checkpoint(path, "motion_extractor")


def test_folder_and_bundle_errors(tmp_path):
    with pytest.raises(FlashTalkError, match="missing liveportrait/base_models/appearance_feature_extractor.pth"):
        lpw.read_folder(tmp_path)
    from safetensors.torch import save_file

    save_file({"x": torch.ones(2)}, str(tmp_path / "other.safetensors"), metadata={"format": "something-else"})
    with pytest.raises(FlashTalkError, match="not a FlashTalk weights bundle"):
        lpw.read_bundle(tmp_path / "other.safetensors")
    with pytest.raises(FlashTalkError, match="expected a LivePortrait weights folder or a .safetensors bundle"):
        load_renderer(tmp_path / "weights.bin")
