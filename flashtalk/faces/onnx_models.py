"""LivePortrait's three face ONNX files: where they sit in a weights folder, loading them with onnxruntime
(the optional `faces` extra; CUDA provider when present, else CPU) and checking each model's inputs and
outputs against the published signature on load (`docs/specs/faces.md` §2.2, §3.1, §5.2-5.3).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flashtalk.errors import FlashTalkError
from flashtalk.faces.pipeline import FaceModels

log = logging.getLogger(__name__)

DET = "insightface/models/buffalo_l/det_10g.onnx"
L106 = "insightface/models/buffalo_l/2d106det.onnx"
L203 = "liveportrait/landmark.onnx"
FILES = {"det": DET, "l106": L106, "l203": L203}
EXTRA_HINT = "pip install 'flashtalk[faces]'"
_NOTICE_SHOWN = False  # the InsightFace licence notice, once per process


@dataclass(frozen=True)
class Signature:
    """inputs: [(name or None for any, shape)], None in a shape = any size; outputs by position: the
    allowed trailing shapes of each (None = anything). Symbolic / dynamic dimensions match any size."""

    what: str
    inputs: tuple[tuple[str | None, tuple[int | None, ...]], ...]
    outputs: tuple[tuple[tuple[int, ...], ...] | None, ...]


SIGNATURES = {
    "det": Signature(
        "SCRFD face detector det_10g", ((None, (1, 3, None, None)),), (((1,),),) * 3 + (((4,),),) * 3 + (((10,),),) * 3
    ),
    "l106": Signature("106-point landmark model 2d106det", ((None, (None, 3, 192, 192)),), (((212,),),)),
    "l203": Signature(
        "LivePortrait 203-point landmark model", (("input", (1, 3, 224, 224)),), (None, None, ((406,), (203, 2)))
    ),
}


def find_files(folder: str | Path, *, search: bool = True) -> dict[str, Path]:
    """The face ONNX files under `folder`: at the published path, else (with `search`) by file name
    anywhere below, as the network loader finds its files."""
    folder = Path(folder)
    found = {}
    for key, rel in FILES.items():
        if (folder / rel).is_file():
            found[key] = folder / rel
            continue
        hits = sorted(p for p in folder.rglob(Path(rel).name) if p.is_file()) if search and folder.is_dir() else []
        if hits:
            found[key] = hits[0]
    return found


def _dims_match(got: tuple, want: tuple) -> bool:
    return len(got) == len(want) and all(w is None or not isinstance(g, int) or g == w for g, w in zip(got, want))


def _tail_match(got: tuple, allowed) -> bool:
    return allowed is None or any(len(got) >= len(t) and _dims_match(got[len(got) - len(t) :], t) for t in allowed)


def check_signature(key: str, path: Path, inputs: list, outputs: list) -> None:
    """inputs / outputs: onnxruntime NodeArg-like (name, shape). Raises naming the file and what differs."""
    sig = SIGNATURES[key]
    got_in = [(a.name, tuple(a.shape)) for a in inputs]
    got_out = [tuple(a.shape) for a in outputs]
    want_in = [(n or "any name", s) for n, s in sig.inputs]
    if len(got_in) != len(sig.inputs) or any(
        (n is not None and g[0] != n) or not _dims_match(g[1], s) for g, (n, s) in zip(got_in, sig.inputs)
    ):
        raise FlashTalkError(f"{path}: not the {sig.what}: inputs {got_in}, expected {want_in}")
    if len(got_out) != len(sig.outputs) or not all(_tail_match(g, t) for g, t in zip(got_out, sig.outputs)):
        want = [
            ("any" if t is None else " or ".join(f"(..., {', '.join(map(str, x))})" for x in t)) for t in sig.outputs
        ]
        raise FlashTalkError(
            f"{path}: not the {sig.what}: {len(got_out)} outputs {got_out}, expected "
            f"{len(sig.outputs)}: {', '.join(want)}"
        )


def _providers(device: str) -> list[str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    if device.startswith("cuda") and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def _session(key: str, path: Path, device: str):
    try:
        import onnxruntime as ort
    except ModuleNotFoundError:
        raise FlashTalkError(f"LivePortrait's face models need onnxruntime: {EXTRA_HINT}") from None
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = 4
    try:
        sess = ort.InferenceSession(str(path), sess_options=opts, providers=_providers(device))
    except Exception as exc:  # onnxruntime raises its own exception types for unreadable models
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise FlashTalkError(
            f"{path}: not a readable ONNX model (truncated or corrupted? re-run `flashtalk download`): {first[:200]}"
        ) from None
    check_signature(key, path, sess.get_inputs(), sess.get_outputs())
    return sess


def _runner(sess, first_only: bool):
    name = sess.get_inputs()[0].name

    def run(x: np.ndarray):
        outs = sess.run(None, {name: np.ascontiguousarray(x, dtype=np.float32)})
        return outs[0] if first_only else outs

    return run


def _l106_normalisation(path: Path) -> tuple[float, float]:
    """insightface's input normalisation rule read from the graph's first node names when the `onnx`
    package is there; else 2d106det's (mean 0, std 1: it normalises itself)."""
    try:
        import onnx
    except ModuleNotFoundError:
        return 0.0, 1.0
    from flashtalk.faces.landmark106 import normalisation

    try:
        names = [n.name for n in onnx.load(str(path), load_external_data=False).graph.node[:8]]
    except Exception:
        return 0.0, 1.0
    norm = normalisation(names)
    if norm != (0.0, 1.0):
        log.info("%s does not normalise its input itself: mean %g, std %g", path, *norm)
    return norm


def load(
    folder: str | Path, *, device: str = "cpu", det_thresh: float | None = None, search: bool = True
) -> FaceModels:
    """The three sessions from a weights folder; a FlashTalkError names the missing files."""
    found = find_files(folder, search=search)
    missing = [rel for key, rel in FILES.items() if key not in found]
    if missing:
        raise FlashTalkError(
            f"{folder} holds no LivePortrait face models: missing {', '.join(missing)} (run `flashtalk download`)"
        )
    sessions = {key: _session(key, found[key], device) for key in FILES}
    global _NOTICE_SHOWN
    if not _NOTICE_SHOWN:
        _NOTICE_SHOWN = True
        log.warning("face crop: InsightFace's det_10g / 2d106det models, licensed for non-commercial research only")
    models = FaceModels(
        _runner(sessions["det"], False),
        _runner(sessions["l106"], True),
        _runner(sessions["l203"], False),
        label=f"LivePortrait face models in {folder}",
        l106_norm=_l106_normalisation(found["l106"]),
    )
    if det_thresh is not None:
        models.det_thresh = det_thresh
    return models


def load_if_present(folder: str | Path | None, *, device: str = "cpu", search: bool = True) -> FaceModels | None:
    """The face models when all three files are in `folder`; None (logged) when none is (or onnxruntime
    is missing); an error for a partial set or an unreadable file."""
    if folder is None or not Path(folder).is_dir():
        return None
    found = find_files(folder, search=search)
    if not found:
        log.info("no LivePortrait face models in %s: --crop auto uses the Haar crop", folder)
        return None
    try:
        import onnxruntime  # noqa: F401
    except ModuleNotFoundError:
        log.warning(
            "LivePortrait's face models are in %s but onnxruntime is not installed (%s): --crop auto "
            "uses the Haar crop",
            folder,
            EXTRA_HINT,
        )
        return None
    return load(folder, device=device, search=search)
