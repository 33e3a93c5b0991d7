"""`flashtalk verify-golden DIR`: run every case of a golden folder and gate each array.

A golden folder holds `golden.json` (family, base_seed), `tolerances.json` (per file and array, an atol
and rtol for fp32 and fp64) and `.npz` files of inputs and reference outputs. A family module
(`FAMILIES`) computes our outputs for each file; an array passes when
max|ours - ref| <= atol + rtol * max|ref| at the precision run.

Family modules provide `compute(folder, dtype, device, base_seed, files, published_only) -> Iterator[(file,
{array: ours})]`, where `files` is the set of .npz names to run (the folder's gated files, possibly filtered by
--only). An array `name@variant` (the same output by another path, e.g. the renderer's fast path) is gated as
`name`; `published_only` (--published-only) leaves those other paths out.
"""

from __future__ import annotations

import importlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

from flashtalk.errors import FlashTalkError

FAMILIES = {
    "liveportrait": "flashtalk.golden.liveportrait",
    "joyvasa": "flashtalk.golden.joyvasa",
    "faces": "flashtalk.golden.faces",
}
OWN_GATES = ("faces",)  # families whose module provides check(folder, only) -> [Result] instead of compute()


@dataclass
class Result:
    file: str
    array: str
    max_abs: float
    rel: float  # max_abs / max|ref|
    limit: float
    passed: bool
    note: str = ""


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FlashTalkError(f"{path} not found: not a golden folder") from None
    except json.JSONDecodeError as exc:
        raise FlashTalkError(f"{path} is not valid JSON: {exc}") from None


def verify(
    folder: str | Path,
    precision: str = "fp32",
    kernels: str = "reference",
    device: str = "cpu",
    only: list[str] | None = None,
    published_only: bool = False,
) -> list[Result]:
    """Run the golden folder's cases and return one Result per gated array."""
    import numpy as np
    import torch

    from flashtalk.kernels.dispatch import use_kernels

    folder = Path(folder)
    if not folder.is_dir():
        raise FlashTalkError(f"golden folder {folder} does not exist")
    if precision not in ("fp32", "fp64"):
        raise FlashTalkError(f"--precision must be fp32 or fp64, not {precision!r}")
    meta = _read_json(folder / "golden.json")
    family = meta.get("family")
    if family not in FAMILIES:
        raise FlashTalkError(f"{folder / 'golden.json'}: unknown family {family!r} (known: {', '.join(FAMILIES)})")
    if family in OWN_GATES:  # gated by the folder's README table, no weights and no torch
        return importlib.import_module(FAMILIES[family]).check(folder, only)
    gates = _read_json(folder / "tolerances.json")["gates"]
    if only:
        gates = [g for g in gates if any(o in g["file"] for o in only)]
        if not gates:
            raise FlashTalkError(f"--only {' '.join(only)} matches no gated file in {folder}")
    files = sorted({g["file"] for g in gates})
    dtype = torch.float64 if precision == "fp64" else torch.float32

    allow_tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    ours: dict[tuple[str, str], "np.ndarray"] = {}
    try:
        module = importlib.import_module(FAMILIES[family])
        with use_kernels(kernels), torch.no_grad():
            base_seed = int(meta.get("base_seed", 0))
            for file, arrays in module.compute(
                folder, dtype, torch.device(device), base_seed, set(files), published_only
            ):
                for name, value in arrays.items():
                    ours[(file, name)] = np.asarray(
                        value.detach().cpu().double() if torch.is_tensor(value) else value, dtype=np.float64
                    )
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = allow_tf32

    results = []
    refs = {f: np.load(folder / f) for f in files}
    variants = sorted(key for key in ours if "@" in key[1])
    for gate in gates:
        file, name, tol = gate["file"], gate["array"], gate[precision]
        ref = np.asarray(refs[file][name], dtype=np.float64)
        peak = float(np.abs(ref).max()) if ref.size else 0.0
        limit = tol["atol"] + tol["rtol"] * peak
        for array in [name] + [v for f, v in variants if f == file and v.split("@")[0] == name]:
            results.append(_gate(file, array, ours.get((file, array)), ref, peak, limit))
    return results


def _gate(file: str, name: str, got, ref, peak: float, limit: float) -> Result:
    import numpy as np

    if got is None:
        return Result(file, name, math.inf, math.inf, limit, False, "not computed")
    if got.shape != ref.shape:
        return Result(file, name, math.inf, math.inf, limit, False, f"shape {got.shape} != {ref.shape}")
    err = np.abs(got - ref)
    finite = bool(np.isfinite(got).all())
    max_abs = float(err.max()) if err.size else 0.0
    note = "" if finite else f"{int((~np.isfinite(got)).sum())} non-finite values"
    return Result(file, name, max_abs, max_abs / peak if peak else max_abs, limit, finite and max_abs <= limit, note)
