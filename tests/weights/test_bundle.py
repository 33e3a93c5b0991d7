"""Weight bundles and folders (`flashtalk.weights.bundle`): folder discovery and its errors, corrupt checkpoints and
bundles, the bundle's config fields checked with file and field (hostile headers from the fuzzing campaign),
non-finite weights refused, `flashtalk convert-weights`, and `Networks.to` setting the motion path's precision."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch

from flashtalk.cli import main
from flashtalk.errors import FlashTalkError
from flashtalk.runtime.engine import Engine
from flashtalk.weights import bundle as fb
from flashtalk.weights.bundle import discover, load_folder, seeded_networks
from flashtalk.weights.liveportrait import NETWORKS


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("bundle") / "tiny.safetensors"
    return fb.write_bundle(fb.seeded_networks("tiny"), path).read_bytes()


def _rewrite(data: bytes, edit) -> bytes:
    n = struct.unpack("<Q", data[:8])[0]
    header, body = json.loads(data[8 : 8 + n]), data[8 + n :]
    edit(header)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + body


def _with_config(net: str, **changes):
    def edit(header):
        configs = json.loads(header["__metadata__"]["flashtalk_configs"])
        configs[net].update(changes)
        header["__metadata__"]["flashtalk_configs"] = json.dumps(configs)

    return edit


@pytest.mark.parametrize(
    "net, changes, match",
    [
        ("motion_generator", {"n_motions": float("inf")}, "'n_motions' = inf must be finite"),
        ("motion_generator", {"fps": 0}, r"'fps' = 0 is out of range: allowed \[1, 240\]"),
        ("motion_generator", {"n_heads": 0}, "'n_heads' = 0 is out of range"),
        ("motion_generator", {"feature_dim": -64}, "'feature_dim' = -64 is out of range"),
        ("audio_encoder", {"hidden_size": "wide"}, "'hidden_size' = 'wide' must be a number"),
        ("audio_encoder", {"conv_stride": [5, 0, 2]}, r"'conv_stride\[1\]' = 0 is out of range"),
        (
            "audio_encoder",
            {
                "hidden_size": 8192,
                "intermediate_size": 65536,
                "num_hidden_layers": 128,
                "num_attention_heads": 8,
                "num_conv_pos_embedding_groups": 8,
            },
            "MiB file can hold",
        ),
        ("motion_generator", {"bogus": 1}, "unknown MotionGeneratorConfig field"),
    ],
)
def test_bundle_config_fields_are_checked_with_file_and_field(tiny_bundle, tmp_path, net, changes, match):
    path = tmp_path / "b.safetensors"
    path.write_bytes(_rewrite(tiny_bundle, _with_config(net, **changes)))
    with pytest.raises(FlashTalkError, match=match) as info:
        fb.load_bundle(path)
    assert str(path) in str(info.value) and f"flashtalk_configs].{net}" in str(info.value)


def test_deeply_nested_bundle_config_is_one_error(tiny_bundle, tmp_path):
    def edit(header):
        header["__metadata__"]["flashtalk_configs"] = "[" * 50_000 + "]" * 50_000

    path = tmp_path / "b.safetensors"
    path.write_bytes(_rewrite(tiny_bundle, edit))
    with pytest.raises(FlashTalkError, match="nested too deeply"):
        fb.load_bundle(path)


def test_the_unmutated_tiny_bundle_loads(tiny_bundle, tmp_path):
    path = tmp_path / "b.safetensors"
    path.write_bytes(tiny_bundle)
    assert fb.load_bundle(path).preset == "tiny"


def test_convert_checks_the_output_before_loading(tmp_path, capsys):
    (tmp_path / "dir.safetensors").mkdir()
    for out, match in (
        (tmp_path / "dir.safetensors", "is a folder"),
        (tmp_path / "x.bin", "must end in"),
        (tmp_path / "no" / "x.safetensors", "does not exist"),
    ):
        rc = main(["convert-weights", str(tmp_path / "no-such-weights"), "-o", str(out)])
        err = capsys.readouterr().err
        assert rc == 2 and match in err, err
    existing = tmp_path / "mine.safetensors"
    existing.write_bytes(b"user data")
    rc = main(["convert-weights", str(tmp_path / "no-such-weights"), "-o", str(existing)])
    assert rc == 2 and "already exists" in capsys.readouterr().err and existing.read_bytes() == b"user data"


def test_convert_never_touches_a_users_partial_and_cleans_up(tmp_path, monkeypatch, capsys):
    out = tmp_path / "out.safetensors"
    users = tmp_path / "out.safetensors.partial"
    users.write_bytes(b"the user's own file")
    monkeypatch.setattr(fb, "load_folder", lambda folder: fb.seeded_networks("tiny"))

    import safetensors.torch

    def failing(tensors, path, metadata=None):  # the toolkit's writer fails halfway through its temporary
        Path(path).write_bytes(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", failing)
    rc = main(["convert-weights", str(tmp_path), "-o", str(out)])
    assert rc == 2 and "No space left" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.safetensors.partial"]
    monkeypatch.undo()
    monkeypatch.setattr(fb, "load_folder", lambda folder: fb.seeded_networks("tiny"))
    assert main(["convert-weights", str(tmp_path), "-o", str(out)]) == 0
    assert users.read_bytes() == b"the user's own file" and fb.load_bundle(out).preset == "tiny"
    assert out.stat().st_mode & 0o777 == users.stat().st_mode & 0o777  # the umask's mode, not 0600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.safetensors", "out.safetensors.partial"]


def test_non_finite_weights_are_refused(tiny_bundle, tmp_path):
    n = struct.unpack("<Q", tiny_bundle[:8])[0]
    header = json.loads(tiny_bundle[8 : 8 + n])
    name = next(k for k, v in header.items() if k.startswith("spade_generator.") and v.get("dtype") == "F32")
    lo, hi = header[name]["data_offsets"]
    body = bytearray(tiny_bundle[8 + n :])
    body[lo:hi] = b"\x00\x00\xc0\x7f" * ((hi - lo) // 4)
    path = tmp_path / "nan.safetensors"
    path.write_bytes(tiny_bundle[: 8 + n] + bytes(body))
    with pytest.raises(FlashTalkError, match=r"\[spade_generator\]: non-finite weights in .*NaN"):
        fb.load_bundle(path)


def _published_layout(root, skip=()):
    paths = [rel for rel, _ in NETWORKS.values()] + [
        "JoyVASA/motion_generator/motion_generator_hubert_chinese.pt",
        "JoyVASA/motion_template/motion_template.pkl",
    ]
    for rel in paths:
        if rel not in skip:
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(b"not a checkpoint")
    return paths


def test_folder_discovery(tmp_path):
    paths = _published_layout(tmp_path)
    found = discover(tmp_path)
    assert found["warping_module"] == tmp_path / NETWORKS["warping_module"][0]
    assert found["motion_generator"] == tmp_path / paths[5]
    assert found["motion_template"] == tmp_path / paths[6]
    assert "hubert" not in found


@pytest.mark.parametrize("missing", [0, 4, 5, 6])
def test_folder_missing_file_is_named(tmp_path, missing):
    paths = _published_layout(tmp_path, skip=())
    (tmp_path / paths[missing]).unlink()
    name = (
        paths[missing].split("/")[-1] if missing < 5 else ["motion_generator/*.pt", "motion_template.pkl"][missing - 5]
    )
    with pytest.raises(FlashTalkError, match="missing") as info:
        discover(tmp_path)
    assert name in str(info.value)
    with pytest.raises(FlashTalkError, match="incomplete"):
        Engine.from_weights(tmp_path, device="cpu")


def test_corrupt_checkpoint(tmp_path):
    _published_layout(tmp_path)
    with pytest.raises(FlashTalkError, match=r"appearance_feature_extractor\.pth: "):
        load_folder(tmp_path)


def test_corrupt_bundle(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(FlashTalkError, match="bad.safetensors"):
        Engine.from_weights(bad, device="cpu")


def test_networks_to_sets_the_motion_path_precision():
    nets = seeded_networks("tiny")
    assert nets.to("cpu").motion_precision == "fp32"  # the CPU default
    nets.to("cpu", "bf16")
    assert nets.motion_precision == "bf16"
    assert nets.motion.denoising_net.feature_proj.weight.dtype == torch.bfloat16
    assert nets.audio.encoder.layers[0].attention.q_proj.weight.dtype == torch.bfloat16
    assert nets.motion.denoising_net.transformer.layers[0].norm1.weight.dtype == torch.float32
    assert nets.audio.encoder.layers[0].layer_norm.weight.dtype == torch.float32
    # the sampler's side stays fp32: schedule, start tokens, audio projection
    assert nets.motion.diffusion_sched.alpha_bars.dtype == torch.float32
    assert nets.motion.start_motion_feat.dtype == nets.motion.audio_feature_map.weight.dtype == torch.float32
    with pytest.raises(FlashTalkError, match="precision must be one of fp32, bf16, fp16, got 'half'"):
        nets.to("cpu", "half")
