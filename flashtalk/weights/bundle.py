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

import logging
from dataclasses import dataclass

import torch

from flashtalk.models.hubert import AudioEncoder
from flashtalk.models.joyvasa.denoiser import MotionGenerator
from flashtalk.models.joyvasa.pipeline import MotionTemplate
from flashtalk.models.layers import set_compute_dtype
from flashtalk.models.liveportrait.optimized import precision_dtype
from flashtalk.models.liveportrait.renderer import Renderer
from flashtalk.weights.hubert import load_audio_encoder_state
from flashtalk.weights.joyvasa import AUDIO_PREFIX, load_motion_state
from flashtalk.weights.liveportrait import (
    seeded_renderer,
)
from flashtalk.weights.presets import Preset
from flashtalk.weights.seeded import joyvasa_category, joyvasa_weights

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
        motion model's input projections stay fp32. The renderer's precision is `FastRenderer`'s."""
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
