"""`flashtalk kernels check`: compile, ahead of time and without a GPU, every kernel variant the launchers
pick for the production shapes (plus the tuning alternatives), for a CUDA architecture, with the installed
Triton; report per variant: compiled or the error, registers, shared memory, spill bytes, and the tensor-core
instructions used (`wgmma`, `mma.sync` or none).

    flashtalk kernels check --arch sm_90 --json kernels.json

Where the variants come from: every kernel file in `flashtalk/kernels/` declares them in one function,

    def compile_variants() -> list[Variant]:
        return [Variant("motion self-attention B64 H8 L110 D32 bf16", lambda: _launch(...meta tensors...)), ...]

each a zero-argument call of the file's own launcher on meta tensors (shape, dtype and strides, no data);
a file without it is a failing row (a helper module without kernels starts with `_` or is listed in
NOT_KERNEL_FILES).
The check runs those calls with every kernel launch captured instead of executed, then compiles each captured
launch exactly as `JITFunction.run` would on the GPU (triton's own argument specialisation, constexprs,
warps and stages) for the target instead of the current device. So the check and production cannot
disagree: both go through the same launcher and launch tables. `production=False` marks a tuning
alternative: it must compile, but it may spill or exceed the shared memory (it is reported, not failed).
"""

from __future__ import annotations

import contextlib
import importlib
import io
import os
import pkgutil
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

from flashtalk.errors import FlashTalkError

# shared memory a block may use (opt-in maximum), bytes
SMEM_LIMIT: dict[str, int] = {"sm_80": 166912, "sm_86": 101376, "sm_89": 101376, "sm_90": 232448}
NOT_KERNEL_FILES = {  # the modules of flashtalk/kernels/ that hold no kernel
    "cases", "check", "conformance", "contract", "dispatch", "registry", "tolerance", "triton_compat",
}


@dataclass(frozen=True)
class Variant:
    """One launch a kernel file makes in production (or a tuning alternative of it)."""

    name: str  # the call it stands for: model, stage, shape, dtype
    launch: Callable[[], object]  # the file's own launcher on meta tensors
    production: bool = True


def meta(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A data-less tensor for `compile_variants` (permute / slice it to give production strides)."""
    return torch.empty(shape, dtype=dtype, device="meta")


@dataclass
class Result:
    file: str
    variant: str
    production: bool
    kernel: str = ""
    constexprs: dict = field(default_factory=dict)
    num_warps: int | None = None
    num_stages: int | None = None
    compiled: bool = False
    error: str | None = None
    registers: int | None = None
    shared_bytes: int | None = None
    spill_bytes: int | None = None  # spill stores + spill loads, per thread
    tensor_cores: str = "none"  # "wgmma", "mma.sync" or "none"
    compile_s: float = 0.0
    same_as: str | None = None  # an earlier variant that specialises to the same binary (not compiled again)

    def problems(self, smem_limit: int) -> list[str]:
        """Why this result fails the check (a production variant: any of them; an alternative: compile only)."""
        if not self.compiled:
            return [f"compile error: {self.error}"]
        if not self.production:
            return []
        out = []
        if self.shared_bytes is not None and self.shared_bytes > smem_limit:
            out.append(f"shared memory {self.shared_bytes} B > the limit {smem_limit} B")
        if self.spill_bytes:
            out.append(f"{self.spill_bytes} bytes of register spills")
        if self.registers is None:
            out.append("ptxas reported no register count")
        return out


def kernel_files() -> list[str]:
    """Short names of the kernel files in flashtalk/kernels/ (every module but the helpers)."""
    import flashtalk.kernels as pkg

    return sorted(
        m.name
        for m in pkgutil.iter_modules(pkg.__path__)
        if not m.name.startswith("_") and m.name not in NOT_KERNEL_FILES
    )


@contextlib.contextmanager
def _captured() -> Iterator[list[tuple]]:
    """Kernel launches recorded as (kernel, args, kwargs) instead of run; the GPU code path of the launchers
    (no interpreter block sizes or interpreter workarounds)."""
    from flashtalk.kernels.triton_compat import _Kernel

    launches: list[tuple] = []

    def record(kernel, *args, grid, warmup, **kwargs):
        launches.append((kernel, args, kwargs))

    saved, own_run = os.environ.get("TRITON_INTERPRET"), _Kernel.run
    os.environ["TRITON_INTERPRET"] = "0"
    _Kernel.run = record
    try:
        yield launches
    finally:
        _Kernel.run = own_run
        if saved is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = saved


@contextlib.contextmanager
def _env(**values: str) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


_REGS = re.compile(r"Used (\d+) registers")
_SPILL = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")


def _specialise(kernel, args: tuple, kwargs: dict, target, result: Result) -> tuple:
    """What JITFunction.run would compile for this launch on a GPU of `target`: (source, options, cache key),
    with the kernel name, constexprs, warps and stages filled into `result`."""
    from triton.compiler import ASTSource, make_backend
    from triton.runtime import jit

    if not hasattr(jit, "create_function_from_signature") or not hasattr(kernel, "_pack_args"):
        raise FlashTalkError(
            f"this triton ({triton_version()}) lacks the JITFunction internals the compile "
            "check uses (create_function_from_signature, _pack_args): it supports triton 3.6 to 3.9"
        )
    backend = make_backend(target)
    kwargs = dict(kwargs)
    kwargs.setdefault("debug", bool(getattr(kernel, "debug", False)))
    binder = jit.create_function_from_signature(kernel.signature, kernel.params, backend)
    bound, specialization, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = kernel._pack_args(backend, kwargs, bound, specialization, options)
    names = list(bound)
    result.kernel = kernel.fn.__name__
    result.constexprs = {names[path[0]]: _plain(v) for path, v in constexprs.items() if len(path) == 1}
    result.num_warps, result.num_stages = options.num_warps, options.num_stages
    key = (id(kernel), repr(signature), repr(sorted(constexprs.items())), repr(sorted(attrs.items())), repr(options))
    return ASTSource(kernel, signature, constexprs, attrs), options, key


def _compile(src, options, target, result: Result) -> None:
    """Compile for `target` and read registers and spills from ptxas's log, shared memory from the metadata,
    tensor-core instructions from the PTX."""
    from triton.compiler import compile

    log = io.StringIO()
    t0 = time.perf_counter()
    try:
        # a fresh compile (not the cache) so ptxas runs and prints its resource log
        with _env(TRITON_ALWAYS_COMPILE="1", TRITON_DUMP_PTXAS_LOG="1"), contextlib.redirect_stdout(log):
            compiled = compile(src, target=target, options=options.__dict__)
    except Exception as exc:
        result.error = _one_line(exc)
        return
    finally:
        result.compile_s = round(time.perf_counter() - t0, 3)
    result.compiled = True
    text = log.getvalue()
    regs, spills = _REGS.findall(text), _SPILL.findall(text)
    result.registers = max(map(int, regs)) if regs else None
    result.spill_bytes = sum(int(a) + int(b) for a, b in spills) if spills else None
    result.shared_bytes = int(getattr(compiled.metadata, "shared", 0))
    ptx = compiled.asm.get("ptx", "")
    result.tensor_cores = "wgmma" if "wgmma." in ptx else "mma.sync" if "mma.sync" in ptx else "none"


def _plain(v):
    v = getattr(v, "value", v)
    return v if isinstance(v, (bool, int, float, str, type(None))) else str(v)


def _one_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    return f"{type(exc).__name__}: {lines[-1][:200] if lines else ''}"


def triton_version() -> str:
    import triton

    return triton.__version__


def _launches(name: str, match: str | None, target):
    """(variant index, variant, [(launch index, result, source, options, key)] or an error Result) of a file."""
    module = importlib.import_module(f"flashtalk.kernels.{name}")
    declare = getattr(module, "compile_variants", None)
    if declare is None:
        yield (
            -1,
            None,
            Result(name, "(none declared)", True, error=f"flashtalk/kernels/{name}.py declares no compile_variants()"),
        )
        return
    for vi, variant in enumerate(declare()):
        if match and match not in variant.name:
            continue
        with _captured() as launches:
            try:
                variant.launch()
            except Exception as exc:
                yield vi, variant, Result(name, variant.name, variant.production, error=f"launcher: {_one_line(exc)}")
                continue
        if not launches:
            yield vi, variant, Result(name, variant.name, variant.production, error="the launcher launched no kernel")
            continue
        specialised = []
        for li, (kernel, args, kwargs) in enumerate(launches):
            result = Result(name, variant.name, variant.production)
            try:
                specialised.append((li, result, *_specialise(kernel, args, kwargs, target, result)))
            except FlashTalkError:
                raise
            except Exception as exc:
                result.error = _one_line(exc)
                specialised.append((li, result, None, None, None))
        yield vi, variant, specialised


def _target(arch: str):
    from triton.backends.compiler import GPUTarget

    return GPUTarget("cuda", int(arch.removeprefix("sm_")), 32)


def _compile_job(arch: str, name: str, vi: int, li: int) -> Result:
    """In a worker process: capture, specialise and compile launch `li` of variant `vi` of kernel file `name`."""
    target = _target(arch)
    for index, _, launches in _launches(name, None, target):
        if index == vi:
            _, result, src, options, _ = launches[li]
            _compile(src, options, target, result)
            return result
    raise AssertionError(f"{name}: variant {vi} not found")


def check(arch: str = "sm_90", files: list[str] | None = None, match: str | None = None, jobs: int = 1) -> list[Result]:
    """Compile every declared variant of the kernel files (all by default) for `arch`; each distinct binary
    once, on `jobs` worker processes."""
    if arch not in SMEM_LIMIT:
        raise FlashTalkError(f"--arch {arch!r} is not one of {', '.join(SMEM_LIMIT)}")
    if jobs < 1:
        raise FlashTalkError(f"--jobs must be >= 1, got {jobs}")
    try:
        import triton  # noqa: F401
    except ImportError:
        raise FlashTalkError("the compile check needs triton: pip install 'flashtalk[triton]'") from None
    target = _target(arch)
    known = kernel_files()
    for f in files or []:
        if f not in known:
            raise FlashTalkError(f"--file {f!r} is not a kernel file; they are: {', '.join(known)}")
    results: list[Result] = []
    first: dict[tuple, Result] = {}  # cache key -> the result that compiles it
    todo: list[tuple] = []  # (result, source, options, (file, variant index, launch index))
    dupes: list[tuple[Result, Result]] = []  # (a result, the earlier one with the same binary)
    for name in files or known:
        for vi, _, launches in _launches(name, match, target):
            if isinstance(launches, Result):
                results.append(launches)
                continue
            for li, result, src, options, key in launches:
                results.append(result)
                if key is None:
                    continue
                if key in first:
                    result.same_as = first[key].variant
                    dupes.append((result, first[key]))
                else:
                    first[key] = result
                    todo.append((result, src, options, (name, vi, li)))
    if jobs == 1 or len(todo) < 2:
        for result, src, options, _ in todo:
            _compile(src, options, target, result)
    else:
        import concurrent.futures
        import multiprocessing

        with concurrent.futures.ProcessPoolExecutor(
            min(jobs, len(todo)), mp_context=multiprocessing.get_context("spawn")
        ) as pool:
            futures = [(result, pool.submit(_compile_job, arch, *where)) for result, _, _, where in todo]
            for result, future in futures:
                done = future.result()
                for f in ("compiled", "error", "registers", "shared_bytes", "spill_bytes", "tensor_cores", "compile_s"):
                    setattr(result, f, getattr(done, f))
    for r, src in dupes:  # the same binary as an earlier launch (e.g. another batch size): its figures
        for f in ("compiled", "error", "registers", "shared_bytes", "spill_bytes", "tensor_cores"):
            setattr(r, f, getattr(src, f))
    return results


# ------------------------------------------------------------------------------------------------ CLI

COLUMNS = ("file", "variant", "kernel", "warps", "stages", "regs", "smem B", "spill B", "tensor cores", "status")


def table(results: list[Result], smem_limit: int) -> str:
    rows = [list(COLUMNS)]
    for r in results:
        problems = r.problems(smem_limit)
        status = "ok" if not problems else "FAIL: " + "; ".join(problems)
        if r.compiled and not r.production:
            status += " (tuning alternative)"
        if r.same_as:
            status += f" (same binary as: {r.same_as})"
        rows.append(
            [
                r.file,
                r.variant,
                r.kernel,
                *(
                    str(x) if x is not None else "-"
                    for x in (r.num_warps, r.num_stages, r.registers, r.shared_bytes, r.spill_bytes)
                ),
                r.tensor_cores if r.compiled else "-",
                status,
            ]
        )
    widths = [min(max(len(row[i]) for row in rows), 56) for i in range(len(COLUMNS) - 1)]
    return "\n".join("  ".join(c[:w].ljust(w) for c, w in zip(row, widths)) + "  " + row[-1] for row in rows)
