"""The one checkpoint toolkit every weights loader uses: read a file without unpickling arbitrary objects
(`safe_load`), check a state dict against a module's keys with one mismatch report (`check_keys`), and
write a safetensors file atomically without clobbering (`write_safetensors`).

Every failure is a FlashTalkError naming the file (or key) and what it should have been.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Mapping
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import torch

from flashtalk.errors import FlashTalkError

SHOWN = 5  # names listed per kind of mismatch before "… and N more"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def safe_load(path: str | Path, *, what: str, allow: Collection[type] = ()) -> Any:
    """The object in a checkpoint file: `.safetensors` -> {name: tensor}; anything else through
    `torch.load(weights_only=True, map_location="cpu")`, admitting only tensors, plain containers and the
    `allow`ed classes. `what` says what the file should be ("JoyVASA motion generator checkpoint")."""
    path = Path(path)
    if not path.is_file():
        raise FlashTalkError(f"{what} {path} does not exist")
    if path.suffix == ".safetensors":
        return read_safetensors(path, what=what)[0]
    try:
        with torch.serialization.safe_globals(list(allow)):
            return torch.load(path, weights_only=True, map_location="cpu")
    except Exception as exc:
        text = str(exc)
        if "weights_only" in text or "Unsupported global" in text or "Unsupported operand" in text:
            why = next((ln.strip() for ln in text.splitlines() if "global" in ln.lower()), _first_line(exc))
            allowed = "".join(f", {c.__module__}.{c.__qualname__}" for c in allow)
            raise FlashTalkError(
                f"{path}: refused to unpickle a non-tensor object (a {what} may hold only tensors{allowed}): {why}"
            ) from None
        raise FlashTalkError(
            f"{path}: cannot read the checkpoint (truncated or corrupt file? expected a {what}): "
            f"{type(exc).__name__}: {_first_line(exc)}"
        ) from None


def read_safetensors(path: str | Path, *, what: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """({name: tensor}, metadata) of a safetensors file, on the CPU; nothing is unpickled."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FlashTalkError(f"{what} {path} does not exist")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return {name: f.get_tensor(name) for name in f.keys()}, dict(f.metadata() or {})
    except Exception as exc:
        raise FlashTalkError(
            f"{path}: cannot read the safetensors file (truncated or corrupt? expected a {what}): {_first_line(exc)}"
        ) from None


def tensor_dict(obj: Any, *, where: str) -> dict[str, torch.Tensor]:
    """`obj` as a state dict, or a FlashTalkError naming its first non-tensor entries."""
    if not isinstance(obj, dict):
        raise FlashTalkError(f"{where}: expected a state dict (a dict of tensors), got {type(obj).__name__}")
    bad = [f"{k} ({type(v).__name__})" for k, v in obj.items() if not (isinstance(k, str) and torch.is_tensor(v))]
    if bad:
        raise FlashTalkError(f"{where}: holds non-tensor entries: {_shown(bad)}")
    return dict(obj)


def _shown(names: list[str]) -> str:
    more = f" … and {len(names) - SHOWN} more" if len(names) > SHOWN else ""
    return ", ".join(names[:SHOWN]) + more


def _matches(key: str, patterns: Collection[str]) -> bool:
    return any(fnmatchcase(key, p) for p in patterns)


def check_keys(
    expected: Mapping[str, torch.Size | torch.Tensor],
    got: Mapping[str, torch.Tensor],
    *,
    where: str,
    fits: str,
    ignore: Collection[str] = (),
    optional: Collection[str] = (),
    hint: str | None = None,
) -> dict[str, torch.Tensor]:
    """`got` without its `ignore`d keys, if its keys and shapes are exactly `expected`'s (keys matching an
    `optional` glob may be absent); else one FlashTalkError: "{where} does not fit the {fits}: missing keys
    (N): …; unexpected keys (N): …; mis-shaped keys (N): k: file (a, b) vs expected (c, d)"."""
    shapes = {k: tuple(getattr(v, "shape", v)) for k, v in expected.items()}
    got = {k: v for k, v in got.items() if not _matches(k, ignore)}
    missing = [k for k in shapes if k not in got and not _matches(k, optional)]
    unexpected = [k for k in got if k not in shapes]
    misshaped = [
        f"{k}: file {tuple(got[k].shape)} vs expected {s}"
        for k, s in shapes.items()
        if k in got and tuple(got[k].shape) != s
    ]
    if not (missing or unexpected or misshaped):
        return got
    parts = [f"{where} does not fit the {fits}" + (f" ({hint})" if hint else "")]
    for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("mis-shaped keys", misshaped)):
        if items:
            parts.append(f"{label} ({len(items)}): {_shown(items)}")
    raise FlashTalkError(parts[0] + ": " + "; ".join(parts[1:]))


def write_safetensors(
    tensors: Mapping[str, torch.Tensor], path: str | Path, *, metadata: Mapping[str, str], overwrite: bool = False
) -> Path:
    """Write `tensors` (contiguous CPU copies) and `metadata` to `path` through the one atomic writer
    (`flashtalk.io.media.atomic_output`: a temporary beside it, renamed once complete, removed on any error,
    Ctrl-C or SIGTERM); an existing `path` is replaced only with `overwrite`."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    from flashtalk.io.media import atomic_output

    path = Path(path)
    if path.is_dir():
        raise FlashTalkError(f"output {path} is a folder; give a file name ending in .safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)
    flat = {k: t.detach().cpu().contiguous() for k, t in tensors.items()}
    try:
        with atomic_output(path, overwrite=overwrite) as tmp:
            mode = tmp.stat().st_mode  # created with the user's umask
            save_file(flat, str(tmp), metadata=dict(metadata))
            os.chmod(tmp, mode)  # safetensors may write through its own 0600 temporary
    except (OSError, SafetensorError) as exc:
        raise FlashTalkError(f"writing {path} failed: {getattr(exc, 'strerror', None) or exc}") from None
    return path
