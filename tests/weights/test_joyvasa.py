"""JoyVASA loaders: the checkpoint (torch.save dict with an argparse.Namespace, loaded weights_only, its args checked),
the state-dict checks, and the motion-template pickle (numpy arrays only; anything else refused, expansion refused
before allocating)."""

from __future__ import annotations

import argparse
import os
import pathlib
import pickle
import struct

import numpy as np
import pytest
import torch

from flashtalk.errors import FlashTalkError
from flashtalk.models.joyvasa.denoiser import MotionGenerator, MotionGeneratorConfig
from flashtalk.weights.joyvasa import (
    load_checkpoint,
    load_motion_generator,
    load_motion_state,
    load_motion_template,
    load_pickled_arrays,
)
from flashtalk.weights.presets import Preset
from tests.utils import assert_close


def _tiny_state(cfg: MotionGeneratorConfig) -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    model = MotionGenerator(cfg)
    state = {k: (v + 0.05 * torch.randn_like(v)) if v.is_floating_point() else v for k, v in model.state_dict().items()}
    state["denoising_net.TE.pe"] = torch.full((1, cfg.te_rows, cfg.feature_dim), 7.0)  # dropped and recomputed on load
    state["audio_encoder.feature_projection.projection.weight"] = torch.randn(4, 3)
    state["audio_encoder.masked_spec_embed"] = torch.randn(4)
    return state


def _write_checkpoint(path, cfg: MotionGeneratorConfig, state=None, **extra_args) -> dict[str, torch.Tensor]:
    state = state if state is not None else _tiny_state(cfg)
    args = argparse.Namespace(
        motion_feat_dim=cfg.motion_feat_dim,
        n_motions=cfg.n_motions,
        n_prev_motions=cfg.n_prev_motions,
        feature_dim=cfg.feature_dim,
        n_diff_steps=cfg.n_diff_steps,
        fps=25,
        pad_mode="zero",
        n_layers=6,
        audio_model="hubert_zh",
        exp_dir=pathlib.PosixPath("/train/exp"),
        **extra_args,
    )
    torch.save({"args": args, "model": state, "iter": 20000}, path)
    return state


def test_checkpoint_round_trip(tmp_path):
    """A tiny model's checkpoint in the released layout loads with weights_only, reads its config from args
    (the hard-coded layer count, not args.n_layers), splits HuBERT keys off and reproduces the weights."""
    cfg = MotionGeneratorConfig.tiny()
    state = _write_checkpoint(tmp_path / "mg.pt", cfg)
    ckpt = load_checkpoint(tmp_path / "mg.pt", base_config=MotionGeneratorConfig.tiny())
    assert ckpt.iteration == 20000 and ckpt.args["audio_model"] == "hubert_zh"
    assert set(ckpt.audio_state) == {"feature_projection.projection.weight", "masked_spec_embed"}
    assert ckpt.config.n_motions == cfg.n_motions and ckpt.config.n_prev_motions == cfg.n_prev_motions
    model = load_motion_generator(ckpt, pe_mode="fixed")
    assert model.denoising_net.pe_mode == "fixed" and not model.training
    assert len(model.denoising_net.transformer.layers) == cfg.n_layers == 2  # args.n_layers=6 is ignored
    sd = model.state_dict()
    for k, v in sd.items():
        assert torch.equal(v, state[k]), k
    # TE.pe is recomputed (sinusoid row 0 = [0, 1, 0, 1, ...]), not the file's poisoned 7.0
    te = model.denoising_net.TE.pe
    assert te[0, 0, 0].item() == 0.0 and te[0, 0, 1].item() == 1.0


def test_checkpoint_config_mismatch_lists_keys(tmp_path):
    cfg = MotionGeneratorConfig.tiny()
    state = _tiny_state(cfg)
    del state["denoising_net.motion_dec.2.bias"]
    state["denoising_net.extra.weight"] = torch.zeros(2)
    state["denoising_net.feature_proj.weight"] = torch.zeros(cfg.feature_dim, cfg.motion_feat_dim + 1)
    _write_checkpoint(tmp_path / "bad.pt", cfg, state)
    with pytest.raises(FlashTalkError) as exc:
        load_motion_generator(load_checkpoint(tmp_path / "bad.pt", base_config=cfg))
    msg = str(exc.value)
    assert "missing keys (1): denoising_net.motion_dec.2.bias" in msg
    assert "unexpected keys (1): denoising_net.extra.weight" in msg
    assert "mis-shaped keys (1): denoising_net.feature_proj.weight: file (32, 11) vs expected (32, 10)" in msg
    assert "bad.pt does not fit the motion generator" in msg


def test_checkpoint_bad_files(tmp_path):
    with pytest.raises(FlashTalkError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(FlashTalkError, match="junk.pt"):
        load_checkpoint(tmp_path / "junk.pt")
    torch.save({"model": {}}, tmp_path / "noargs.pt")
    with pytest.raises(FlashTalkError, match="'args'"):
        load_checkpoint(tmp_path / "noargs.pt")


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_checkpoint_refuses_arbitrary_objects(tmp_path):
    cfg = MotionGeneratorConfig.tiny()
    _write_checkpoint(tmp_path / "evil.pt", cfg, hook=_Evil())
    with pytest.raises(
        FlashTalkError,
        match=r"evil.pt: refused to unpickle a non-tensor object.*argparse.Namespace.*(posix|os|nt)\.system",
    ):
        load_checkpoint(tmp_path / "evil.pt")


def test_load_motion_state_computed_buffers():
    """Golden weight files carry no computed buffers: allowed only when asked, and then the model keeps its own."""
    cfg = MotionGeneratorConfig.tiny()
    model = MotionGenerator(cfg, dtype=torch.float64)
    before = model.diffusion_sched.alpha_bars.clone()
    learnable = {
        k: torch.randn_like(v)
        for k, v in model.state_dict().items()
        if not k.startswith(("diffusion_sched.", "denoising_net.PE.", "denoising_net.alignment_mask"))
    }
    with pytest.raises(FlashTalkError, match="missing"):
        load_motion_state(model, learnable)
    load_motion_state(model, learnable, allow_missing_computed=True)
    assert torch.equal(model.diffusion_sched.alpha_bars, before)
    assert_close(model.denoising_net.feature_proj.weight, learnable["denoising_net.feature_proj.weight"], 0)


def _template() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    d = {"mean_exp": rng.normal(size=63).astype(np.float32), "std_exp": rng.uniform(0.01, 0.1, 63).astype(np.float32)}
    for name, n in (("scale", 1), ("t", 3), ("pitch", 1), ("yaw", 1), ("roll", 1), ("R", 9)):
        d[f"min_{name}"] = -rng.uniform(1, 2, n).astype(np.float32)
        d[f"max_{name}"] = rng.uniform(1, 2, n).astype(np.float32)
        d[f"abs_max_{name}"] = np.float32(3.0)  # a numpy scalar, as in the real file
    return d


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_motion_template_loads_numpy_pickles(tmp_path, protocol):
    d = _template()
    (tmp_path / "t.pkl").write_bytes(pickle.dumps(d, protocol=protocol))
    back = load_pickled_arrays(tmp_path / "t.pkl")
    assert np.array_equal(back["mean_exp"], d["mean_exp"]) and back["abs_max_t"] == np.float32(3.0)
    tpl = load_motion_template(tmp_path / "t.pkl")
    assert torch.equal(tpl.std_exp, torch.from_numpy(d["std_exp"])) and tpl.max_t.shape == (3,)


def test_motion_template_refuses_other_globals(tmp_path):
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps({"mean_exp": _Evil()}))
    with pytest.raises(FlashTalkError, match=r"refused to unpickle global (posix|os|nt)\.system"):
        load_pickled_arrays(tmp_path / "evil.pkl")
    (tmp_path / "obj.pkl").write_bytes(pickle.dumps({"x": argparse.Namespace(a=1)}))
    with pytest.raises(FlashTalkError, match="argparse.Namespace"):
        load_pickled_arrays(tmp_path / "obj.pkl")
    (tmp_path / "cut.pkl").write_bytes(pickle.dumps(_template())[:100])
    with pytest.raises(FlashTalkError, match="not a valid pickle"):
        load_pickled_arrays(tmp_path / "cut.pkl")
    (tmp_path / "list.pkl").write_bytes(pickle.dumps([1, 2]))
    with pytest.raises(FlashTalkError, match="dict"):
        load_pickled_arrays(tmp_path / "list.pkl")
    d = _template()
    del d["max_yaw"]
    (tmp_path / "partial.pkl").write_bytes(pickle.dumps(d))
    with pytest.raises(FlashTalkError, match="max_yaw"):
        load_motion_template(tmp_path / "partial.pkl")


def test_joyvasa_args_are_checked(tmp_path):
    base = Preset.from_name("tiny").motion
    for value, match in (
        (float("inf"), "'n_motions' = inf must be finite"),
        (0, "'n_motions' = 0 is out of range"),
        ("many", "'n_motions' = 'many' must be a number"),
        (10**40, "out of range"),
    ):
        path = tmp_path / "ckpt.pt"
        torch.save({"args": argparse.Namespace(n_motions=value), "model": {}}, path)
        with pytest.raises(FlashTalkError, match=match) as info:
            load_checkpoint(path, base_config=base)
        assert "ckpt.pt ['args']" in str(info.value)


@pytest.mark.parametrize(
    "data, match",
    [
        (
            b"\x80\x02cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n\x8a\x05"
            + (10**11).to_bytes(5, "little")
            + b"\x85cnumpy\ndtype\nX\x02\x00\x00\x00f8\x89\x88\x87R\x87R.",
            "800,000,000,000-byte array",
        ),
        (b"\x80\x02cnumpy\ndtype\nX\x0b\x00\x00\x00V1000000000\x89\x88\x87R.", "1,000,000,000-byte array"),
        (b"\x80\x04\x8e" + struct.pack("<Q", 1 << 40) + b"abc", "not a valid pickle"),
        (b"\x80\x04\x95" + struct.pack("<Q", 1 << 40) + b"}.", "not a valid pickle"),
    ],
)
def test_numpy_only_unpickler_refuses_expansion_before_allocating(tmp_path, data, match):
    (tmp_path / "t.pkl").write_bytes(data)
    with pytest.raises(FlashTalkError, match=match):
        load_pickled_arrays(tmp_path / "t.pkl")


def test_numpy_only_unpickler_still_reads_arrays(tmp_path):
    d = {"a": np.arange(1000, dtype=np.float32), "b": np.float32(2.0)}
    (tmp_path / "t.pkl").write_bytes(pickle.dumps(d, protocol=2))
    back = load_pickled_arrays(tmp_path / "t.pkl")
    assert np.array_equal(back["a"], d["a"]) and back["b"] == 2.0
