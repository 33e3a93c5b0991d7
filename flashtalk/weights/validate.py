"""Checks on what a weights file claims, before anything is built from it.

A checkpoint, a bundle or a config.json is untrusted input: every configuration field is checked for
type and range before a module is constructed (`check_fields`, with the file and the field in the error);
the module is then built on the meta device first, so a config that asks for far more memory than the
file can fill is refused before allocating (`check_size`); and loaded weights must be finite
(`check_finite`), since NaN / inf weights render a black video without any error.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import fields
from typing import Any

import torch

from flashtalk.errors import FlashTalkError

COMPUTED_BYTES = 256 << 20  # allowance for buffers computed at build time (sinusoid tables, masks, schedules)

# field -> (kind, low, high); kinds: int, float (finite), str, bool, ints (a list / tuple of ints, high = its max
# length), any (not checked here: the config's own checks apply)
Rule = tuple[str, float, float]
MOTION_RULES: dict[str, Rule] = {
    "motion_feat_dim": ("int", 1, 4096),
    "n_motions": ("int", 1, 10_000),
    "n_prev_motions": ("int", 0, 10_000),
    "feature_dim": ("int", 2, 8192),
    "n_layers": ("int", 1, 128),
    "n_heads": ("int", 1, 256),
    "ffn_dim": ("int", 1, 65_536),
    "n_diff_steps": ("int", 1, 10_000),
    "audio_dim": ("int", 1, 8192),
    "head_hidden": ("int", 1, 65_536),
    "te_rows": ("int", 2, 100_000),
    "pe_rows": ("int", 2, 100_000),
    "fps": ("float", 1.0, 240.0),
    "sample_rate": ("int", 4000, 384_000),
    "pad_mode": ("str", 0, 0),
    "pe_mode": ("str", 0, 0),
    "cross_attention": ("str", 0, 0),
}
AUDIO_RULES: dict[str, Rule] = {
    "hidden_size": ("int", 1, 8192),
    "num_hidden_layers": ("int", 1, 128),
    "num_attention_heads": ("int", 1, 256),
    "intermediate_size": ("int", 1, 65_536),
    "hidden_act": ("str", 0, 0),
    "conv_dim": ("ints", 1, 8192),
    "conv_kernel": ("ints", 1, 1024),
    "conv_stride": ("ints", 1, 1024),
    "conv_bias": ("bool", 0, 0),
    "feat_extract_norm": ("str", 0, 0),
    "feat_extract_activation": ("str", 0, 0),
    "feat_proj_layer_norm": ("bool", 0, 0),
    "num_conv_pos_embeddings": ("int", 1, 4096),
    "num_conv_pos_embedding_groups": ("int", 1, 1024),
    "layer_norm_eps": ("float", 0.0, 1.0),
    "do_stable_layer_norm": ("bool", 0, 0),
    "model_type": ("str", 0, 0),
    "sampling_rate": ("int", 4000, 384_000),
    "extra": ("any", 0, 0),
}
MAX_CONV_LAYERS = 16


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_value(name: str, value: Any, rule: Rule, where: str) -> Any:
    kind, lo, hi = rule
    bad = f"{where}: field {name!r} = {_show(value)}"
    if kind == "any":
        return value
    if kind == "bool":
        if not isinstance(value, bool):
            raise FlashTalkError(f"{bad} must be true or false")
        return value
    if kind == "str":
        if not isinstance(value, str) or len(value) > 64:
            raise FlashTalkError(f"{bad} must be a short string")
        return value
    if kind == "ints":
        if not isinstance(value, (list, tuple)) or not 1 <= len(value) <= MAX_CONV_LAYERS:
            raise FlashTalkError(f"{bad} must be a list of 1 to {MAX_CONV_LAYERS} integers")
        return tuple(_check_value(f"{name}[{i}]", v, ("int", lo, hi), where) for i, v in enumerate(value))
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise FlashTalkError(f"{bad} must be a number in [{lo:g}, {hi:g}], not a {type(value).__name__}")
    if isinstance(value, float) and not math.isfinite(value):
        raise FlashTalkError(f"{bad} must be finite, in [{lo:g}, {hi:g}]")
    if kind == "int" and value != int(value):
        raise FlashTalkError(f"{bad} must be an integer in [{lo:g}, {hi:g}]")
    if not (lo <= value <= hi) or (kind == "float" and lo == 0.0 and value <= 0.0):
        span = f"(0, {hi:g}]" if kind == "float" and lo == 0.0 else f"[{lo:g}, {hi:g}]"
        raise FlashTalkError(f"{bad} is out of range: allowed {span}")
    return int(value) if kind == "int" else float(value)


def check_fields(
    cls: type, values: Any, rules: Mapping[str, Rule], where: str, *, partial: bool = False
) -> dict[str, Any]:
    """`values` (a dict from a file) checked field by field against `rules` -> the kwargs for `cls`.
    Unknown fields are an error; `partial` allows fields to be absent (the class defaults apply)."""
    if not isinstance(values, Mapping):
        raise FlashTalkError(f"{where}: expected an object of {cls.__name__} fields, got {type(values).__name__}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(str(k)[:40] for k in values if k not in known)
    if unknown:
        raise FlashTalkError(f"{where}: unknown {cls.__name__} field(s) {', '.join(unknown[:5])}")
    missing = sorted(k for k in known if k not in values and k != "extra")
    if missing and not partial:
        raise FlashTalkError(f"{where}: missing {cls.__name__} field(s) {', '.join(missing[:5])}")
    return {k: _check_value(k, v, rules[k], where) for k, v in values.items()}


def build_config(factory: Callable[..., Any], where: str, /, *args: Any, **kwargs: Any):
    """`factory(*args, **kwargs)` (a config class or constructor), with the config's own consistency errors
    (and any arithmetic one) naming `where`."""
    try:
        return factory(*args, **kwargs)
    except FlashTalkError as exc:
        raise FlashTalkError(f"{where}: {exc}") from None
    except (TypeError, ValueError, ArithmeticError) as exc:
        raise FlashTalkError(f"{where}: invalid configuration: {exc}") from None


def check_size(
    build: Callable[[], torch.nn.Module], file_bytes: int, where: str, *, config: Any = None, known: Iterable[Any] = ()
) -> None:
    """Build the module on the meta device (no memory) and refuse it if its float32 state would be far
    larger than what a file of `file_bytes` can fill: 2x the file (bf16 / fp16 weights upcast) plus
    COMPUTED_BYTES for computed buffers. A `config` equal to one of the `known` (released, tiny) ones is
    not built: its size is known, and the meta device's first use costs seconds of imports."""
    if config is not None and any(config == k for k in known):
        return
    allowed = 2 * file_bytes + COMPUTED_BYTES
    need = 4 * _lower_bound(config)  # a cheap bound first: a crafted config's layers are never built
    if need <= allowed:
        with torch.device("meta"):
            module = build()
        need = sum(t.numel() * 4 for t in module.state_dict().values())
    if need > allowed:
        raise FlashTalkError(
            f"{where}: the configuration asks for {need / 2**20:,.0f} MiB of weights and buffers, "
            f"more than a {file_bytes / 2**20:,.1f} MiB file can hold (limit "
            f"{allowed / 2**20:,.0f} MiB); the config is corrupt or crafted"
        )


def _lower_bound(config: Any) -> int:
    """At most the parameter count of the transformer layers a config describes (attention projections and
    feed-forward weights only), from its fields alone; 0 for a config this does not know."""
    get = lambda *names: [getattr(config, n, None) for n in names]  # noqa: E731
    layers, width, ffn = get("num_hidden_layers", "hidden_size", "intermediate_size")
    if not all(isinstance(v, int) for v in (layers, width, ffn)):
        layers, width, ffn = get("n_layers", "feature_dim", "ffn_dim")
    if not all(isinstance(v, int) for v in (layers, width, ffn)):
        return 0
    return layers * (4 * width * width + 2 * width * ffn)


def check_finite(module: torch.nn.Module | Mapping[str, torch.Tensor], where: str) -> None:
    """Refuse NaN / inf in floating-point weights, naming the first tensors that hold them."""
    state = module.state_dict() if isinstance(module, torch.nn.Module) else module
    bad = []
    for key, t in state.items():
        if torch.is_tensor(t) and t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad.append(f"{key} ({int(torch.isnan(t).sum())} NaN, {int(torch.isinf(t).sum())} inf)")
    if bad:
        more = f" and {len(bad) - 3} more tensors" if len(bad) > 3 else ""
        raise FlashTalkError(
            f"{where}: non-finite weights in {', '.join(bad[:3])}{more}; the file is corrupt "
            "(a NaN weight renders black frames)"
        )
