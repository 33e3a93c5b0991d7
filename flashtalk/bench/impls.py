"""`flashtalk bench --impl OP=IMPL[,IMPL...]`: other implementations of a kernel op beside ours.

Each implementation becomes one more provider, named ``OP=NAME``: on the op's own kernel cases it runs the
case's "flashtalk" call with the implementation swapped in (`use_impl`, the same dispatch the engine uses),
beside ours, eager, torch.compile and the op's baselines (SDPA backends, xformers); on the renderer, the
pipeline and streaming cases it runs the whole engine with it swapped in. A kernel record says whether its
output is correct: max |impl - eager| <= 2 (atol + rtol max|eager|) of the tolerance table at the case's dtype
(`flashtalk kernels verify` is the full check). `summary` gives, per implementation, the share of its op's
cases that are correct and faster than ours by more than p (KernelBench's fast_p) for p in `FAST_P`.
"""

from __future__ import annotations

from flashtalk.kernels.registry import Impl, parse_specs, resolve, use_impl

FAST_P = (1.0, 1.5, 2.0)
E2E_GROUPS = ("renderer", "pipeline", "stream")


def resolve_impls(items: list[str] | None) -> list[Impl]:
    return [resolve(op, name) for op, name in parse_specs(items or [], several=True)]


def case_op(case_name: str) -> str:
    return case_name.split("/")[0]


def select(cases: list, impls: list[Impl], cuda: bool) -> list:
    """With --impl and no --only / --case: the ops' kernel cases, then the renderer (batch 1 / 8 / 32 on
    CUDA), offline FPS and streaming aggregate FPS."""
    ops = {i.op for i in impls}
    renderer = ("renderer/B1", "renderer/B8", "renderer/B32") if cuda else ("renderer/B1",)
    return [
        c
        for c in cases
        if (c.group == "kernel" and case_op(c.name) in ops)
        or c.name in renderer
        or c.name in ("pipeline/offline_fps", "stream/aggregate_fps")
    ]


def _swapped(impl: Impl, fn):
    def run(i):
        with use_impl(impl.op, impl.name):
            return fn(i)

    return run


def add_providers(case, built, impls: list[Impl]) -> dict[str, Impl]:
    """Add an `OP=NAME` provider per implementation that applies to `case`; {provider: impl}."""
    ours = built.providers.get("flashtalk")
    added = {}
    for impl in impls:
        if case.group == "kernel" and case_op(case.name) != impl.op:
            continue
        if case.group not in ("kernel", *E2E_GROUPS):
            continue
        name = f"{impl.op}={impl.name}"
        built.providers[name] = _swapped(impl, ours) if callable(ours) else "our provider is not measured here"
        added[name] = impl
    return added


def check_output(built, provider: str, dtype: str) -> tuple[bool | None, float | None]:
    """(correct, max error) of a kernel provider's output on input set 0 against the eager reference."""
    import torch

    from flashtalk.kernels.contract import as_outputs
    from flashtalk.kernels.tolerance import TOLERANCES

    eager = built.providers.get("eager")
    if not callable(eager):
        return None, None
    with torch.no_grad():
        got, ref = as_outputs(built.providers[provider](0)), as_outputs(eager(0))
    worst, ok = 0.0, True
    tol = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(dtype, torch.float32)
    atol, rtol = TOLERANCES[tol]
    for a, b in zip(got, ref):
        if not isinstance(b, torch.Tensor):
            continue
        if not isinstance(a, torch.Tensor) or a.shape != b.shape:
            return False, None
        a, b = a.double(), b.double()
        if not torch.isfinite(a).all():
            return False, float("inf")
        err = float((a - b).abs().max()) if a.numel() else 0.0
        bound = 1.0 if dtype.endswith("uint8") else 2 * (atol + rtol * float(b.abs().max() if b.numel() else 0))
        worst, ok = max(worst, err), ok and err <= bound
    return ok, worst


def annotate(records: list[dict], added: dict[str, Impl], built, calls_before: dict[str, int]) -> None:
    """Name the implementation in its records; correctness and speed-up vs ours on kernel cases."""
    ours = next((r for r in records if r["provider"] == "flashtalk" and r.get("status") == "ok"), None)
    for rec in records:
        impl = added.get(rec["provider"])
        if impl is None:
            continue
        rec.update(impl=impl.name, impl_package=impl.package, impl_version=impl.version, impl_target=impl.target)
        rec["impl_calls"] = impl.calls - calls_before[rec["provider"]]
        if rec["impl_calls"] == 0 and rec.get("status") == "ok":
            rec["note"] = (rec.get("note") or "") + f"; {impl.op} was not called on this path (same as ours)"
        if rec.get("status") != "ok":
            continue
        if rec["group"] == "kernel":
            try:
                rec["correct"], rec["max_error"] = check_output(built, rec["provider"], rec["dtype"])
            except Exception:  # a failing output check is an incorrect implementation, not a crashed bench
                rec["correct"], rec["max_error"] = False, None
        if ours and ours.get("value") and rec.get("value"):
            a, b = rec["value"], ours["value"]
            rec["speedup_vs_flashtalk"] = (b / a) if rec["unit"] == "ms" else (a / b)


def summary(records: list[dict], impls: list[Impl]) -> list[dict]:
    """Per implementation: its op's kernel cases, how many correct, fast_p shares, end-to-end ratios."""
    out = []
    for impl in impls:
        name = f"{impl.op}={impl.name}"
        mine = [r for r in records if r["provider"] == name]
        kernel = [r for r in mine if r["group"] == "kernel"]
        n = len(kernel)
        fast = {
            f"fast_{p:g}": (
                sum(1 for r in kernel if r.get("correct") and (r.get("speedup_vs_flashtalk") or 0) > p) / n
                if n
                else None
            )
            for p in FAST_P
        }
        out.append(
            {
                "op": impl.op,
                "impl": impl.name,
                "target": impl.target,
                "package": impl.package,
                "version": impl.version,
                "kernel_cases": n,
                "correct": sum(1 for r in kernel if r.get("correct")),
                **fast,
                "end_to_end": {r["case"]: r.get("speedup_vs_flashtalk") for r in mine if r["group"] != "kernel"},
            }
        )
    return out
