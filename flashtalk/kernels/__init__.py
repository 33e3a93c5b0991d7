"""Triton kernels, each with its pure-PyTorch reference beside it (one op per file).

Ops are loaded on first access, so `import flashtalk.kernels` does not import triton:

    from flashtalk import kernels
    out = kernels.attention(q, k, v)

`kernels.<op>` is always the op function, also after its module (of the same name) has been imported;
reach the rest of a module with `from flashtalk.kernels.<op> import <name>`.

`OPS` maps each public op to its module; `flashtalk info` walks it.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

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

__all__ = ["OPS", "Choice", "choose", "last_choice", "mode", "use_kernels", *OPS]


def __getattr__(name: str) -> Any:
    module = OPS.get(name) or OPS.get(name.removesuffix("_ref"))
    if module is None:
        raise AttributeError(f"module 'flashtalk.kernels' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


class _KernelsPackage(types.ModuleType):
    """Importing `flashtalk.kernels.<op>` binds the submodule as a package attribute, which would shadow
    the op function of the same name; keep op names resolving through `__getattr__` instead."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in OPS and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _KernelsPackage
