"""Named model sizes: one `Preset` holds the renderer, motion-generator and audio-encoder configurations
that belong together.

    "liveportrait"  the released networks (LivePortrait, JoyVASA, chinese-hubert-base)
    "tiny"          the same code with few channels (70-d motion, 8-frame windows) for tests
"""

from __future__ import annotations

from dataclasses import dataclass

from flashtalk.constants import PRESETS
from flashtalk.errors import FlashTalkError
from flashtalk.models.hubert import HubertConfig
from flashtalk.models.joyvasa.denoiser import MotionGeneratorConfig
from flashtalk.models.liveportrait.renderer import RendererConfig


@dataclass(frozen=True)
class Preset:
    name: str
    renderer: RendererConfig
    motion: MotionGeneratorConfig
    audio: HubertConfig

    @classmethod
    def from_name(cls, name: str) -> "Preset":
        """The configurations of preset `name`; an unknown name raises a FlashTalkError listing the known."""
        if name == "liveportrait":
            return cls(name, RendererConfig.from_name(name), MotionGeneratorConfig(), HubertConfig())
        if name == "tiny":
            audio = HubertConfig(
                hidden_size=32,
                num_hidden_layers=2,
                num_attention_heads=4,
                intermediate_size=64,
                conv_dim=(16, 16, 16, 16),
                conv_kernel=(10, 3, 3, 2),
                conv_stride=(5, 4, 4, 4),
                num_conv_pos_embeddings=8,
                num_conv_pos_embedding_groups=4,
            )  # 320 samples / frame
            return cls(
                name,
                RendererConfig.from_name(name),
                MotionGeneratorConfig.tiny(motion_feat_dim=70, audio_dim=32),
                audio,
            )
        raise FlashTalkError(f"unknown preset {name!r} (known: {', '.join(PRESETS)})")
