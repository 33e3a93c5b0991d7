"""The layers point one way: `kernels -> models -> (controls, weights) -> runtime -> serving / cli` (`profiling`
beside kernels; `samplers`, the file I/O in `io`, `faces` and `provenance` beside models; the commands in `cli`). Every import in
every module of the package, at module level or inside a function, is read with `ast` (nothing is imported)."""

from __future__ import annotations

import ast
from pathlib import Path

import flashtalk

PACKAGE = Path(flashtalk.__file__).resolve().parent

# rank of each part of the package; a module may import only parts of its own rank or below
RANKS = {
    "kernels": 0,
    "profiling": 0,
    "models": 1,
    "samplers": 1,
    "provenance": 1,
    "faces": 1,
    "io": 1,
    "controls": 2,
    "weights": 2,
    "runtime": 3,
    "serving": 4,
    "cli": 4,
    "jobs": 4,
    "golden": 4,
    "bench": 4,
    "client": 4,
    "integrations": 4,
    "__main__": 4,
}
SHARED = {"errors", "constants", "__init__"}  # importable from anywhere


def _part(module: str) -> str | None:
    """'flashtalk.models.liveportrait.optimized' -> 'models'; None for modules outside the package."""
    parts = module.split(".")
    if parts[0] != "flashtalk":
        return None
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(path: Path, module: str) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                pkg = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
                base = pkg[: len(pkg) - (node.level - 1)]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            out.append((node.lineno, name))
    return out


def _violations() -> list[str]:
    bad = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        module = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        src = _part(module)
        if src in SHARED:
            continue
        assert src in RANKS, f"{module}: add its part {src!r} to RANKS"
        for line, name in _imports(path, module):
            dst = _part(name)
            if dst is None or dst in SHARED or dst == src:
                continue
            assert dst in RANKS, f"{module}:{line} imports {name}: add {dst!r} to RANKS"
            if RANKS[dst] > RANKS[src]:
                bad.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {src} -> {dst} ({name})")
    return bad


def test_no_import_points_up_a_layer():
    bad = _violations()
    assert not bad, "imports against the layers:\n" + "\n".join(bad)


def test_the_walk_sees_function_level_imports(tmp_path):
    """The checker itself: a function-level import of the runtime from a model file is found."""
    path = tmp_path / "fake.py"
    path.write_text("def f():\n    from flashtalk.runtime.graphs import GraphRunner\n")
    assert _imports(path, "flashtalk.models.fake") == [(2, "flashtalk.runtime.graphs")]
    assert RANKS[_part("flashtalk.runtime.graphs")] > RANKS[_part("flashtalk.models.fake")]
