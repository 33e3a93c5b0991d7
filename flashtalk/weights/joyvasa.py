"""Loaders for JoyVASA's published files, without unpickling arbitrary objects.

* The motion-generator checkpoint (`motion_generator_hubert_chinese.pt`): a `torch.save` dict with "args"
  (an argparse.Namespace holding pathlib paths), "model" (state dict: `audio_encoder.*` = HuBERT, the rest
  = motion generator) and "iter". Loaded with `torch.load(weights_only=True)`, admitting only
  argparse.Namespace and pathlib path classes besides tensors.
* The motion template (`motion_template.pkl`): a plain pickle of a dict of numpy arrays. Loaded with an
  unpickler that admits numpy array reconstruction only.
"""

from __future__ import annotations

import argparse
import io
import math
import pathlib
import pickle
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from flashtalk.errors import FlashTalkError
from flashtalk.models.joyvasa.denoiser import ARGS_READ, MotionGenerator, MotionGeneratorConfig
from flashtalk.weights.checkpoint import check_keys, safe_load, tensor_dict
from flashtalk.weights.validate import MOTION_RULES, check_fields, check_finite, check_size

AUDIO_PREFIX = "audio_encoder."
RECOMPUTED_KEYS = ("denoising_net.TE.pe",)  # the official loader drops it and recomputes it
COMPUTED_PREFIXES = ("denoising_net.alignment_mask", "denoising_net.PE.pe", "diffusion_sched.")
_CHECKPOINT_GLOBALS = [
    argparse.Namespace,
    pathlib.PosixPath,
    pathlib.PurePosixPath,
    pathlib.WindowsPath,
    pathlib.PureWindowsPath,
]


@dataclass
class JoyVASACheckpoint:
    """The checkpoint's parts: training args (as a dict), motion config, and the two state dicts."""

    path: str
    args: dict[str, Any]
    config: MotionGeneratorConfig
    motion_state: dict[str, torch.Tensor]
    audio_state: dict[str, torch.Tensor] = field(repr=False)  # keys without the "audio_encoder." prefix
    iteration: int | None = None


def load_checkpoint(
    path: str | Path, *, pe_mode: str = "buggy", base_config: MotionGeneratorConfig | None = None
) -> JoyVASACheckpoint:
    """Read a JoyVASA checkpoint (`checkpoint.safe_load`, on the CPU); split HuBERT from the motion generator. The
    config is `base_config` (the released architecture by default) with the fields the args set."""
    path = Path(path)
    raw = safe_load(path, what="JoyVASA motion generator checkpoint", allow=_CHECKPOINT_GLOBALS)
    if not isinstance(raw, dict) or "model" not in raw or "args" not in raw:
        got = sorted(raw) if isinstance(raw, dict) else type(raw).__name__
        raise FlashTalkError(f"{path}: expected a dict with 'args', 'model' (and 'iter'); got {got}")
    args = raw["args"]
    args = dict(args) if isinstance(args, dict) else vars(args) if isinstance(args, argparse.Namespace) else None
    if args is None:
        raise FlashTalkError(f"{path}: 'args' must be an argparse.Namespace or dict, got {type(raw['args']).__name__}")
    state = tensor_dict(raw["model"], where=f"{path} ['model']")
    audio = {k[len(AUDIO_PREFIX) :]: v for k, v in state.items() if k.startswith(AUDIO_PREFIX)}
    motion = {k: v for k, v in state.items() if not k.startswith(AUDIO_PREFIX)}
    where = f"{path} ['args']"
    read = {k: args[k] for k in ARGS_READ if args.get(k) is not None}
    check_fields(MotionGeneratorConfig, read, MOTION_RULES, where, partial=True)
    try:
        config = MotionGeneratorConfig.from_args(args, base_config, pe_mode=pe_mode)
    except FlashTalkError as exc:
        raise FlashTalkError(f"{where}: {exc}") from None
    base = base_config or MotionGeneratorConfig()
    check_size(
        lambda: MotionGenerator(config),
        path.stat().st_size,
        where,
        config=replace(config, pe_mode=base.pe_mode),
        known=[base],
    )
    iteration = raw.get("iter")
    try:
        iteration = int(iteration) if iteration is not None else None
    except (TypeError, ValueError, OverflowError, RuntimeError):
        raise FlashTalkError(f"{path}: 'iter' must be an integer, got {_short(iteration)}") from None
    return JoyVASACheckpoint(str(path), args, config, motion, audio, iteration)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def load_motion_state(
    model: MotionGenerator,
    state: dict[str, torch.Tensor],
    *,
    allow_missing_computed: bool = False,
    source: str = "state dict",
) -> None:
    """Copy `state` into `model` (casting to the model's dtypes). Raises the toolkit's mismatch report
    (`check_keys`: missing, unexpected and mis-shaped keys). `denoising_net.TE.pe` is ignored (recomputed, as the official
    loader does); with `allow_missing_computed`, absent computed buffers (alignment mask, PE table,
    schedule) keep the values the model computed."""
    own = model.state_dict()
    cfg = model.cfg
    state = check_keys(
        own,
        state,
        where=source,
        ignore=RECOMPUTED_KEYS,
        optional=[p + "*" for p in COMPUTED_PREFIXES] if allow_missing_computed else (),
        fits=f"motion generator ({cfg.n_prev_motions} context + {cfg.n_motions} frames, width {cfg.feature_dim})",
    )
    with torch.no_grad():
        for k, v in state.items():
            own[k].copy_(v.to(own[k].dtype))


def load_motion_generator(
    checkpoint: str | Path | JoyVASACheckpoint, *, pe_mode: str = "buggy", device=None, dtype: torch.dtype | None = None
) -> MotionGenerator:
    """A MotionGenerator in eval mode with the checkpoint's weights and args-derived configuration."""
    ckpt = checkpoint if isinstance(checkpoint, JoyVASACheckpoint) else load_checkpoint(checkpoint, pe_mode=pe_mode)
    model = MotionGenerator(replace(ckpt.config, pe_mode=pe_mode), device=device, dtype=dtype).eval()
    load_motion_state(model, ckpt.motion_state, source=ckpt.path)
    return model


# numpy array reconstruction: the only globals a motion-template pickle may name.
_NUMPY_GLOBALS = {
    (mod, name)
    for core in ("numpy.core", "numpy._core")
    for mod, name in (
        (f"{core}.multiarray", "_reconstruct"),
        (f"{core}.multiarray", "scalar"),
        (f"{core}.numeric", "_frombuffer"),
    )
} | {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}


MAX_PICKLE_BYTES = 64 << 20  # a motion template is a few KB
_SLACK_BYTES = 1 << 20  # an array may exceed the pickle by this much (headers, small arrays of zeros)


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Admits numpy array reconstruction only, and only arrays no larger than the pickle itself (plus
    _SLACK_BYTES): a pickle that names a huge shape or dtype is refused before numpy allocates it."""

    def __init__(self, file, source: str, size: int) -> None:
        super().__init__(file)
        self.source = source
        self.limit = size + _SLACK_BYTES

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _NUMPY_GLOBALS or (module == "numpy.dtypes" and name.endswith("DType")):
            target = super().find_class(module, name)
            if name in ("_reconstruct", "scalar", "_frombuffer", "dtype"):
                return self._bounded(target, name)
            return target
        raise FlashTalkError(
            f"{self.source}: refused to unpickle global {module}.{name} "
            "(a motion template may only contain numpy arrays)"
        )

    def _bounded(self, target, name: str):
        import numpy as np

        def call(*args):
            if name == "dtype":
                dt = target(*args)
                nbytes = dt.itemsize
            elif name == "_reconstruct":  # (subtype, shape, dtype)
                if len(args) != 3 or args[0] is not np.ndarray:
                    raise FlashTalkError(f"{self.source}: refused a non-ndarray reconstruction")
                nbytes = _nbytes(args[1], args[2])
            elif name == "_frombuffer":  # (buffer, dtype, shape, order)
                nbytes = _nbytes(args[2], args[1]) if len(args) >= 3 else 0
            else:  # scalar(dtype, data)
                nbytes = np.dtype(args[0]).itemsize if args else 0
            if nbytes > self.limit:
                raise FlashTalkError(
                    f"{self.source}: refused: the pickle asks for a {nbytes:,}-byte array, far "
                    f"more than its own {self.limit - _SLACK_BYTES:,} bytes"
                )
            return dt if name == "dtype" else target(*args)

        return call


def _nbytes(shape, dtype) -> int:
    import numpy as np

    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    if not all(isinstance(n, int) and n >= 0 for n in shape):
        raise FlashTalkError(f"refused an array shape {str(shape)[:60]} (non-negative integers expected)")
    return math.prod(shape) * np.dtype(dtype).itemsize


def load_pickled_arrays(path: str | Path) -> dict[str, Any]:
    """A pickled dict of numpy arrays (e.g. JoyVASA's motion_template.pkl), refusing any other object.

    The opcodes are walked first without executing them (`pickletools.genops`), so a pickle whose
    lengths point past its end is refused before any allocation; arrays may not outgrow the file."""
    import pickletools

    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_PICKLE_BYTES:
            raise FlashTalkError(
                f"{path}: {size:,} bytes is too large for a motion template (at most {MAX_PICKLE_BYTES:,})"
            )
        data = path.read_bytes()
    except OSError as exc:
        raise FlashTalkError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        for op, arg, pos in pickletools.genops(data):
            if op.name == "FRAME" and arg > len(data) - pos:
                raise FlashTalkError(
                    f"{path}: not a valid pickle (refused: a frame of {arg:,} bytes in a {size:,}-byte file)"
                )
        obj = _NumpyOnlyUnpickler(io.BytesIO(data), str(path), size).load()
    except FlashTalkError:
        raise
    except Exception as exc:  # truncated or corrupt pickles raise many types
        raise FlashTalkError(f"{path}: not a valid pickle ({type(exc).__name__}: {str(exc)[:120]})") from None
    if not isinstance(obj, dict):
        raise FlashTalkError(f"{path}: expected a dict of arrays, got {type(obj).__name__}")
    return obj


def load_motion_template(path: str | Path):
    """JoyVASA's motion_template.pkl -> MotionTemplate (only the statistics inference uses)."""
    from flashtalk.models.joyvasa.pipeline import MotionTemplate

    template = MotionTemplate.from_dict(load_pickled_arrays(path), source=str(path))
    check_finite(vars(template), str(path))
    return template
