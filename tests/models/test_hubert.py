"""HuBERT / wav2vec2 audio encoder (`flashtalk.models.hubert`): JoyVASA golden arrays, frontend, padding masks, config
errors, parity with transformers (the weight loaders: tests/weights/test_hubert.py)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from flashtalk.errors import FlashTalkError
from flashtalk.models.hubert import (
    AudioEncoder,
    HubertConfig,
    joyvasa_audio_features,
    joyvasa_pad_audio,
    resample_frames,
)
from flashtalk.weights.hubert import load_hf_audio_encoder, load_joyvasa_audio_encoder
from flashtalk.weights.seeded import joyvasa_weights
from tests.models.helpers import hf_config_dict, tiny_encoder
from tests.utils import assert_close

GOLDEN_ARRAYS = ("audio_padded", "cnn_features", "projected", "hubert_last_hidden", "hubert_resampled")


# ------------------------------------------------------------------------------------------- golden


@pytest.fixture(scope="module")
def jv_audio_weights():
    """Golden-rule weights of the manifest's audio_encoder.* entries (drawn once per module: ~10 s)."""
    from tests.conftest import golden_dir

    folder = golden_dir("joyvasa")
    manifest = json.loads((folder / "manifest.json").read_text())
    seed = json.loads((folder / "golden.json").read_text())["base_seed"]
    entries = [
        (e["key"], tuple(e["shape"]), e["category"])
        for e in manifest["entries"]
        if e["key"].startswith("audio_encoder.")
    ]
    return folder, manifest, joyvasa_weights(entries, seed)


def test_manifest_config_is_the_default(jv_audio_weights):
    _, manifest, _ = jv_audio_weights
    cfg = HubertConfig.from_hf_config(manifest["audio_encoder"]["hf_config"])
    assert cfg == HubertConfig()
    assert cfg.samples_per_frame == 320


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "fp64"])
def test_joyvasa_golden(jv_audio_weights, precision):
    folder, _, weights = jv_audio_weights
    dtype = torch.float64 if precision == "fp64" else torch.float32
    # the whole checkpoint dict is passed: the loader must pick the audio_encoder.* entries itself
    state = {**weights, "audio_feature_map.weight": torch.zeros(256, 768)}
    enc = load_joyvasa_audio_encoder(state, dtype=dtype)
    n_params = sum(p.numel() for p in enc.parameters())
    assert n_params == 94371712 - 768  # docs/specs/joyvasa.md §4.4, less the training-only masked_spec_embed
    ref = np.load(folder / "audio_encoder.npz")
    gates = {g["array"]: g[precision] for g in json.loads((folder / "tolerances.json").read_text())["gates"]
             if g["file"] == "audio_encoder.npz"}  # fmt: skip
    with torch.no_grad():
        out = joyvasa_audio_features(enc, torch.from_numpy(ref["audio"]).to(dtype), intermediates=True)
    out["projected"] = out["projected"][:, :4]  # the golden keeps the first 4 frames
    for name in GOLDEN_ARRAYS:
        expected = torch.from_numpy(ref[name]).double()
        ours = out[name]
        assert ours.dtype == dtype and torch.isfinite(ours).all(), name
        limit = gates[name]["atol"] + gates[name]["rtol"] * expected.abs().max().item()
        assert_close(ours, expected, atol=limit)


# ------------------------------------------------------------------------------------------- frontend


@pytest.mark.parametrize("n,side", [(64000, 40), (1000, 20), (1010, 15), (1070, -15), (1041, 0), (1038, 1)])
def test_joyvasa_pad_audio_closed_form(n, side):
    x = torch.randn(2, n, dtype=torch.float64)
    got = joyvasa_pad_audio(x)
    if side < 0:
        assert torch.equal(got, x)
        return
    r = side // 2
    a = x.numpy()
    expected = np.concatenate(
        [a[:, :r], a[:, 1 : r + 1][:, ::-1], a, a[:, n - 1 - r : n - 1][:, ::-1], a[:, n - r :]], axis=1
    )
    if side % 2:
        expected = np.pad(expected, ((0, 0), (1, 1)), mode="edge")
    assert got.shape == (2, n + 4 * r + 2 * (side % 2))
    np.testing.assert_array_equal(got.numpy(), expected)


def test_resample_frames_pairs_and_identity():
    h = torch.randn(2, 200, 5, dtype=torch.float64)
    torch.testing.assert_close(resample_frames(h, 100), 0.5 * (h[:, 0::2] + h[:, 1::2]), rtol=0, atol=1e-15)
    assert resample_frames(h, 200) is h


def test_joyvasa_features_tiny_shapes():
    """tiny config (20 samples per CNN frame): 1280 samples = 2 motion frames, padded to 1360 -> 67 CNN
    frames; the frontend keeps 4 * 2 of them, resamples them to 2 * 2 and returns 2 frames."""
    enc = AudioEncoder(HubertConfig.tiny()).eval()
    audio = torch.randn(1, 1280)
    with torch.no_grad():
        out = joyvasa_audio_features(enc, audio, intermediates=True)
    assert out["cnn_features"].shape == (1, 16, 4) and out["hubert_resampled"].shape == (1, 2, 32)
    assert torch.isfinite(out["hubert_resampled"]).all()


# ------------------------------------------------------------------------------------------- padding masks


@pytest.mark.parametrize("variant", ["base", "stable"])
def test_lengths_give_per_row_results(variant):
    cfg = HubertConfig.tiny() if variant == "base" else dataclasses.replace(
        HubertConfig.tiny(), feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True)  # fmt: skip
    enc = tiny_encoder(cfg)
    lengths = [1000, 613, 871]
    batch = torch.full((3, 1000), float("nan"), dtype=torch.float64)  # padding must never reach valid outputs
    rows = [torch.randn(1, n, dtype=torch.float64) for n in lengths]
    for i, r in enumerate(rows):
        batch[i, : r.shape[1]] = r[0]
    with torch.no_grad():
        out = enc(batch, lengths=torch.tensor(lengths))
        frames = enc.frame_lengths(torch.tensor(lengths)).tolist()
        assert out.shape == (3, frames[0], 32)
        for i, r in enumerate(rows):
            alone = enc(r)
            assert alone.shape[1] == frames[i]
            assert_close(out[i, : frames[i]], alone[0], atol=1e-12)
            assert torch.equal(out[i, frames[i] :], torch.zeros_like(out[i, frames[i] :]))


def test_forward_errors():
    enc = tiny_encoder()
    with pytest.raises(FlashTalkError, match=r"\[batch, samples\]"):
        enc(torch.randn(100))
    with pytest.raises(FlashTalkError, match="floating point"):
        enc(torch.ones(1, 100, dtype=torch.int16))
    with pytest.raises(FlashTalkError, match="too short"):
        enc(torch.randn(1, 20))
    with pytest.raises(FlashTalkError, match="lengths must have shape"):
        enc(torch.randn(2, 200), lengths=[200])
    with pytest.raises(FlashTalkError, match=r"must lie in \[30, 200\]"):
        enc(torch.randn(2, 200), lengths=[200, 250])


def test_config_errors():
    with pytest.raises(FlashTalkError, match="not divisible by 5 heads"):
        HubertConfig(num_attention_heads=5)
    with pytest.raises(FlashTalkError, match="lengths differ"):
        HubertConfig(conv_dim=(512,) * 6)
    with pytest.raises(FlashTalkError, match="conv_pos_batch_norm"):
        HubertConfig.from_hf_config({"model_type": "hubert", "conv_pos_batch_norm": True})
    with pytest.raises(FlashTalkError, match="'wavlm' is not a HuBERT"):
        HubertConfig.from_hf_config({"model_type": "wavlm"})
    with pytest.raises(FlashTalkError, match="hidden_act 'swish'"):
        HubertConfig.from_hf_config({"hidden_act": "swish"})


# ------------------------------------------------------------------------------------------- loaders


@pytest.mark.parametrize("arch", ["HubertModel", "HubertForCTC", "Wav2Vec2Model-stable"])
def test_matches_transformers(tmp_path, arch):
    """Random tiny Hugging Face models, saved with save_pretrained and read back by our loader."""
    transformers = pytest.importorskip("transformers", reason="transformers is an optional test-only dependency")
    cfg = HubertConfig.tiny()
    if arch.startswith("Wav2Vec2"):
        cfg = dataclasses.replace(
            cfg, model_type="wav2vec2", feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True
        )
    kwargs = {k: v for k, v in hf_config_dict(cfg).items() if k not in ("architectures", "model_type")}
    config_cls = transformers.Wav2Vec2Config if arch.startswith("Wav2Vec2") else transformers.HubertConfig
    torch.manual_seed(0)
    ref = getattr(transformers, arch.split("-")[0])(config_cls(**kwargs)).eval()
    ref.save_pretrained(tmp_path)
    ours = load_hf_audio_encoder(tmp_path)
    base = getattr(ref, "hubert", ref)
    audio = torch.randn(2, 900)
    with torch.no_grad():
        torch.testing.assert_close(ours(audio), base(audio).last_hidden_state, rtol=1e-5, atol=1e-5)
        if cfg.feat_extract_norm == "layer":  # HF honours attention masks for layer-norm models: compare rows
            lengths = torch.tensor([900, 611])
            mask = torch.arange(900)[None, :] < lengths[:, None]
            theirs = base(audio * mask, attention_mask=mask.long()).last_hidden_state
            mine = ours(audio, lengths=lengths)
            n = int(ours.frame_lengths(lengths[1]))
            torch.testing.assert_close(mine[1, :n], theirs[1, :n], rtol=1e-5, atol=1e-5)
