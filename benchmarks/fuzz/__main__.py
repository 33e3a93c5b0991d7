"""`python -m benchmarks.fuzz --seed S --cases N [--family F ...] [--budget-s B] [--json OUT]`

Runs the campaign of every family module in this package (each `benchmarks/fuzz/<family>.py` with a
`campaign(seed, n, budget_s) -> dict`; found at run time, so a new family needs no change here), N cases
and at most B seconds each, and prints one row per family: cases, ok, clean errors, crashes, hangs, the
slowest case, and each family's own metrics (the server family: the healthy session's frame rate and
latency). Exit status 1 when any family had a crash or a hang.
"""

from __future__ import annotations

import argparse
import importlib
import json
import pkgutil
import platform
import subprocess
import sys
import time
from pathlib import Path

NOT_FAMILIES = {"core", "__main__"}
STANDARD = ("family", "cases", "ok", "clean_error", "crash", "hang", "examples", "seconds", "slowest_case_s")


def families() -> list[str]:
    """Family module names found beside this file (modules defining `campaign`)."""
    here = Path(__file__).parent
    found = []
    for info in pkgutil.iter_modules([str(here)]):
        if info.name in NOT_FAMILIES or info.name.startswith(("_", "test")):
            continue
        module = importlib.import_module(f"{__package__}.{info.name}")
        if callable(getattr(module, "campaign", None)):
            found.append(info.name)
    return sorted(found)


def _extras(result: dict) -> str:
    parts = []
    for key, value in result.items():
        if key in STANDARD or isinstance(value, (list, dict)):
            continue
        parts.append(f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}")
    return " ".join(parts)


def table(results: list[dict]) -> str:
    head = f"{'family':<12} {'cases':>6} {'ok':>6} {'clean':>6} {'crash':>6} {'hang':>5} {'slowest s':>9} {'wall s':>7}  metrics"
    rows = [head, "-" * len(head)]
    for r in results:
        rows.append(
            f"{r['family']:<12} {r['cases']:>6} {r['ok']:>6} {r['clean_error']:>6} {r['crash']:>6} "
            f"{r['hang']:>5} {r.get('slowest_case_s', 0):>9.2f} {r.get('seconds', 0):>7.1f}  {_extras(r)}"
        )
        for example in r.get("examples", []):
            rows.append(f"    {example}")
    return "\n".join(rows)


def _commit() -> str:
    try:
        return (
            subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5
            ).stdout.strip()
            or "unknown"
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    known = families()
    p = argparse.ArgumentParser(prog="python -m benchmarks.fuzz", description=__doc__.splitlines()[2])
    p.add_argument("--seed", type=int, default=0, help="campaign seed (default 0)")
    p.add_argument("--cases", type=int, default=200, help="cases per family (default 200)")
    p.add_argument("--family", action="append", choices=known, help="run only these families (repeatable)")
    p.add_argument("--budget-s", type=float, default=600.0, help="wall-time budget per family in seconds")
    p.add_argument("--json", metavar="OUT", help="also write the results as JSON")
    args = p.parse_args(argv)
    if args.cases < 1 or args.budget_s <= 0:
        p.error("--cases and --budget-s must be positive")
    results = []
    start = time.time()
    for name in args.family or known:
        module = importlib.import_module(f"{__package__}.{name}")
        result = module.campaign(args.seed, args.cases, args.budget_s)
        results.append(result)
        print(table([result]).splitlines()[-1 - len(result.get("examples", []))], file=sys.stderr, flush=True)
    print(table(results))
    if args.json:
        conditions = {
            "seed": args.seed,
            "cases_per_family": args.cases,
            "budget_s": args.budget_s,
            "commit": _commit(),
            "python": platform.python_version(),
            "machine": platform.machine(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(start)),
            "command": " ".join(["python -m benchmarks.fuzz", *(argv if argv is not None else sys.argv[1:])]),
        }
        Path(args.json).write_text(json.dumps({"conditions": conditions, "families": results}, indent=1) + "\n")
    return 1 if any(r["crash"] or r["hang"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
