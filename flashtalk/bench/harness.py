"""`flashtalk bench`: every kernel, model stage, the renderer, the offline pipeline and streaming, each FlashTalk
figure next to PyTorch eager and torch.compile of the same code, in one run, with the conditions it ran under.

    flashtalk bench                                   # the full set on this machine
    flashtalk bench --quick --json out.json --markdown out.md --plot out.png
    flashtalk bench --only stage --only renderer --compare old.json

Cases come from the one registry, `flashtalk/bench/registry.py`.
Method: warm-up calls first (their time, which holds compile / autotune / capture, is reported as
`warmup_s`), then timed calls with CUDA events on the GPU (perf_counter on the CPU), each call on the next
of several rotating input sets (random data, never zeros); median with p20/p80, p50/p90/p99 for stream
latencies; TFLOP/s and GB/s with % of the device's peak (`flashtalk.profiling.devices`); peak CUDA memory;
NVML telemetry sampled in the background during each measurement (absent NVML is reported, not fatal).
On the CPU the tiny preset and small shapes run, so CI exercises every path: CPU figures are not GPU figures.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import platform
import subprocess
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from flashtalk.errors import FlashTalkError

log = logging.getLogger(__name__)

FORMAT, VERSION = "flashtalk-bench", 1
LOWER_IS_BETTER = {"ms"}

_NUM = {"type": ["number", "null"]}
_STR = {"type": "string"}
RECORD_SCHEMA: dict = {
    "type": "object",
    "required": [
        "case",
        "group",
        "metric",
        "value",
        "unit",
        "status",
        "shape",
        "dtype",
        "provider",
        "device",
        "driver",
        "torch",
        "triton",
        "commit",
        "command",
        "timestamp",
    ],
    "properties": {
        "case": _STR,
        "group": {"type": "string", "enum": ["kernel", "stage", "renderer", "pipeline", "stream"]},
        "metric": {"type": "string", "enum": ["time", "fps", "first_frame_latency", "aggregate_fps"]},
        "value": _NUM,
        "unit": {"type": "string", "enum": ["ms", "frames/s"]},
        "status": {"type": "string", "enum": ["ok", "skipped", "failed"]},
        "reason": _STR,
        "shape": _STR,
        "dtype": _STR,
        "provider": _STR,
        "device": _STR,
        "driver": {"type": ["string", "null"]},
        "torch": _STR,
        "triton": {"type": ["string", "null"]},
        "cuda": {"type": ["string", "null"]},
        "commit": _STR,
        "command": _STR,
        "timestamp": _STR,
        "backend": {"type": ["string", "null"]},
        "p20": _NUM,
        "p80": _NUM,
        "p50": _NUM,
        "p90": _NUM,
        "p99": _NUM,
        "iters": {"type": "integer"},
        "warmup_s": _NUM,
        "tflops": _NUM,
        "pct_peak_flops": _NUM,
        "gbps": _NUM,
        "pct_peak_bw": _NUM,
        "peak_mem_mib": _NUM,
        "speedup_vs_eager": _NUM,
        "speedup_vs_compile": _NUM,
        "fps_per_watt": _NUM,
        "frames": {"type": ["integer", "null"]},
        "note": _STR,
        "samples_ms": {"type": "array", "items": {"type": "number"}},
        "impl": _STR,  # --impl records: the implementation, its package and version
        "impl_package": {"type": ["string", "null"]},
        "impl_version": {"type": ["string", "null"]},
        "correct": {"type": ["boolean", "null"]},
        "speedup_vs_flashtalk": _NUM,
        "telemetry": {"type": "object", "required": ["available"], "properties": {"available": {"type": "boolean"}}},
    },
}
SCHEMA: dict = {
    "type": "object",
    "required": ["format", "version", "environment", "records"],
    "properties": {
        "format": {"type": "string", "enum": [FORMAT]},
        "version": {"type": "integer", "enum": [VERSION]},
        "environment": {
            "type": "object",
            "required": ["device", "torch", "commit", "command", "timestamp", "cpu_only"],
        },
        "records": {"type": "array", "items": RECORD_SCHEMA},
    },
}


def validate(instance: Any, schema: dict = SCHEMA) -> list[str]:
    """Errors of `instance` against a JSON Schema (by `jsonschema`), one line each: where, then what; []
    if valid."""
    from jsonschema import Draft202012Validator

    errors = sorted(Draft202012Validator(schema).iter_errors(instance), key=lambda e: list(e.absolute_path))
    return [f"{e.json_path}: {e.message}" for e in errors]


# ------------------------------------------------------------------------------------------------ running


def _registry():
    from flashtalk.bench import registry

    return registry


def _commit() -> str:
    """The git commit of the package's checkout, else of the working directory (a wheel install), else
    $FLASHTALK_COMMIT, else "unknown"."""
    import os

    for where in (Path(__file__).resolve().parents[1], Path.cwd()):
        try:
            out = subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=where, timeout=10
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            out = ""
        if out:
            return out
    return os.environ.get("FLASHTALK_COMMIT", "unknown")


def environment(device: str, argv: list[str]) -> dict:
    import torch

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    commit = _commit()
    cuda = device.startswith("cuda")
    if cuda:
        from flashtalk.profiling.devices import current

        name = torch.cuda.get_device_name()
        peak = current()
    else:
        name, peak = f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)", None
    from flashtalk.profiling.nvml import NvmlSampler

    probe = NvmlSampler()
    return {
        "device": name,
        "cpu_only": not cuda,
        "peak": asdict(peak) if peak else None,
        "driver": probe._driver,
        "nvml": probe.unavailable or "available",
        "torch": torch.__version__,
        "triton": triton_version,
        "cuda": torch.version.cuda,
        "commit": commit,
        "command": " ".join(["flashtalk bench", *argv]),
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "python": platform.python_version(),
    }


def _sync(cuda: bool) -> None:
    if cuda:
        import torch

        torch.cuda.synchronize()


def _telemetry(summary) -> dict:
    d = asdict(summary)
    return {k: v for k, v in d.items() if v not in (None, [], "")} | {"available": summary.available}


def _peak_flops(env: dict, dtype: str) -> float | None:
    import torch

    peak = env.get("peak")
    if not peak:
        return None
    if dtype == "fp32":  # cuDNN convolutions use TF32 unless it is switched off
        return peak["tf32_tflops"] if torch.backends.cudnn.allow_tf32 else peak["fp32_tflops"]
    return peak["bf16_tflops"] if dtype in ("fp16", "bf16") else None


def measure_provider(fn, built, setup, iters: int, warmup: int) -> dict:
    """Run one provider: warm-up (timed as a whole), then the timed calls. Returns the record's figures."""
    import torch

    from flashtalk.profiling.nvml import NvmlSampler
    from flashtalk.profiling.timing import latency_percentiles, measure

    cuda = setup.cuda
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    _sync(cuda)
    t0 = time.perf_counter()
    for i in range(warmup):
        fn(i)
    _sync(cuda)
    out: dict = {"warmup_s": time.perf_counter() - t0}
    sampler = NvmlSampler(torch.cuda.current_device() if cuda else 0)
    with sampler:
        if built.samples_key == "latency":  # the provider times itself, one sample per call
            samples = [fn(warmup + i) for i in range(iters)]
            out.update(
                metric="first_frame_latency",
                unit="ms",
                samples_ms=samples,
                **{k.removesuffix("_ms"): v for k, v in latency_percentiles(samples).items()},
            )
            out["value"] = out["p50"]
        elif built.samples_key == "aggregate":
            runs = [fn(warmup + i) for i in range(iters)]
            frames, seconds = sum(r["frames"] for r in runs), sum(r["seconds"] for r in runs)
            lat = [v for r in runs for v in r["latency_ms"]]
            out.update(metric="aggregate_fps", unit="frames/s", value=frames / seconds, frames=frames, samples_ms=lat)
            if lat:
                out.update({k.removesuffix("_ms"): v for k, v in latency_percentiles(lat).items()})
        else:
            timing = measure(lambda i: fn(warmup + i), warmup=0, iters=iters, device=setup.device)
            out.update(metric="time", unit="ms", value=timing.median_ms, p20=timing.p20_ms, p80=timing.p80_ms)
    out["iters"] = iters
    out["telemetry"] = _telemetry(sampler.summary())
    if cuda:
        out["peak_mem_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def run_case(
    case, setup, env: dict, iters: int, warmup: int, emit, deadline: float | None = None, impls: list | None = None
) -> list[dict]:
    """Build a case and measure each provider; returns its records (speed-ups filled in). A provider whose
    turn comes after `deadline` (perf_counter seconds) is skipped, saying so. `impls`: other implementations
    of kernel ops measured beside ours (`flashtalk.bench.impls`)."""
    import torch

    from flashtalk.bench import impls as bench_impls
    from flashtalk.kernels import last_choice

    base = {k: env[k] for k in ("device", "driver", "torch", "triton", "cuda", "commit", "command", "timestamp")}
    base.update(case=case.name, group=case.group)
    try:
        built = case.build(setup)
    except Exception as exc:
        log.debug("building %s failed", case.name, exc_info=True)
        rec = base | dict(
            metric="time",
            value=None,
            unit="ms",
            status="failed",
            reason=_one_line(exc),
            shape="",
            dtype="",
            provider="-",
        )
        emit(rec)
        return [rec]
    records = []
    added = bench_impls.add_providers(case, built, impls or [])
    calls_before = {name: impl.calls for name, impl in added.items()}
    pipeline = case.group in ("pipeline", "renderer")
    if case.group in ("pipeline", "stream"):  # whole clips / sessions per call: a few calls say enough
        iters, warmup = min(iters, 3), 1
    try:
        for name, fn in built.providers.items():
            rec = base | dict(shape=built.shape, dtype=built.dtype, provider=name, note=built.note)
            if deadline is not None and not isinstance(fn, str) and time.perf_counter() > deadline:
                fn = "not run: the time budget (--budget-s) ran out before this provider"
            if isinstance(fn, str):
                metric, unit = {
                    "latency": ("first_frame_latency", "ms"),
                    "aggregate": ("aggregate_fps", "frames/s"),
                    None: ("fps", "frames/s") if pipeline else ("time", "ms"),
                }[built.samples_key]
                rec.update(metric=metric, value=None, unit=unit, status="skipped", reason=fn)
            else:
                try:
                    with torch.no_grad():
                        rec.update(measure_provider(fn, built, setup, iters, warmup), status="ok")
                    op = case.name.split("/")[0]
                    choice = last_choice(op) if name == "flashtalk" else None
                    rec["backend"] = choice.backend if choice else None
                except Exception as exc:
                    log.debug("%s / %s failed", case.name, name, exc_info=True)
                    rec.update(metric="time", value=None, unit="ms", status="failed", reason=_one_line(exc))
                    if setup.cuda:
                        torch.cuda.empty_cache()
            _derive(rec, built, env, pipeline)
            records.append(rec)
        bench_impls.annotate(records, added, built, calls_before)
    finally:
        cleanup = built.extra.get("cleanup")
        if cleanup:
            cleanup()
    _speedups(records)
    for rec in records:
        emit(rec)
    return records


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:160] if text else ''}"


def _derive(rec: dict, built, env: dict, fps_case: bool) -> None:
    """Throughput figures of a timed record: TFLOP/s, GB/s, % of peak, FPS (and FPS/W)."""
    if rec.get("status") != "ok" or rec["metric"] != "time":
        if rec.get("metric") == "aggregate_fps" and rec.get("status") == "ok":
            power = rec["telemetry"].get("power_w_mean")
            rec["fps_per_watt"] = rec["value"] / power if power else None
        return
    seconds = rec["value"] * 1e-3
    if built.flops:
        rec["tflops"] = built.flops / seconds / 1e12
        peak = _peak_flops(env, built.dtype)
        rec["pct_peak_flops"] = 100 * rec["tflops"] / peak if peak else None
    if built.bytes:
        rec["gbps"] = built.bytes / seconds / 1e9
        peak = env.get("peak")
        rec["pct_peak_bw"] = 100 * rec["gbps"] / peak["mem_gbps"] if peak else None
    if fps_case and built.frames:
        frames = built.frames
        rec.update(
            metric="fps",
            unit="frames/s",
            value=frames / seconds,
            frames=frames,
            p20=frames / (rec["p80"] * 1e-3),
            p80=frames / (rec["p20"] * 1e-3),
            time_ms=rec["value"],
        )
        power = rec["telemetry"].get("power_w_mean")
        rec["fps_per_watt"] = rec["value"] / power if power else None


def _speedups(records: list[dict]) -> None:
    by = {r["provider"]: r for r in records if r.get("status") == "ok" and r.get("value")}
    for rec in records:
        for ref, key in (("eager", "speedup_vs_eager"), ("compile", "speedup_vs_compile")):
            if rec.get("status") != "ok" or ref not in by or rec["provider"] == ref:
                continue
            a, b = rec["value"], by[ref]["value"]
            rec[key] = (b / a) if rec["unit"] == "ms" else (a / b)


# ------------------------------------------------------------------------------------------------ CLI


def command_argv(args: argparse.Namespace) -> list[str]:
    """The options this run was given, as a command line (for the report's `command`)."""
    out: list[str] = []
    for key, value in vars(args).items():
        flag = "--" + key.replace("_", "-")
        if key == "compile" and value is not None:
            out.append("--compile" if value else "--no-compile")
        elif value is True:
            out.append(flag)
        elif isinstance(value, list):
            out += [x for v in value for x in (flag, str(v))]
        elif value not in (None, False):
            out += [flag, str(value)]
    return out


def run(args: argparse.Namespace) -> int:
    import torch

    from flashtalk.bench.report import COLUMNS, compare, header_lines, load_report, markdown, plot, terminal_table

    if args.budget_s is not None and args.budget_s <= 0:
        raise FlashTalkError(f"--budget-s must be > 0 seconds, got {args.budget_s:g}")
    if args.suite:
        from flashtalk.bench.suite import run_suite

        return run_suite(args)
    for flag, value in (("--out", args.out), ("--smoke", args.smoke), ("--tests", args.tests)):
        if value:
            raise FlashTalkError(f"{flag} needs --suite gpu")
    if args.iters is not None and args.iters < 1:
        raise FlashTalkError(f"--iters must be >= 1, got {args.iters}")
    if args.sessions is not None and args.sessions < 1:
        raise FlashTalkError(f"--sessions must be >= 1, got {args.sessions}")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise FlashTalkError(f"--device {device}: CUDA is not available here")
    if not device.startswith(("cuda", "cpu")):
        raise FlashTalkError(f"--device must be cuda or cpu, got {device!r}")
    old = load_report(args.compare) if args.compare else None
    registry = _registry()
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}.get(args.dtype or "")
    setup = registry.Setup.for_device(
        device, quick=args.quick, compile=args.compile, sessions=args.sessions, dtype=dtype
    )
    cuda = setup.cuda
    iters = args.iters or ((5 if args.quick else 20) if cuda else (2 if args.quick else 3))
    warmup = 3 if cuda else 1
    env = environment(device, command_argv(args))
    for line in header_lines(env):
        print(line)
    from flashtalk.bench import impls as bench_impls

    impls = bench_impls.resolve_impls(args.impl)
    cases = registry.select(setup, args.only, args.case)
    if impls and not args.only and not args.case:
        cases = bench_impls.select(cases, impls, cuda)
    if not cases:
        raise FlashTalkError("no case matches --only / --case")
    records: list[dict] = []

    def emit(rec: dict) -> None:
        print(terminal_table([rec]).splitlines()[1], flush=True)

    print("  ".join(COLUMNS))
    start = time.perf_counter()
    deadline = start + args.budget_s if args.budget_s else None
    for case in cases:
        records += run_case(case, setup, env, iters, warmup, emit, deadline, impls)
    env["wall_s"] = time.perf_counter() - start
    print(f"\n{len(records)} records from {len(cases)} cases in {env['wall_s']:.1f} s")
    print(terminal_table(records))
    report = {"format": FORMAT, "version": VERSION, "environment": env, "records": records}
    if impls:
        report["impls"] = bench_impls.summary(records, impls)
        for row in report["impls"]:
            shares = ", ".join(f"{k} {v:.0%}" for k, v in row.items() if k.startswith("fast_") and v is not None)
            print(
                f"{row['op']}={row['impl']} ({row['package'] or row['target']} {row['version'] or ''}): "
                f"{row['correct']}/{row['kernel_cases']} kernel cases correct; {shares or 'no kernel case'}"
            )
    errors = validate(report)
    if errors:  # a bug here, not the user's: say so plainly
        raise FlashTalkError(f"internal error: the report does not match its schema: {errors[:3]}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
        print(f"wrote {args.json}")
    if args.markdown:
        Path(args.markdown).write_text(markdown(env, records))
        print(f"wrote {args.markdown}")
    if args.plot:
        plot(records, args.plot, env)
        print(f"wrote {args.plot}")
    if old is not None:
        print("\n".join(compare(records, old)))
    return 0
