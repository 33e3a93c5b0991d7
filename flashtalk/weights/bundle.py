"""All networks of the full FlashTalk model: renderer (LivePortrait), audio encoder (HuBERT) and motion
generator + motion template (JoyVASA), from a published weights folder, one safetensors bundle, or the
golden seeded rule; and `flashtalk convert-weights DIR -o OUT.safetensors`.

Published folder (found anywhere below DIR, published paths first):

    liveportrait/base_models/{appearance_feature_extractor,motion_extractor,warping_module,spade_generator}.pth
    liveportrait/retargeting_models/stitching_retargeting_module.pth
    .../motion_generator/*.pt                     JoyVASA checkpoint (its audio_encoder.* entries are HuBERT)
    .../motion_template/motion_template.pkl       JoyVASA motion statistics
    a Hugging Face HuBERT folder (config.json + weights), needed only when the checkpoint has no audio_encoder.*

Bundle: the `flashtalk-weights` safetensors format of `liveportrait_weights` (tensors `{network}.{key}`)
with networks `motion_generator`, `audio_encoder` and `motion_template` beside the five renderer networks,
and the configurations as JSON in the metadata key `flashtalk_configs`. Loading a bundle never unpickles.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch

from flashtalk.constants import PRESETS
from flashtalk.errors import FlashTalkError
from flashtalk.models.hubert import AudioEncoder, HubertConfig
from flashtalk.models.joyvasa.denoiser import MotionGenerator, MotionGeneratorConfig
from flashtalk.models.joyvasa.pipeline import MotionTemplate
from flashtalk.models.layers import set_compute_dtype
from flashtalk.models.liveportrait.optimized import precision_dtype
from flashtalk.models.liveportrait.renderer import Renderer
from flashtalk.weights.hubert import load_audio_encoder_state, load_hf_audio_encoder
from flashtalk.weights.joyvasa import AUDIO_PREFIX, load_checkpoint, load_motion_state, load_motion_template
from flashtalk.weights.liveportrait import (
    NETWORKS,
    check_state_dict,
    read_bundle_with_metadata,
    read_checkpoint,
    seeded_renderer,
)
from flashtalk.weights.liveportrait import write_bundle as write_renderer_bundle
from flashtalk.weights.presets import Preset
from flashtalk.weights.seeded import joyvasa_category, joyvasa_weights
from flashtalk.weights.validate import AUDIO_RULES, MOTION_RULES, build_config, check_fields, check_finite, check_size

log = logging.getLogger(__name__)

CONFIG_KEY = "flashtalk_configs"
MOTION, AUDIO, TEMPLATE = "motion_generator", "audio_encoder", "motion_template"


def seeded_template() -> MotionTemplate:
    """A fixed synthetic motion template for seeded weights (the real one ships with the checkpoint)."""
    f = lambda *v: torch.tensor(v, dtype=torch.float32)  # noqa: E731
    return MotionTemplate(
        mean_exp=torch.zeros(63),
        std_exp=torch.full((63,), 0.02),
        min_scale=f(1.2),
        max_scale=f(1.8),
        min_t=f(-0.05, -0.05, 0.0),
        max_t=f(0.05, 0.05, 0.0),
        min_pitch=f(-20.0),
        max_pitch=f(20.0),
        min_yaw=f(-30.0),
        max_yaw=f(30.0),
        min_roll=f(-15.0),
        max_roll=f(15.0),
    )


@dataclass
class Networks:
    """Everything the network backend runs, in eval mode, float32 on the CPU until `.to(device)`."""

    preset: str  # renderer preset name
    renderer: Renderer
    motion: MotionGenerator
    audio: AudioEncoder
    template: MotionTemplate

    motion_precision: str = "fp32"  # compute precision of the audio encoder + motion transformer (`to`)

    def to(self, device: torch.device, precision: str | None = None) -> "Networks":
        """Move every network to `device`; `precision` (fp32 | bf16 | fp16; None: bf16 on CUDA, fp32
        elsewhere) sets the motion path's compute dtype: the audio encoder and the motion transformer
        (`denoising_net`) store weights and activations in it, with fp32 norm statistics, fp32 softmax
        statistics and fp32 accumulation in attention; their outputs, the sampler, the schedule and the
        motion model's input projections stay fp32. The renderer's precision is `GraphedRenderer`'s."""
        device = torch.device(device)
        precision = default_motion_precision(device) if precision is None else precision
        dtype = precision_dtype(precision)
        self.renderer.to(device)
        self.motion.to(device)
        self.audio.to(device)
        set_compute_dtype(self.audio, dtype)
        set_compute_dtype(self.motion.denoising_net, dtype)
        self.motion_precision = precision
        return self


def default_motion_precision(device: torch.device) -> str:
    """bf16 on CUDA (tensor-core attention and GEMMs), fp32 elsewhere (the CPU has no fast bf16 here)."""
    return "bf16" if torch.device(device).type == "cuda" else "fp32"


def _seeded_joyvasa(module: torch.nn.Module, base_seed: int, prefix: str = "") -> dict[str, torch.Tensor]:
    entries = [
        (prefix + k, tuple(v.shape), joyvasa_category(prefix + k, tuple(v.shape)))
        for k, v in module.state_dict().items()
    ]
    return {k[len(prefix) :]: v for k, v in joyvasa_weights(entries, base_seed).items()}


def seeded_networks(preset: str = "liveportrait", base_seed: int = 0) -> Networks:
    """All networks with the golden seeded rules (LivePortrait §12.1, JoyVASA README): not a face."""
    configs = Preset.from_name(preset)
    motion = MotionGenerator(configs.motion).eval()
    load_motion_state(motion, _seeded_joyvasa(motion, base_seed), allow_missing_computed=True, source="seeded weights")
    audio = AudioEncoder(configs.audio).eval()
    load_audio_encoder_state(audio, _seeded_joyvasa(audio, base_seed, AUDIO_PREFIX), source="seeded weights")
    return Networks(preset, seeded_renderer(configs.renderer, base_seed), motion, audio, seeded_template())


# --------------------------------------------------------------------------------------------- folder


def _find(folder: Path, published: str, pattern: str) -> Path | None:
    if (folder / published).is_file():
        return folder / published
    hits = sorted(p for p in folder.rglob(pattern) if p.is_file())
    return hits[0] if hits else None


def _find_hubert(folder: Path) -> Path | None:
    for cfg in sorted(folder.rglob("config.json")):
        try:
            kind = json.loads(cfg.read_text()).get("model_type")
        except (OSError, ValueError, AttributeError):
            continue
        if kind in ("hubert", "wav2vec2"):
            return cfg.parent
    return None


def discover(folder: str | Path) -> dict[str, Path]:
    """The files of a published weights folder: {network / "motion_template" / "hubert": path}; raises
    a FlashTalkError naming every missing file. "hubert" is present only if the folder has one."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FlashTalkError(f"weights folder {folder} does not exist")
    found: dict[str, Path] = {}
    missing = []
    for net, (rel, what) in NETWORKS.items():
        path = _find(folder, rel, Path(rel).name)
        if path is None:
            missing.append(f"{rel} ({what})")
        else:
            found[net] = path
    generators = sorted(p for p in folder.rglob("*.pt") if p.parent.name == "motion_generator")
    if not generators:
        missing.append("motion_generator/*.pt (JoyVASA motion generator checkpoint)")
    else:
        found[MOTION] = next((p for p in generators if "hubert" in p.name), generators[0])
        if len(generators) > 1:
            log.warning("%s: several motion generator checkpoints; using %s", folder, found[MOTION])
    template = _find(folder, "motion_template/motion_template.pkl", "motion_template.pkl")
    if template is None:
        missing.append("motion_template/motion_template.pkl (JoyVASA motion template)")
    else:
        found[TEMPLATE] = template
    if missing:
        raise FlashTalkError(f"weights folder {folder} is incomplete: missing " + "; ".join(missing))
    hubert = _find_hubert(folder)
    if hubert is not None:
        found["hubert"] = hubert
    return found


def load_folder(folder: str | Path) -> Networks:
    """The published checkpoints (official shapes) -> Networks; loads with weights_only / numpy-only pickles."""
    files = discover(folder)
    renderer = Renderer(Preset.from_name("liveportrait").renderer)
    for net in NETWORKS:
        module = getattr(renderer, net)
        module.load_state_dict(check_state_dict(module, read_checkpoint(files[net], net), net, str(files[net])))
    ckpt = load_checkpoint(files[MOTION])
    motion = MotionGenerator(ckpt.config).eval()
    load_motion_state(motion, ckpt.motion_state, source=ckpt.path)
    if ckpt.audio_state:
        audio = AudioEncoder(HubertConfig()).eval()
        load_audio_encoder_state(audio, ckpt.audio_state, source=f"{ckpt.path} [audio_encoder.*]")
    elif "hubert" in files:
        audio = load_hf_audio_encoder(files["hubert"])
    else:
        raise FlashTalkError(
            f"{files[MOTION]} has no audio_encoder.* weights and {folder} holds no Hugging Face "
            "HuBERT folder (config.json + model.safetensors or pytorch_model.bin)"
        )
    if audio.cfg.hidden_size != motion.cfg.audio_dim:
        raise FlashTalkError(
            f"audio encoder width {audio.cfg.hidden_size} does not match the motion generator's "
            f"audio_dim {motion.cfg.audio_dim}"
        )
    nets = Networks("liveportrait", renderer, motion, audio, load_motion_template(files[TEMPLATE]))
    _check_all_finite(nets, str(folder))
    return nets


# --------------------------------------------------------------------------------------------- bundle


def write_bundle(nets: Networks, path: str | Path, *, overwrite: bool = False) -> Path:
    """Save all networks (float32), the motion template and the configurations as one safetensors file,
    atomically; an existing file is replaced only with `overwrite`."""
    states = {net: getattr(nets.renderer, net).state_dict() for net in NETWORKS}
    states[MOTION] = nets.motion.state_dict()
    states[AUDIO] = nets.audio.state_dict()
    states[TEMPLATE] = {f.name: getattr(nets.template, f.name) for f in fields(MotionTemplate)}
    states = {net: {k: t.float() for k, t in sd.items()} for net, sd in states.items()}
    audio_cfg = {k: v for k, v in asdict(nets.audio.cfg).items() if k != "extra"}
    configs = {"renderer_preset": nets.preset, MOTION: asdict(nets.motion.cfg), AUDIO: audio_cfg}
    return write_renderer_bundle(states, path, metadata={CONFIG_KEY: json.dumps(configs)}, overwrite=overwrite)


def load_bundle(path: str | Path) -> Networks:
    """A bundle written by `write_bundle` -> Networks (safetensors only: nothing is unpickled)."""
    path = Path(path)
    states, meta = read_bundle_with_metadata(path)
    raw = meta.get(CONFIG_KEY)
    absent = [n for n in (*NETWORKS, MOTION, AUDIO, TEMPLATE) if n not in states]
    if raw is None or absent:
        what = f"networks {', '.join(absent)}" if absent else f"the {CONFIG_KEY!r} metadata"
        raise FlashTalkError(
            f"{path}: a renderer-only bundle or an old one: lacks {what}; write a full one with "
            "`flashtalk convert-weights DIR -o OUT.safetensors`"
        )
    where = f"{path} [{CONFIG_KEY}]"
    try:
        configs = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise FlashTalkError(f"{where}: not valid JSON (or nested too deeply): {str(exc)[:80]}") from None
    if not isinstance(configs, dict) or not {"renderer_preset", MOTION, AUDIO} <= set(configs):
        raise FlashTalkError(f"{where}: expected an object with renderer_preset, {MOTION} and {AUDIO}")
    preset = configs["renderer_preset"]
    if not isinstance(preset, str):
        raise FlashTalkError(f"{where}: field 'renderer_preset' must be a preset name, got {type(preset).__name__}")
    configs_of = Preset.from_name(preset)
    mkw = check_fields(MotionGeneratorConfig, configs[MOTION], MOTION_RULES, f"{where}.{MOTION}")
    akw = check_fields(HubertConfig, configs[AUDIO], AUDIO_RULES, f"{where}.{AUDIO}")
    mcfg = build_config(MotionGeneratorConfig, f"{where}.{MOTION}", **mkw)
    acfg = build_config(HubertConfig, f"{where}.{AUDIO}", **akw)
    size = path.stat().st_size
    check_size(
        lambda: MotionGenerator(mcfg),
        size,
        f"{where}.{MOTION}",
        config=mcfg,
        known=[Preset.from_name(p).motion for p in PRESETS],
    )
    check_size(
        lambda: AudioEncoder(acfg),
        size,
        f"{where}.{AUDIO}",
        config=acfg,
        known=[Preset.from_name(p).audio for p in PRESETS],
    )
    renderer = Renderer(configs_of.renderer)
    for net in NETWORKS:
        module = getattr(renderer, net)
        module.load_state_dict(check_state_dict(module, states[net], net, f"{path} [{net}]"))
    motion = MotionGenerator(mcfg).eval()
    load_motion_state(motion, states[MOTION], allow_missing_computed=True, source=f"{path} [{MOTION}]")
    audio = AudioEncoder(acfg).eval()
    load_audio_encoder_state(audio, states[AUDIO], source=f"{path} [{AUDIO}]")
    template = MotionTemplate.from_dict(states[TEMPLATE], source=f"{path} [{TEMPLATE}]")
    nets = Networks(preset, renderer, motion, audio, template)
    _check_all_finite(nets, str(path))
    return nets


def _check_all_finite(nets: Networks, source: str) -> None:
    """Every network's weights and the template must be finite (NaN weights render black frames)."""
    for net in NETWORKS:
        check_finite(getattr(nets.renderer, net), f"{source} [{net}]")
    check_finite(nets.motion, f"{source} [{MOTION}]")
    check_finite(nets.audio, f"{source} [{AUDIO}]")
    check_finite({f.name: getattr(nets.template, f.name) for f in fields(MotionTemplate)}, f"{source} [{TEMPLATE}]")


def load_networks(path: str | Path) -> Networks:
    """A published weights folder or a FlashTalk bundle."""
    path = Path(path)
    if path.is_dir():
        return load_folder(path)
    if not path.exists():
        raise FlashTalkError(f"weights {path}: no such file or folder")
    if path.suffix != ".safetensors":
        raise FlashTalkError(f"weights {path}: expected a weights folder or a .safetensors bundle")
    return load_bundle(path)
