"""Triton kernels, one op per file, each with its pure-PyTorch reference `<op>_ref` beside it.

Import an op from its own module:

    from flashtalk.kernels.attention import attention
    out = attention(q, k, v)

`OPS` maps each public op to its module (`flashtalk info` walks it); `load_op` imports one by name; each op
module's `CONTRACT` says what any implementation of the op must do (`flashtalk.kernels.contract`).
Other implementations: `register(op, name, fn)`, the `flashtalk.kernels` entry-point group, `use_impl(op, name)`
or `FLASHTALK_KERNELS=OP=IMPL` (`flashtalk.kernels.registry`).
Importing this package does not import triton: only the dispatch (which backend runs, and why) is loaded.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from flashtalk.kernels.dispatch import Choice, choose, last_choice, mode, use_kernels

# public op name -> module that defines it (and `<op>_ref` beside it)
OPS: dict[str, str] = {
    "attention": "flashtalk.kernels.attention",
    "dense_motion_input": "flashtalk.kernels.dense_motion_input",
    "deform_warp": "flashtalk.kernels.deform_warp",
    "warp2d": "flashtalk.kernels.warp2d",
    "paste_back": "flashtalk.kernels.paste_back",
    "watermark_embed": "flashtalk.kernels.watermark_embed",
    "spade_norm": "flashtalk.kernels.spade_norm",
    "warp_tail": "flashtalk.kernels.warp_tail",
}


def load_op(name: str, *, reference: bool = False) -> Callable:
    """The op function `name` (or its PyTorch reference), imported from its module."""
    if name not in OPS:
        raise KeyError(f"unknown kernel op {name!r} (known: {', '.join(OPS)})")
    return getattr(importlib.import_module(OPS[name]), f"{name}_ref" if reference else name)


def op_contract(name: str):
    """The `OpContract` of op `name`."""
    return load_op(name).contract


from flashtalk.kernels.registry import Unsupported, implementations, register, resolve, use_impl  # noqa: E402

__all__ = [
    "OPS",
    "Choice",
    "Unsupported",
    "choose",
    "op_contract",
    "implementations",
    "last_choice",
    "load_op",
    "mode",
    "register",
    "resolve",
    "use_impl",
    "use_kernels",
]
