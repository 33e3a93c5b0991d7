"""THE finish step of rendered frames, shared by offline `animate` (`flashtalk.runtime.engine.Clip`) and live
sessions (`flashtalk.runtime.scheduler`): float images -> uint8 HWC, the provenance watermark embedded per
span of rows, and the copy out to host memory (on CUDA through pinned memory, waited for once)."""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

WATERMARK_MODULE = "flashtalk.provenance.watermark"

# how a span of rows is marked: (embed function, key, payload), or None for no watermark
Mark = tuple[Callable[..., Any], str, str]


def load_watermark() -> Callable[..., Any] | None:
    """The watermark's `embed`, or None when its module is not installed."""
    try:
        module = importlib.import_module(WATERMARK_MODULE)
    except ModuleNotFoundError as exc:
        if exc.name is None or not WATERMARK_MODULE.startswith(exc.name):
            raise
        return None
    return module.embed


def watermark_payload() -> str:
    """The payload every FlashTalk frame carries: the engine and its version."""
    from flashtalk import __version__

    return f"FlashTalk {__version__}"


def watermark_mark(key: str) -> Mark | None:
    """How frames are marked with `key` (embed, key, payload), or None when the watermark module is not
    installed (then said once in the log)."""
    embed = load_watermark()
    if embed is None:
        log.warning("watermark module %s is not installed; frames are NOT watermarked", WATERMARK_MODULE)
        return None
    return embed, key, watermark_payload()


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[N, 3, H, W] float in [0, 1] -> [N, H, W, 3] uint8 (rounded; values outside [0, 1] clamped)."""
    import torch

    return images.clamp(0, 1).mul(255).add_(0.5).to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def finish(images: torch.Tensor, spans: Sequence[tuple[int, int, Mark | None]]) -> np.ndarray:
    """Frames ready to hand out: `images` [N, 3, H, W] float in [0, 1] (or already [N, H, W, 3] uint8, e.g.
    pasted back into the photo) -> uint8 [N, H, W, 3] on the host. `spans`: (first row, rows, mark) in order;
    adjacent spans with the same mark are embedded with one call (one call for a tick whose sessions agree, the
    usual case)."""
    import torch

    out = images if images.dtype == torch.uint8 else to_uint8(images)
    runs: list[list[Any]] = []  # [first row, rows, mark]
    for start, n, mark in spans:
        if mark is None or n == 0:
            continue
        if runs and runs[-1][2] == mark and runs[-1][0] + runs[-1][1] == start:
            runs[-1][1] += n
        else:
            runs.append([start, n, mark])
    for start, n, (embed, key, payload) in runs:
        out[start : start + n] = embed(out[start : start + n], key=key, payload=payload)
    if out.device.type != "cuda":
        return out.numpy()
    host = torch.empty(out.shape, dtype=torch.uint8, pin_memory=True)
    host.copy_(out, non_blocking=True)
    done = torch.cuda.Event()
    done.record()
    done.synchronize()
    return host.numpy()
