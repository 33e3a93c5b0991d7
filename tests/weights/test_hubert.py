"""HuBERT / wav2vec2 weights (`flashtalk.weights.hubert`): Hugging Face folders (safetensors, sharded,
pytorch_model.bin with old weight-norm names) round trip, their errors (an index pointing outside the folder,
non-finite weights), and JoyVASA's audio_encoder.* prefix."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from flashtalk.errors import FlashTalkError
from flashtalk.models.hubert import AudioEncoder, HubertConfig
from flashtalk.weights import bundle as fb
from flashtalk.weights.hubert import load_audio_encoder_state, load_hf_audio_encoder, load_joyvasa_audio_encoder
from tests.models.helpers import hf_config_dict, hf_state, tiny_encoder


def test_hf_index_without_weight_map_and_outside_names(tmp_path):
    from flashtalk.weights.hubert import _read_hf_weights

    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}}))
    with pytest.raises(FlashTalkError, match="no 'weight_map'"):
        _read_hf_weights(tmp_path)
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "../../etc/passwd"}}))
    with pytest.raises(FlashTalkError, match="outside its folder"):
        _read_hf_weights(tmp_path)


def test_non_finite_weights_in_a_hugging_face_folder_are_refused(tmp_path):
    from safetensors.torch import save_file

    from flashtalk.weights.hubert import load_hf_audio_encoder

    audio = fb.seeded_networks("tiny").audio
    state = {k: v.clone().contiguous() for k, v in audio.state_dict().items()}
    state["encoder.layers.1.feed_forward.output_dense.weight"][0, 0] = float("inf")
    save_file(state, str(tmp_path / "model.safetensors"))
    c = audio.cfg
    (tmp_path / "config.json").write_text(
        json.dumps(
            {
                "model_type": "hubert",
                "hidden_size": c.hidden_size,
                "num_hidden_layers": c.num_hidden_layers,
                "num_attention_heads": c.num_attention_heads,
                "intermediate_size": c.intermediate_size,
                "conv_dim": list(c.conv_dim),
                "conv_kernel": list(c.conv_kernel),
                "conv_stride": list(c.conv_stride),
                "num_conv_pos_embeddings": c.num_conv_pos_embeddings,
                "num_conv_pos_embedding_groups": c.num_conv_pos_embedding_groups,
            }
        )
    )
    with pytest.raises(FlashTalkError, match=r"non-finite weights in encoder\.layers\.1\.feed_forward.*1 inf"):
        load_hf_audio_encoder(tmp_path)


@pytest.mark.parametrize("variant", ["hubert-ctc-safetensors", "wav2vec2-stable-bin"])
def test_hf_folder_round_trip(tmp_path, variant):
    from safetensors.torch import save_file

    if variant.startswith("hubert"):
        cfg = HubertConfig.tiny()
        enc = tiny_encoder(cfg, torch.float32)
        state = hf_state(enc, prefix="hubert.")
        state["lm_head.weight"] = torch.randn(32, cfg.hidden_size)  # CTC head: dropped by the loader
        state["hubert.masked_spec_embed"] = torch.randn(cfg.hidden_size)  # training-only: ignored
        save_file(state, str(tmp_path / "model.safetensors"))
    else:
        cfg = dataclasses.replace(HubertConfig.tiny(), model_type="wav2vec2", feat_extract_norm="layer",
                                  do_stable_layer_norm=True, conv_bias=True)  # fmt: skip
        enc = tiny_encoder(cfg, torch.float32)
        torch.save(hf_state(enc, old_weight_norm=True), tmp_path / "pytorch_model.bin")
    (tmp_path / "config.json").write_text(json.dumps(hf_config_dict(cfg)))
    loaded = load_hf_audio_encoder(tmp_path)
    assert loaded.cfg == cfg
    audio = torch.randn(2, 700)
    with torch.no_grad():
        torch.testing.assert_close(loaded(audio), enc(audio), rtol=0, atol=0)


def test_hf_folder_errors(tmp_path):
    from safetensors.torch import save_file

    cfg = HubertConfig.tiny()
    with pytest.raises(FlashTalkError, match="does not exist"):
        load_hf_audio_encoder(tmp_path / "nope")
    with pytest.raises(FlashTalkError, match="config.json not found"):
        load_hf_audio_encoder(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(hf_config_dict(cfg)))
    with pytest.raises(FlashTalkError, match="no model.safetensors"):
        load_hf_audio_encoder(tmp_path)
    state = hf_state(tiny_encoder(cfg, torch.float32))
    del state["encoder.layers.1.attention.k_proj.bias"]
    state["encoder.layers.0.feed_forward.output_dense.weight"] = torch.zeros(32, 65)
    state["encoder.extra_thing"] = torch.zeros(3)
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(FlashTalkError) as e:
        load_hf_audio_encoder(tmp_path)
    msg = str(e.value)
    assert f"{tmp_path} does not fit the audio encoder" in msg
    assert "missing keys (1): encoder.layers.1.attention.k_proj.bias" in msg
    assert "unexpected keys (1): encoder.extra_thing" in msg
    assert (
        "mis-shaped keys (1): encoder.layers.0.feed_forward.output_dense.weight: file (32, 65) vs expected (32, 64)"
        in msg
    )
    (tmp_path / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json")
    with pytest.raises(
        FlashTalkError, match=r"model.safetensors: cannot read the safetensors file \(truncated or corrupt"
    ):
        load_hf_audio_encoder(tmp_path)


def test_joyvasa_loader_prefix_and_errors():
    enc = tiny_encoder(dtype=torch.float32)
    ckpt = {**hf_state(enc, prefix="audio_encoder."), "denoising_net.x": torch.zeros(2)}
    loaded = load_joyvasa_audio_encoder(ckpt, cfg=HubertConfig.tiny())
    audio = torch.randn(1, 400)
    with torch.no_grad():
        torch.testing.assert_close(loaded(audio), enc(audio), rtol=0, atol=0)
    stripped = load_joyvasa_audio_encoder(hf_state(enc), cfg=HubertConfig.tiny(), prefix="")
    assert torch.equal(
        stripped.encoder.layers[0].attention.q_proj.weight, enc.encoder.layers[0].attention.q_proj.weight
    )
    with pytest.raises(FlashTalkError, match="no 'audio_encoder.\\*' keys"):
        load_joyvasa_audio_encoder({"denoising_net.x": torch.zeros(2)}, cfg=HubertConfig.tiny())
    with pytest.raises(FlashTalkError, match="non-float dtype"):
        bad = hf_state(enc)
        bad["encoder.layer_norm.bias"] = torch.zeros(32, dtype=torch.int64)
        load_audio_encoder_state(AudioEncoder(HubertConfig.tiny()), bad)


def test_hf_sharded_safetensors(tmp_path):
    from safetensors.torch import save_file

    cfg = HubertConfig.tiny()
    enc = tiny_encoder(cfg, torch.float32)
    state = hf_state(enc, prefix="wav2vec2.")
    keys = sorted(state)
    shards = {
        "model-00001-of-00002.safetensors": keys[: len(keys) // 2],
        "model-00002-of-00002.safetensors": keys[len(keys) // 2 :],
    }
    for name, ks in shards.items():
        save_file({k: state[k] for k in ks}, str(tmp_path / name))
    index = {"metadata": {}, "weight_map": {k: name for name, ks in shards.items() for k in ks}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    (tmp_path / "config.json").write_text(json.dumps({**hf_config_dict(cfg), "model_type": "wav2vec2"}))
    loaded = load_hf_audio_encoder(tmp_path, dtype=torch.float64)
    assert loaded.cfg.model_type == "wav2vec2"
    audio = torch.randn(1, 500, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(audio), enc.double()(audio), rtol=0, atol=1e-12)
