"""Implementations of the kernel ops: ours, the reference, and any a researcher registers.

Every op (`flashtalk.kernels.OPS`) has two built-in implementations: ``flashtalk`` (our op: Triton where the
dispatch allows it, else the reference, with the reason) and ``reference`` (the pure-PyTorch `<op>_ref`).
Others come from

* Python: `register(op, name, fn)`;
* an installed package's entry points in the group ``flashtalk.kernels``: entry name ``OP.NAME``, value
  ``module:function`` (listed by `implementations()`, imported when first asked for; one that fails to
  import is listed with its error, the others are not affected);
* ``module:function`` wherever an implementation is named (imported on the spot).

Which implementation serves an op, for the whole process: the innermost `use_impl(op, name)` block, else the
``OP=IMPL`` items of `FLASHTALK_KERNELS` (e.g. ``FLASHTALK_KERNELS=attention=byo.sdpa``), else ours. The op's
public function (decorated with `flashtalk.kernels.contract.dispatched`) checks the inputs, calls the chosen
implementation with the op's own arguments and checks the outputs' shapes and dtypes; an implementation that
cannot serve a call raises `Unsupported(reason)` and the reference runs, with the reason recorded
(`last_choice(op)`, `flashtalk info`).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from flashtalk.errors import FlashTalkError
from flashtalk.kernels import OPS
from flashtalk.kernels.dispatch import ENV_MODE, env_impls

GROUP = "flashtalk.kernels"
BUILTIN = ("flashtalk", "reference")
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")


class Unsupported(Exception):
    """Raised by an implementation that does not serve this call (a shape, a dtype): the reference runs
    instead and `last_choice(op).reason` says why."""


@dataclass
class Impl:
    op: str
    name: str
    target: str  # module:function, or what it is ("ours", "<op>_ref")
    origin: str  # "flashtalk" | "python" | "entry point" | "import"
    fn: Callable | None = None  # None: ours (the op's own dispatch), or an entry point not yet loaded
    package: str | None = None
    version: str | None = None
    error: str | None = None  # why an entry point could not be loaded
    calls: int = field(default=0, compare=False)  # calls served since the process started

    @property
    def label(self) -> str:
        pkg = f" ({self.package} {self.version})" if self.package else ""
        return f"{self.name}{pkg}"


_lock = threading.RLock()
_registered: dict[str, dict[str, Impl]] = {op: {} for op in OPS}
_entry_points: dict[str, dict[str, Impl]] | None = None
_overrides: list[tuple[str, Impl]] = []  # use_impl stack, process-wide (the engine runs on its own threads)


def _check_op(op: str) -> None:
    if op not in OPS:
        raise FlashTalkError(f"unknown kernel op {op!r} (known: {', '.join(OPS)})")


def _distribution(module: str) -> tuple[str | None, str | None]:
    """(distribution name, version) that provides top-level module `module`, or (None, None)."""
    try:
        dists = importlib.metadata.packages_distributions().get(module.split(".")[0]) or []
        if dists:
            return dists[0], importlib.metadata.version(dists[0])
    except Exception:  # metadata of a broken install: not our concern here
        pass
    return None, None


def register(op: str, name: str, fn: Callable) -> Impl:
    """Register `fn` as implementation `name` of `op`; it is called with the op's own arguments (see the op's
    contract: `flashtalk kernels list`)."""
    _check_op(op)
    if not _NAME.match(name or "") or name in BUILTIN:
        raise FlashTalkError(f"implementation name {name!r}: use letters, digits, '_', '.', '-' (not {BUILTIN})")
    if not callable(fn):
        raise FlashTalkError(f"register({op!r}, {name!r}, ...): {fn!r} is not callable")
    module = getattr(fn, "__module__", None) or ""
    package, version = _distribution(module)
    impl = Impl(op, name, f"{module}:{getattr(fn, '__qualname__', repr(fn))}", "python", fn, package, version)
    with _lock:
        _registered[op][name] = impl
    return impl


def _load_entry_points() -> dict[str, dict[str, Impl]]:
    global _entry_points
    with _lock:
        if _entry_points is not None:
            return _entry_points
        found: dict[str, dict[str, Impl]] = {}
        for ep in importlib.metadata.entry_points(group=GROUP):
            op, _, name = ep.name.partition(".")
            dist = getattr(ep, "dist", None)
            impl = Impl(
                op, name, ep.value, "entry point", None, dist.name if dist else None, dist.version if dist else None
            )
            if op not in OPS or not name:
                impl.error = f"entry point {ep.name!r} is not OP.NAME with OP one of {', '.join(OPS)}"
            found.setdefault(op, {})[name or ep.name] = impl
        _entry_points = found
        return found


def _load(impl: Impl) -> Impl:
    """Import an entry point's function (once); a failure is kept in `impl.error`, never raised."""
    if impl.fn is None and impl.error is None and impl.origin == "entry point":
        try:
            impl.fn = _import(impl.target)
        except FlashTalkError as exc:
            impl.error = str(exc)
    return impl


def _import(target: str) -> Callable:
    module, _, attr = target.partition(":")
    try:
        obj = importlib.import_module(module.strip())
        for part in attr.strip().split("."):
            obj = getattr(obj, part)
    except Exception as exc:  # any import-time failure of someone else's code: one line, named
        raise FlashTalkError(f"cannot import {target}: {type(exc).__name__}: {exc}") from None
    if not callable(obj):
        raise FlashTalkError(f"{target} is not callable")
    return obj


_builtins: dict[tuple[str, str], Impl] = {}


def _builtin(op: str, name: str) -> Impl:
    """Ours ("flashtalk") or the reference of `op` (one object each, so their call counts add up)."""
    key = (op, name)
    if key not in _builtins:
        module = OPS[op]
        if name == "flashtalk":
            _builtins[key] = Impl(op, name, f"{module}:{op}", "flashtalk")
        else:
            ref = getattr(importlib.import_module(module), f"{op}_ref")
            _builtins[key] = Impl(op, name, f"{module}:{op}_ref", "flashtalk", ref)
    return _builtins[key]


def implementations(op: str | None = None, *, load: bool = True) -> list[Impl]:
    """Every implementation of `op` (or of every op): built-in, registered, entry points (imported when
    `load`, a broken one carrying its `error`)."""
    ops = [op] if op else list(OPS)
    eps = _load_entry_points()
    out: list[Impl] = []
    for o in ops:
        if o in OPS:
            out += [_builtin(o, n) for n in BUILTIN] + list(_registered[o].values())
        out += [_load(i) if load else i for n, i in eps.get(o, {}).items() if n not in _registered.get(o, {})]
    if op is None:  # entry points naming an unknown op are listed too (with their error)
        out += [i for o, named in eps.items() if o not in OPS for i in named.values()]
    return out


_resolved: dict[tuple[str, str], Impl] = {}


def resolve(op: str, spec: str) -> Impl:
    """The implementation `spec` of `op`: a built-in or registered name, an entry point's NAME, or
    `module:function` (imported now). Raises FlashTalkError naming what is wrong."""
    _check_op(op)
    spec = spec.strip()
    if spec in BUILTIN:
        return _builtin(op, spec)
    with _lock:
        if spec in _registered[op]:
            return _registered[op][spec]
        ep = _load_entry_points().get(op, {}).get(spec)
        if ep is not None:
            _load(ep)
            if ep.error:
                raise FlashTalkError(f"{op}={spec}: entry point {ep.target} is broken: {ep.error}")
            return ep
        if ":" in spec:
            if (op, spec) not in _resolved:
                fn = _import(spec)
                package, version = _distribution(spec.partition(":")[0])
                _resolved[(op, spec)] = Impl(op, spec, spec, "import", fn, package, version)
            return _resolved[(op, spec)]
    known = [i.name for i in implementations(op) if not i.error]
    raise FlashTalkError(f"{op}: no implementation named {spec!r} (known: {', '.join(known)}; or give module:function)")


def parse_specs(items: list[str], *, several: bool = False) -> list[tuple[str, str]]:
    """[(op, impl)] from command-line items `OP=IMPL` (with `several`: `OP=IMPL[,IMPL...]`)."""
    out = []
    for item in items:
        op, sep, rest = item.partition("=")
        names = [n.strip() for n in (rest.split(",") if several else [rest])]
        if not sep or not op.strip() or not all(names):
            raise FlashTalkError(f"{item!r}: expected OP=IMPL{'[,IMPL...]' if several else ''}")
        _check_op(op.strip())
        out += [(op.strip(), n) for n in names]
    return out


@contextlib.contextmanager
def use_impl(op: str, name: str) -> Iterator[Impl]:
    """Run the block (every thread of the process) with implementation `name` serving `op`."""
    impl = resolve(op, name)
    with _lock:
        _overrides.append((op, impl))
    try:
        yield impl
    finally:
        with _lock:
            _overrides.remove((op, impl))


def selected(op: str) -> Impl | None:
    """The implementation chosen for `op` by `use_impl` or `FLASHTALK_KERNELS`, or None for ours."""
    for o, impl in reversed(_overrides):
        if o == op:
            return None if impl.name == "flashtalk" else impl
    spec = env_impls().get(op)
    if spec is None or spec == "flashtalk":
        return None
    try:
        return resolve(op, spec)
    except FlashTalkError as exc:
        raise FlashTalkError(f"{ENV_MODE}: {exc}") from None


def check_environment() -> dict[str, Impl]:
    """Resolve every `OP=IMPL` of `FLASHTALK_KERNELS` now (so a typo fails before any work), {op: impl}."""
    out = {}
    for op in env_impls():
        if op not in OPS:
            raise FlashTalkError(f"{ENV_MODE}: unknown kernel op {op!r} (known: {', '.join(OPS)})")
        impl = selected(op)
        if impl is not None:
            out[op] = impl
    return out


def in_use() -> dict[str, str]:
    """{op: the implementation serving it now, with package and version when known} for every op."""
    return {op: (impl.label if (impl := selected(op)) else "flashtalk") for op in OPS}
