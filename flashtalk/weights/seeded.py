"""Deterministic weights from a state dict's key list: the golden-data rule of the LivePortrait spec
(§12.1), used by the golden verifier and by `--seeded-weights` benchmarks.

Every entry is drawn from its own generator seeded by crc32(seed_key) XOR base_seed, so the weights of
one network do not depend on any other network, on key order, or on the device.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterable

import torch
import torch.nn.functional as F


def liveportrait_weights(
    entries: Iterable[tuple[str, tuple[int, ...]]], base_seed: int = 0, gain: float = 1.0
) -> dict[str, torch.Tensor]:
    """entries: (seed_key, shape) in state-dict order -> {seed_key: float64 tensor (int64 for counters)}.

    Leaf rules: weights with ndim >= 2 are uniform(±gain/sqrt(fan_in)); 1-D weights (norm affine) are
    1 + 0.1·s; biases and GRN gamma/beta 0.1·s; running_mean 0.1·s; running_var 1 + 0.5·r;
    spectral-norm `weight_u` is s/|s| and `weight_v` is derived from weight_orig and weight_u.
    """
    out: dict[str, torch.Tensor] = {}
    for key, shape in entries:
        shape = tuple(int(d) for d in shape)
        leaf = key.rsplit(".", 1)[-1]
        if leaf == "num_batches_tracked":
            out[key] = torch.zeros(shape, dtype=torch.int64)
            continue
        if leaf == "weight_v":  # derived, no random draw
            w, u = out[key[: -len("_v")] + "_orig"], out[key[: -len("_v")] + "_u"]
            out[key] = F.normalize(w.reshape(w.shape[0], -1).T @ u, dim=0)
            continue
        g = torch.Generator().manual_seed(zlib.crc32(key.encode("utf-8")) ^ base_seed)
        r = torch.rand(shape, generator=g, dtype=torch.float64)
        s = 2 * r - 1
        if leaf == "running_mean":
            v = 0.1 * s
        elif leaf == "running_var":
            v = 1 + 0.5 * r
        elif leaf in ("weight", "weight_orig") and len(shape) >= 2:
            v = s * (gain / math.sqrt(math.prod(shape[1:])))  # scalar factor first: the rule's exact order
        elif leaf == "weight":
            v = 1 + 0.1 * s
        elif leaf == "weight_u":
            v = F.normalize(s, dim=0)
        else:
            v = 0.1 * s
        out[key] = v
    return out


def seed_module(module: torch.nn.Module, base_seed: int = 0, gain: float = 1.0, key_prefix: str = "") -> None:
    """Fill `module` in place with `liveportrait_weights` of its own state-dict keys (seed keys get
    `key_prefix` in front, e.g. "retarget_shoulder." for the stitching MLP)."""
    sd = module.state_dict()
    weights = liveportrait_weights(((key_prefix + k, tuple(v.shape)) for k, v in sd.items()), base_seed, gain)
    module.load_state_dict({k: weights[key_prefix + k].to(v.dtype) for k, v in sd.items()}, strict=True)


def joyvasa_category(key: str, shape: tuple[int, ...]) -> str:
    """The JoyVASA golden rule's category of a state-dict entry, from its key and shape alone."""
    leaf = key.rsplit(".", 1)[-1]
    if key in ("start_audio_feat", "start_motion_feat", "null_audio_feat"):
        return "free_embedding"
    if key.endswith("pos_conv_embed.conv.parametrizations.weight.original0"):
        return "weightnorm_g"
    if key.startswith("diffusion_sched.") or key.endswith((".pe", "alignment_mask")):
        return "computed_buffer"
    is_norm = "norm" in key.rsplit(".", 2)[-2] if "." in key else False
    if is_norm and len(shape) == 1:
        return "norm_weight" if leaf == "weight" else "norm_bias"
    if len(shape) >= 2:
        return "matrix"
    return "bias" if leaf.endswith("bias") else "vector"


def joyvasa_weights(entries: Iterable[tuple[str, tuple[int, ...], str]], base_seed: int = 0) -> dict[str, torch.Tensor]:
    """entries: (key, shape, category) -> {key: float64 tensor}; computed buffers are skipped (the model
    computes them). Categories as in the JoyVASA golden README: matrix u/sqrt(fan_in); bias and vector
    0.1·u; norm_weight and weightnorm_g 1 + 0.1·u; norm_bias 0.1·u; free_embedding u."""
    out: dict[str, torch.Tensor] = {}
    for key, shape, category in entries:
        if category == "computed_buffer":
            continue
        shape = tuple(int(d) for d in shape)
        g = torch.Generator().manual_seed(zlib.crc32(key.encode("utf-8")) ^ base_seed)
        u = torch.rand(shape, generator=g, dtype=torch.float64) * 2 - 1
        if category == "matrix":
            v = u / math.sqrt(math.prod(shape[1:]))
        elif category in ("bias", "vector", "norm_bias"):
            v = 0.1 * u
        elif category in ("norm_weight", "weightnorm_g"):
            v = 1 + 0.1 * u
        elif category == "free_embedding":
            v = u
        else:
            raise ValueError(f"unknown JoyVASA weight category {category!r} for {key}")
        out[key] = v
    return out
