"""`flashtalk bench --suite gpu --out DIR --budget-s 480 [--smoke]`: everything a short GPU lease should check
and measure, in one command on a fresh machine (cold Triton cache), most important first:

1. the `gpu` tests (`pytest -m gpu`: every kernel against its reference compiled on CUDA in fp32 / fp16 / bf16,
   the CUDA-graph captures with the Triton kernels inside, fast-path fidelity), one pytest per test file in
   parallel so Triton's compiles use the machine's cores;
2. the renderer at batch 1 / 8 / 32 (FlashTalk's bf16 fast path against PyTorch eager of the same model);
3. one motion window, sampling loop CUDA-graph captured;
4. the offline pipeline, FPS at full size with seeded weights;
5. N streaming sessions: aggregate FPS and latency, and first-frame latency;
6. attention at the model's shapes against SDPA's backends (and xformers if installed).

Each step starts only if it still fits, and a measurement still running when the budget ends is interrupted:
the run stops itself before `--budget-s`, and every step or provider that did not fit is a row naming why. torch.compile providers run only while at least half the budget is
left (their compile time is the record's `warmup_s`). Writes DIR/results.json (the `flashtalk bench` report
format, every record carrying GPU, driver, torch / triton / CUDA versions, commit, command and date, plus a
`suite` section), DIR/summary.md and DIR/plots.png, and prints a short table last.
`--smoke` runs the same steps on the CPU at tiny sizes (CI checks the plumbing; CPU figures are not GPU ones).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, replace
from pathlib import Path

from flashtalk.errors import FlashTalkError

DEFAULT_BUDGET_S = 480.0
TESTS_SHARE = 0.4  # the gpu tests may use at most this fraction of the budget
COMPILE_WHILE_LEFT = 0.5  # torch.compile providers only while this fraction of the budget is left
RESERVE_S = 10.0  # kept for writing the outputs


@dataclass(frozen=True)
class Step:
    name: str
    gpu_cases: tuple[str, ...]
    smoke_cases: tuple[str, ...]


ATTENTION_GPU = (
    "attention/motion-B2-H8-L110-D32",
    "attention/motion-B16-H8-L110-D32",
    "attention/motion-B64-H8-L110-D32",
    "attention/audio-B1-H12-L200-D64",
    "attention/audio-B8-H12-L1000-D64-keypad",
)
STEPS = (
    Step("renderer", ("renderer/B1", "renderer/B8", "renderer/B32"), ("renderer/B1",)),
    Step("motion window (graph-captured)", ("stage/motion_window",), ("stage/motion_window",)),
    Step("offline pipeline", ("pipeline/offline_fps",), ("pipeline/offline_fps",)),
    Step(
        "streaming sessions",
        ("stream/aggregate_fps", "stream/first_frame_latency"),
        ("stream/aggregate_fps", "stream/first_frame_latency"),
    ),
    Step("attention vs SDPA", ATTENTION_GPU, ("attention/cpu-B2-H2-L37-D16-keypad",)),
    Step("fused warping tail vs cuDNN Conv3d + deform_warp", ("warp_tail/B1", "warp_tail/B8"), ("warp_tail/B1",)),
)


# ------------------------------------------------------------------------------------------------ gpu tests


def find_tests(given: str | None) -> Path | None:
    """The tests/ folder: --tests, else ./tests, else the one beside the package's source checkout (recognised by
    its conftest.py and kernels/test_check.py)."""
    if given:
        path = Path(given)
        if not (path / "conftest.py").is_file():
            raise FlashTalkError(f"--tests {given}: no conftest.py there (give the checkout's tests/ folder)")
        return path.resolve()
    for path in (Path.cwd() / "tests", Path(__file__).resolve().parents[2] / "tests"):
        if (path / "conftest.py").is_file() and (path / "kernels" / "test_check.py").is_file():
            return path
    return None


def gpu_test_files(tests: Path) -> list[Path]:
    """Test files with GPU tests, in every folder of tests/: those using the kernel_device fixture or the gpu marker."""
    return sorted(
        p for p in tests.rglob("test_*.py") if "kernel_device" in (text := p.read_text()) or "mark.gpu" in text
    )


def _junit(path: Path) -> dict:
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return {"passed": 0, "failed": 0, "skipped": 0, "failures": [], "note": "no report (killed?)"}
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    failures = []
    for suite in root.iter("testsuite"):
        for k in counts:
            counts[k] += int(suite.get(k, 0))
    for case in root.iter("testcase"):
        if case.find("failure") is not None or case.find("error") is not None:
            failures.append(f"{case.get('classname')}::{case.get('name')}")
    bad = counts["failures"] + counts["errors"]
    return {
        "passed": counts["tests"] - bad - counts["skipped"],
        "failed": bad,
        "skipped": counts["skipped"],
        "failures": failures,
    }


def run_gpu_tests(tests: Path, out: Path, seconds: float, parallel: int) -> dict:
    """`pytest -m gpu` over the GPU test files, `parallel` pytest processes at a time (one file each; one
    process for all when parallel == 1), stopped (by PID) when `seconds` run out."""
    files = gpu_test_files(tests)
    log_dir = out / "tests"
    log_dir.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    t0 = time.perf_counter()
    deadline = t0 + seconds
    groups = [[str(f) for f in files]] if parallel == 1 else _shards(files, tests, out, env, parallel, seconds)
    pending, running, results, killed = list(enumerate(groups)), [], [], []
    while pending or running:
        while pending and len(running) < parallel:
            i, group = pending.pop(0)
            xml = log_dir / f"junit-{i}.xml"
            cmd = [
                sys.executable,
                "-m",
                "pytest",
                "-q",
                "-m",
                "gpu",
                "-p",
                "no:cacheprovider",
                "--import-mode=append",
                f"--rootdir={tests.parent}",
                f"--junitxml={xml.resolve()}",
                *group,
            ]
            log = open(log_dir / f"pytest-{i}.log", "w")
            # run from the output folder, not the checkout, so an installed flashtalk is the one tested
            proc = subprocess.Popen(cmd, cwd=out, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            running.append((proc, log, xml, group))
        time.sleep(0.2)
        for item in list(running):
            proc, log, xml, group = item
            if proc.poll() is None and time.perf_counter() > deadline:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                killed += [g for g in _file_names(group, tests) if g not in killed]
            if proc.poll() is not None:
                log.close()
                running.remove(item)
                result = _junit(xml)
                if "note" in result and not any(g in killed for g in _file_names(group, tests)):
                    result.update(  # pytest ended by itself without a report: a failure, never a silent "ok"
                        failed=1,
                        failures=[
                            f"{', '.join(_file_names(group, tests))}: pytest exited {proc.returncode} without a report"
                        ],
                    )
                results.append(result)
        if time.perf_counter() > deadline and pending:
            killed += [g for _, grp in pending for g in _file_names(grp, tests) if g not in killed]
            pending = []
    summary = {k: sum(r[k] for r in results) for k in ("passed", "failed", "skipped")}
    summary.update(
        failures=[f for r in results for f in r["failures"]],
        files=[f.relative_to(tests).as_posix() for f in files],
        not_finished=killed,
        wall_s=round(time.perf_counter() - t0, 1),
        logs=str(log_dir.name),
    )
    return summary


def _file_names(group: list[str], tests: Path) -> list[str]:
    """The test files of `group`, relative to the tests/ folder (tests/models/ and tests/weights/ both have a
    test_hubert.py)."""
    paths = (Path(g.split("::")[0]) for g in group)
    return list(dict.fromkeys(p.relative_to(tests).as_posix() if p.is_relative_to(tests) else p.name for p in paths))


def _shards(files: list[Path], tests: Path, out: Path, env: dict, parallel: int, seconds: float) -> list[list[str]]:
    """The gpu test ids in `parallel` groups of about equal size (a big file split, small files whole), so
    the Triton compiles of one file spread over processes; whole files if collection fails."""
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "--collect-only",
        "-q",
        "-m",
        "gpu",
        "-p",
        "no:cacheprovider",
        "--import-mode=append",
        f"--rootdir={tests.parent}",
        *map(str, files),
    ]
    try:
        text = subprocess.run(
            cmd, cwd=out, env=env, capture_output=True, text=True, timeout=max(10.0, seconds / 4)
        ).stdout
    except subprocess.TimeoutExpired:
        text = ""
    ids = [line.strip() for line in text.splitlines() if "::" in line and not line.startswith(" ")]
    if not ids:
        return [[str(f)] for f in files]
    by_file: dict[str, list[str]] = {}
    for i in ids:
        by_file.setdefault(i.split("::")[0], []).append(i)
    size = -(-len(ids) // parallel)
    chunks = [
        ids_[k : k + size]
        for ids_ in sorted(by_file.values(), key=len, reverse=True)
        for k in range(0, len(ids_), size)
    ]
    groups: list[list[str]] = [[] for _ in range(parallel)]
    for c in sorted(chunks, key=len, reverse=True):  # the small files packed in beside the big chunks
        min(groups, key=len).extend(c)
    return [[i if Path(i.split("::")[0]).is_absolute() else f"{tests.parent}/{i}" for i in g] for g in groups if g]


class BudgetExceeded(TimeoutError):
    """Raised inside a measurement when the suite's budget runs out (it becomes that provider's row)."""


@contextlib.contextmanager
def _hard_stop(seconds: float):
    """Interrupt the block (SIGALRM, main thread) after `seconds`: a case that would overrun the budget stops."""

    def alarm(signum, frame):
        raise BudgetExceeded("the --budget-s budget ran out during this measurement")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.5))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# ------------------------------------------------------------------------------------------------ the suite


def run_suite(args: argparse.Namespace) -> int:
    import torch

    from flashtalk.bench import harness, registry
    from flashtalk.bench import impls as bench_impls
    from flashtalk.bench import report as reporting

    if not args.out:
        raise FlashTalkError("--suite gpu needs --out DIR")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise FlashTalkError(f"--out {args.out} is a file, not a folder")
    smoke = bool(args.smoke)
    device = "cpu" if smoke else "cuda"
    if not smoke and not torch.cuda.is_available():
        raise FlashTalkError("--suite gpu needs a CUDA GPU (none is visible); --smoke runs its steps on the CPU")
    out.mkdir(parents=True, exist_ok=True)
    budget = args.budget_s or (120.0 if smoke else DEFAULT_BUDGET_S)
    start = time.perf_counter()
    end = start + budget - RESERVE_S
    env = harness.environment(device, harness.command_argv(args))
    env["suite"] = "gpu-smoke" if smoke else "gpu"
    for line in reporting.header_lines(env):
        print(line)
    steps: list[dict] = []

    tests = find_tests(args.tests)
    tests_summary = None
    if tests is None:
        steps.append(
            {
                "step": "gpu tests",
                "status": "skipped",
                "reason": "no tests/ folder here (a wheel install: pass --tests CHECKOUT/tests)",
            }
        )
    elif importlib.util.find_spec("pytest") is None:
        steps.append(
            {
                "step": "gpu tests",
                "status": "skipped",
                "reason": "pytest is not installed: pip install 'flashtalk[test]'",
            }
        )
    else:
        share = min(budget * TESTS_SHARE, end - time.perf_counter())
        print(f"\n[gpu tests] pytest -m gpu over {tests}, at most {share:.0f} s", flush=True)
        parallel = 1 if smoke else max(1, min(8, (os.cpu_count() or 2) // 2))
        tests_summary = run_gpu_tests(tests, out, share, parallel)
        status = "failed" if tests_summary["failed"] else "ok" if not tests_summary["not_finished"] else "partial"
        steps.append(
            {
                "step": "gpu tests",
                "status": status,
                "wall_s": tests_summary["wall_s"],
                "reason": (
                    f"{tests_summary['passed']} passed, {tests_summary['failed']} failed, "
                    f"{tests_summary['skipped']} skipped"
                    + (
                        f"; not finished in the budget: {', '.join(tests_summary['not_finished'])}"
                        if tests_summary["not_finished"]
                        else ""
                    )
                ),
            }
        )
        print(f"[gpu tests] {steps[-1]['reason']}", flush=True)

    setup = registry.Setup.for_device(device, quick=smoke, compile=False, sessions=1 if smoke else None)
    iters, warmup = (1, 1) if smoke else (20, 3)
    cases = {c.name: c for c in registry.all_cases()}
    impls = bench_impls.resolve_impls(args.impl)  # --impl: every case also runs with each implementation
    records: list[dict] = []

    def emit(rec: dict) -> None:
        print(reporting.terminal_table([rec]).splitlines()[1], flush=True)

    for step in STEPS:
        names = [
            n
            for n in (step.smoke_cases if smoke else step.gpu_cases)
            if not args.case or any(m in n for m in args.case)
        ]
        if not names:
            steps.append({"step": step.name, "status": "skipped", "reason": "not selected by --case"})
            continue
        t0, done, skipped = time.perf_counter(), [], []
        print(f"\n[{step.name}]", flush=True)
        for name in names:
            left = end - time.perf_counter()
            if left <= 0:
                skipped.append(name)
                continue
            compile_ok = not smoke and left > COMPILE_WHILE_LEFT * budget
            case_setup = replace(setup, compile=compile_ok)
            try:
                with _hard_stop(left):
                    recs = harness.run_case(cases[name], case_setup, env, iters, warmup, emit, end, impls)
            except BudgetExceeded:  # stopped outside a provider (building or cleaning up the case)
                skipped.append(name)
                continue
            for rec in recs:
                if rec.get("reason", "").startswith(BudgetExceeded.__name__):
                    rec.update(status="skipped", reason="stopped: " + rec["reason"].split(": ", 1)[1])
            for rec in recs:
                if rec["provider"] == "compile" and rec["status"] == "skipped" and not smoke and not compile_ok:
                    rec["reason"] = (
                        f"torch.compile not run: {left:.0f} s of the {budget:.0f} s budget left at this case"
                    )
            records += recs
            done.append(name)
        steps.append(step_row(step.name, done, skipped, records, round(time.perf_counter() - t0, 1)))
    env["wall_s"] = round(time.perf_counter() - start, 1)
    for rec in records:
        rec.setdefault("cuda", env.get("cuda"))
    report = {
        "format": harness.FORMAT,
        "version": harness.VERSION,
        "environment": env,
        "records": records,
        "suite": {"budget_s": budget, "wall_s": env["wall_s"], "steps": steps, "tests": tests_summary},
    }
    errors = harness.validate(report)
    if errors:
        raise FlashTalkError(f"internal error: the suite report does not match its schema: {errors[:3]}")
    (out / "results.json").write_text(json.dumps(report, indent=1))
    (out / "summary.md").write_text(summary_markdown(env, steps, tests_summary, records))
    try:
        reporting.plot(records, str(out / "plots.png"), env)
    except ImportError:
        print("plots.png not written: matplotlib is missing (pip install 'flashtalk[bench]')")
    print(f"\nwrote {out / 'results.json'}, {out / 'summary.md'}, {out / 'plots.png'}")
    print("\n" + short_table(steps, records))
    return 1 if any(s["status"] == "failed" for s in steps) else 0


def step_row(name: str, done: list[str], skipped: list[str], records: list[dict], wall_s: float) -> dict:
    """A benchmark step's row: "failed" when any record of its cases failed (`failures` says which and why, one
    line each), else "ok" / "partial" / "skipped" by what fit in the budget."""
    failures = [
        f"{r['case']} / {r['provider']}: {r.get('reason', 'failed')}"
        for r in records
        if r["case"] in done and r["status"] == "failed"
    ]
    status = "failed" if failures else "ok" if not skipped else "partial" if done else "skipped"
    row = {"step": name, "status": status, "wall_s": wall_s, "cases": done}
    reasons = [f"{len(failures)} failed"] if failures else []
    if skipped:
        reasons.append(f"did not fit in the budget: {', '.join(skipped)}")
    if reasons:
        row["reason"] = "; ".join(reasons)
    if failures:
        row["failures"] = failures
    return row


def summary_markdown(env: dict, steps: list[dict], tests: dict | None, records: list[dict]) -> str:
    from flashtalk.bench import report as reporting

    lines = [
        "# FlashTalk GPU suite" + (" (smoke, CPU)" if env["cpu_only"] else ""),
        "",
        *[f"- {line}" for line in reporting.header_lines(env)],
        f"- CUDA {env.get('cuda')}, wall {env['wall_s']} s",
        "",
        "## Steps",
        "",
        "| step | status | wall s | notes |",
        "| --- | --- | --- | --- |",
    ]
    lines += [f"| {s['step']} | {s['status']} | {s.get('wall_s', '-')} | {s.get('reason', '')} |" for s in steps]
    if tests and tests["failures"]:
        lines += ["", "## Failed gpu tests", "", *[f"- `{f}`" for f in tests["failures"]]]
    failed = [f for s in steps for f in s.get("failures", [])]
    if failed:
        lines += ["", "## Failed cases", "", *[f"- {f}" for f in failed]]
    full = reporting.markdown(env, records)
    body = full[full.find("\n## ") :] if "\n## " in full else ""  # its tables, without its title and header
    return "\n".join(lines) + "\n" + body + "\n"


def short_table(steps: list[dict], records: list[dict]) -> str:
    """The last thing printed: each step's status, then the headline figure of each case per provider."""
    from flashtalk.bench import report as reporting

    lines = []
    for s in steps:
        lines.append(f"{s['step']:<32} {s['status']:<8} {s.get('reason', '')}")
        lines += [f"{'':<32} FAILED   {f}" for f in s.get("failures", [])]
    headline = [r for r in records if r["status"] == "ok"]
    if headline:
        rows = [
            [
                r["case"],
                r["provider"],
                reporting.fmt(r["value"], 4),
                r["unit"],
                (reporting.fmt(r.get("speedup_vs_eager")) + "x") if r.get("speedup_vs_eager") else "",
            ]
            for r in headline
        ]
        widths = [max(len(row[i]) for row in rows) for i in range(5)]
        lines += [""] + ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows]
    failed = [s["step"] for s in steps if s["status"] == "failed"]
    lines.append(f"RESULT: FAILED ({', '.join(failed)}; exit status 1)" if failed else "RESULT: no failures")
    return "\n".join(lines)
