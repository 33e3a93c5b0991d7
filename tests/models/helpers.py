"""Shared by the audio-encoder tests of models/ and weights/: a tiny encoder with non-trivial norms and biases, and its
Hugging Face config and state dict."""

from __future__ import annotations

import dataclasses

import torch

from flashtalk.models.hubert import AudioEncoder, HubertConfig


def tiny_encoder(cfg: HubertConfig | None = None, dtype=torch.float64) -> AudioEncoder:
    torch.manual_seed(3)
    enc = AudioEncoder(cfg or HubertConfig.tiny()).to(dtype).eval()
    with torch.no_grad():  # make norms and biases non-trivial
        for _, p in enc.named_parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
    return enc


def hf_config_dict(cfg: HubertConfig) -> dict:
    d = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.name != "extra"}
    d.update({k: list(d[k]) for k in ("conv_dim", "conv_kernel", "conv_stride")})
    d.update(
        num_feat_extract_layers=len(cfg.conv_dim), vocab_size=32, mask_time_prob=0.05, architectures=["HubertForCTC"]
    )
    return d


def hf_state(enc: AudioEncoder, prefix: str = "", old_weight_norm: bool = False) -> dict[str, torch.Tensor]:
    """The encoder's weights under Hugging Face names (optionally the old weight_g / weight_v names)."""
    out = {}
    for k, v in enc.state_dict().items():
        if old_weight_norm:
            k = k.replace("parametrizations.weight.original0", "weight_g").replace(
                "parametrizations.weight.original1", "weight_v"
            )
        out[prefix + k] = v.detach().float().clone().contiguous()
    return out
