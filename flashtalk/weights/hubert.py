"""Load HuBERT / wav2vec2 weights into `AudioEncoder`.

Two sources:
* the `audio_encoder.*` entries of the JoyVASA motion-generator checkpoint (`load_joyvasa_audio_encoder`:
  pass the checkpoint's whole state dict; only keys under `prefix`, "audio_encoder." by default, are read and
  the prefix is stripped here — pass prefix="" for a dict that is already stripped);
* a Hugging Face folder of a `HubertModel` / `Wav2Vec2Model` or of a *ForCTC / *ForSequenceClassification
  model (`load_hf_audio_encoder`): config.json + model.safetensors (or a sharded index) or pytorch_model.bin
  (read with weights_only=True). Head weights outside the `hubert.` / `wav2vec2.` base model are dropped.

Key names: ours are the current Hugging Face names. Old-style weight-norm names
(`encoder.pos_conv_embed.conv.weight_g` / `weight_v`) are renamed to `...parametrizations.weight.original0` /
`original1`; `masked_spec_embed` (SpecAugment, training only) is ignored. Every other mismatch is the
checkpoint toolkit's one report of missing, unexpected and mis-shaped keys.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path

import torch

from flashtalk.errors import FlashTalkError
from flashtalk.models.hubert import AudioEncoder, HubertConfig
from flashtalk.weights.checkpoint import check_keys, safe_load, tensor_dict
from flashtalk.weights.validate import AUDIO_RULES, build_config, check_fields, check_finite, check_size

log = logging.getLogger(__name__)

_RENAMES = {
    "encoder.pos_conv_embed.conv.weight_g": "encoder.pos_conv_embed.conv.parametrizations.weight.original0",
    "encoder.pos_conv_embed.conv.weight_v": "encoder.pos_conv_embed.conv.parametrizations.weight.original1",
}
_IGNORED = ("masked_spec_embed",)  # SpecAugment embedding: used only in training
_BASE_PREFIXES = ("hubert.", "wav2vec2.")  # base model inside *ForCTC / *ForPreTraining / ... checkpoints


def load_audio_encoder_state(
    model: AudioEncoder, state: Mapping[str, torch.Tensor], source: str = "state dict"
) -> None:
    """Copy `state` (our / current HF key names, or old weight_g/_v names) into `model`, casting to the
    model's dtype. Raises the toolkit's mismatch report (`check_keys`) or names a non-float weight."""
    renamed = {_RENAMES.get(k, k): v for k, v in state.items()}
    own = model.state_dict()
    cfg = model.cfg
    renamed = check_keys(
        own,
        renamed,
        where=source,
        ignore=_IGNORED,
        fits=f"audio encoder ({cfg.model_type}, {cfg.num_hidden_layers} layers, width {cfg.hidden_size})",
    )
    for k, v in renamed.items():
        if not v.is_floating_point():
            raise FlashTalkError(f"audio encoder weight {k} from {source} has non-float dtype {v.dtype}")
    with torch.no_grad():
        model.load_state_dict({k: v.to(own[k].dtype) for k, v in renamed.items()}, strict=True)


def load_joyvasa_audio_encoder(
    state: Mapping[str, torch.Tensor],
    cfg: HubertConfig | None = None,
    prefix: str = "audio_encoder.",
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> AudioEncoder:
    """AudioEncoder from a JoyVASA checkpoint's state dict ("model" entry). Keys outside `prefix` (the motion
    model's) are skipped; the config defaults to HuBERT-base (TencentGameMate/chinese-hubert-base)."""
    sub = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    if not sub:
        raise FlashTalkError(
            f"no '{prefix}*' keys in the checkpoint state dict (has e.g. {', '.join(sorted(state)[:4])})"
        )
    model = AudioEncoder(cfg or HubertConfig()).to(dtype=dtype)
    load_audio_encoder_state(model, sub, source=f"the '{prefix}*' checkpoint entries")
    return model.to(device).eval()


def _index_files(index: Path) -> list[Path]:
    """The shard files a model.safetensors.index.json names (plain file names inside its folder)."""
    try:
        data = json.loads(index.read_text())
    except (OSError, ValueError, RecursionError) as exc:
        raise FlashTalkError(f"{index}: not a readable JSON index: {str(exc)[:80]}") from None
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise FlashTalkError(f"{index}: no 'weight_map' object (tensor name -> shard file) in the index")
    names = set(weight_map.values())
    bad = sorted(str(n)[:60] for n in names if not isinstance(n, str) or Path(n).name != n or n in ("", ".", ".."))
    if bad:
        raise FlashTalkError(
            f"{index}: weight_map names shard files outside its folder or not file names: {', '.join(bad[:3])}"
        )
    missing = sorted(n for n in names if not (index.parent / n).is_file())
    if missing:
        raise FlashTalkError(f"{index}: shard file(s) {', '.join(missing[:3])} not found")
    return sorted(index.parent / n for n in names)


def _read_hf_weights(folder: Path) -> dict[str, torch.Tensor]:
    st, index, pt = folder / "model.safetensors", folder / "model.safetensors.index.json", folder / "pytorch_model.bin"
    if st.is_file() or index.is_file():
        state: dict[str, torch.Tensor] = {}
        for f in [st] if st.is_file() else _index_files(index):
            state.update(safe_load(f, what="Hugging Face HuBERT / wav2vec2 weights file"))
        return state
    if pt.is_file():
        return tensor_dict(safe_load(pt, what="Hugging Face HuBERT / wav2vec2 state dict"), where=str(pt))
    raise FlashTalkError(f"{folder} has no model.safetensors, model.safetensors.index.json or pytorch_model.bin")


def load_hf_audio_encoder(
    folder: str | Path, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
) -> AudioEncoder:
    """AudioEncoder from a Hugging Face HuBERT / wav2vec2 folder (config.json + weights)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FlashTalkError(f"Hugging Face model folder {folder} does not exist")
    cfg_path = folder / "config.json"
    try:
        raw = json.loads(cfg_path.read_text())
    except FileNotFoundError:
        raise FlashTalkError(f"{cfg_path} not found (a Hugging Face model folder needs config.json)") from None
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, bad UTF-8, nesting too deep
        raise FlashTalkError(f"{cfg_path} is not valid JSON (or nested too deeply): {str(exc)[:80]}") from None
    if not isinstance(raw, dict):
        raise FlashTalkError(f"{cfg_path}: expected a JSON object, got {type(raw).__name__}")
    names = {f.name for f in fields(HubertConfig)} - {"extra"}
    check_fields(HubertConfig, {k: v for k, v in raw.items() if k in names}, AUDIO_RULES, str(cfg_path), partial=True)
    cfg = build_config(HubertConfig.from_hf_config, str(cfg_path), raw)
    check_size(
        lambda: AudioEncoder(cfg),
        sum(f.stat().st_size for f in folder.iterdir() if f.is_file()),
        str(cfg_path),
        config=cfg,
        known=[HubertConfig()],
    )
    state = _read_hf_weights(folder)
    check_finite(state, str(folder))
    base = next((p for p in _BASE_PREFIXES if any(k.startswith(p) for k in state)), None)
    if base is not None:
        dropped = sorted(k for k in state if not k.startswith(base))
        if dropped:
            log.info(
                "%s: ignoring %d head weights outside '%s': %s", folder, len(dropped), base, ", ".join(dropped[:8])
            )
        state = {k[len(base) :]: v for k, v in state.items() if k.startswith(base)}
    model = AudioEncoder(cfg).to(dtype=dtype)
    load_audio_encoder_state(model, state, source=str(folder))
    return model.to(device).eval()
