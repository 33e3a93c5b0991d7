"""Conformance of one implementation of an op: every case of `flashtalk.kernels.cases` against the op's
fp64 reference, held to the contract (`flashtalk.kernels.contract`) and the tolerance rule
(`flashtalk.kernels.tolerance`), each call guarded so that a bad implementation gives a row, never a crash.

Per case: the inputs are made (seeded) and copied; the free memory of the allocator is filled with NaN just
before the call, so an output element the implementation never writes tends to show up as NaN (on CUDA the
caching allocator hands that memory back; on the CPU it is best effort); the implementation runs in a worker
thread with a deadline (a hang marks the case and the rest of that implementation's cases are not run, since
the thread cannot be stopped); then: an exception, a refusal (`Unsupported`: the reference would run), the
outputs' count / type / shape / dtype / device, NaN or inf where the reference has none, any write into an
input, and the error against the bound.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass

import torch

from flashtalk.kernels.cases import Case, cases
from flashtalk.kernels.contract import OpContract, as_outputs, output_problem
from flashtalk.kernels.registry import Impl, Unsupported
from flashtalk.kernels.tolerance import UINT8_LEVELS, UINT8_SHARE, dtype_bound


@dataclass
class Row:
    op: str
    impl: str
    case: str
    max_error: float | None
    bound: float | None
    passed: bool
    note: str = ""
    seconds: float = 0.0
    unit: str = ""  # "dB": max_error holds a PSNR and bound its minimum

    @property
    def verdict(self) -> str:
        return ("pass" if self.passed else "FAIL") + (f" ({self.note})" if self.note else "")


def _tensors(args: tuple, kwargs: dict, contract: OpContract) -> list[tuple[str, torch.Tensor]]:
    params = [p.split("=")[0].strip() for p in contract.signature.split(",") if p.strip() != "*"]
    named = [(params[i] if i < len(params) else f"argument {i}", a) for i, a in enumerate(args)]
    named += list(kwargs.items())
    return [(n, t) for n, t in named if isinstance(t, torch.Tensor)]


def _to64(x):
    return x.double() if isinstance(x, torch.Tensor) and x.is_floating_point() else x


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.is_floating_point():
        return bool(((a == b) | (a.isnan() & b.isnan())).all())
    return torch.equal(a, b)


def _poison_free_memory(specs: list, device: torch.device) -> None:
    """Allocate blocks of the outputs' sizes filled with NaN and free them, so a fresh allocation of that size
    likely reuses NaN-filled memory."""
    for spec in specs:
        if spec is not None:
            shape, dtype = spec
            n = max(1, math.prod(shape)) * torch.empty((), dtype=dtype).element_size()
            torch.full((n // 4 + 1,), float("nan"), dtype=torch.float32, device=device)


def call_with_deadline(fn, args: tuple, kwargs: dict, timeout: float) -> tuple[str, object]:
    """("ok", result) | ("raised", exception) | ("hang", None): `fn` in a daemon thread, waited for `timeout` s."""
    box: dict = {}

    def target():
        try:
            with torch.no_grad():
                box["out"] = fn(*args, **kwargs)
        except BaseException as exc:  # someone else's code: anything it raises is a row
            box["exc"] = exc

    t = threading.Thread(target=target, name="flashtalk-verify-case", daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        return "hang", None
    return ("raised", box["exc"]) if "exc" in box else ("ok", box.get("out"))


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200] if text else ''}"


def _compare(contract: OpContract, case: Case, got: list, args: tuple, kwargs: dict) -> tuple[float, float, str]:
    """(max error, bound, problem or "") of the outputs against the reference, by the op's rule."""
    ref = as_outputs(contract.reference(*args, **kwargs))
    if contract.rule == "dtype":
        ref64 = as_outputs(contract.reference(*map(_to64, args), **{k: _to64(v) for k, v in kwargs.items()}))
    worst_err, worst_bound, problem = 0.0, 0.0, ""
    for i, (o, r) in enumerate(zip(got, ref)):
        if r is None:
            continue
        o, r = o.detach().cpu(), r.detach().cpu()
        what = f"output {i}: " if len(got) > 1 else ""
        if contract.rule == "dtype":
            e = ref64[i].detach().cpu()
            bad = ~torch.isfinite(o.double()) & torch.isfinite(e)
            if bad.any():
                n_nan = int(o.double().isnan().sum())
                kind = "NaN" if n_nan else "inf"
                return math.inf, worst_bound, f"{what}{int(bad.sum())} {kind} values where the reference is finite"
            finite = torch.isfinite(e)
            err = float((o.double() - e).abs()[finite].max()) if finite.any() else 0.0
            ref_err = float((r.double() - e).abs()[finite].max()) if finite.any() else 0.0
            peak = float(e.abs()[finite].max()) if finite.any() else 0.0
            bound = dtype_bound(case.dtype, ref_err, peak)
        else:
            diff = (o.int() - r.int()).abs() if not o.is_floating_point() else (o.double() - r.double()).abs()
            err = float(diff.max()) if diff.numel() else 0.0
            if contract.rule == "exact":
                bound = 0.0
            else:
                bound = float(UINT8_LEVELS)
                share = float((diff > 0).float().mean()) if diff.numel() else 0.0
                if err <= bound and share > UINT8_SHARE:
                    problem = problem or f"{what}{share:.2%} of values differ (at most {UINT8_SHARE:.1%})"
        if err > bound and not problem:
            problem = f"{what}max error {err:.3e} > bound {bound:.3e}"
        worst_err, worst_bound = max(worst_err, err), max(worst_bound, bound)
    return worst_err, worst_bound, problem


def run_case(impl: Impl, fn, contract: OpContract, case: Case, timeout: float, seed: int = 0) -> Row:
    torch.manual_seed(seed)
    args, kwargs = case.make()
    before = [(n, t.clone()) for n, t in _tensors(args, kwargs, contract)]
    bases = [(n, t._base, t._base.clone()) for n, t in _tensors(args, kwargs, contract) if t._base is not None]
    device = next((t.device for _, t in before), torch.device("cpu"))
    _poison_free_memory(contract.outputs(*args, **kwargs), device)
    t0 = time.perf_counter()
    status, result = call_with_deadline(fn, args, kwargs, timeout)
    seconds = time.perf_counter() - t0
    row = Row(contract.op, impl.name, case.id, None, None, False, seconds=seconds)
    if status == "hang":
        row.note = f"hang: no result after {timeout:g} s"
        return row
    if status == "raised":
        if isinstance(result, Unsupported):
            row.passed, row.note = True, f"refused: {result} (the reference runs)"
        else:
            row.note = f"raised {_one_line(result)}"
        return row
    for (name, old), (_, new) in zip(before, _tensors(args, kwargs, contract)):
        if not _same(old, new):
            row.note = f"wrote into its input {name}"
            return row
    for name, base, old in bases:
        if not _same(old, base):
            row.note = f"wrote into the memory around its input {name} (a view)"
            return row
    problem = output_problem(contract, result, args, kwargs)
    if problem:
        row.note = problem
        return row
    try:
        row.max_error, row.bound, problem = _compare(contract, case, as_outputs(result), args, kwargs)
    except Exception as exc:  # an output we cannot even compare (strange strides, a subclass)
        row.note = f"could not compare the outputs: {_one_line(exc)}"
        return row
    row.passed, row.note = not problem, problem
    return row


def verify_op(impl: Impl, full: bool = False, timeout: float = 30.0, match: str | None = None) -> list[Row]:
    """Every conformance case of `impl.op` run on `impl` (ours when impl.name == "flashtalk")."""
    from flashtalk.kernels import load_op

    op_fn = load_op(impl.op)
    contract: OpContract = op_fn.contract
    fn = op_fn if impl.name == "flashtalk" else impl.fn
    rows: list[Row] = []
    hung = None
    for case in cases(impl.op, full):
        if match and match not in case.id:
            continue
        if hung is not None:
            rows.append(
                Row(impl.op, impl.name, case.id, None, None, False, f"not run: the implementation hung in {hung}")
            )
            continue
        rows.append(run_case(impl, fn, contract, case, timeout))
        if rows[-1].note.startswith("hang"):
            hung = case.id
    if rows and all(r.note.startswith("refused") for r in rows):
        for r in rows:
            r.passed = False
        rows[-1].note += "; it refused every case"
    return rows
