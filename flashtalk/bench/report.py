"""The benchmark report: number formatting, the result table (terminal and Markdown), the charts, and the
ratio against an earlier report (`--compare`)."""

from __future__ import annotations

import json
from pathlib import Path

from flashtalk.bench.harness import LOWER_IS_BETTER, validate
from flashtalk.errors import FlashTalkError


def fmt(v: float | None, digits: int = 3) -> str:
    """A table figure: "-" for none, thousands separated from 1000 on, else `digits` significant digits."""
    if v is None:
        return "-"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:.{digits}g}"


COLUMNS = ("case", "provider", "value", "unit", "p20-p80 / p50-p99", "vs eager", "vs compile", "%peak", "notes")


def rows(records: list[dict]) -> list[list[str]]:
    out = []
    for r in records:
        if r["status"] != "ok":
            out.append(
                [r["case"], r["provider"], "-", r["unit"], "", "", "", "", f"{r['status']}: {r.get('reason', '')}"]
            )
            continue
        spread = (
            f"{fmt(r['p20'])}-{fmt(r['p80'])}"
            if "p20" in r and r["metric"] != "first_frame_latency"
            else f"{fmt(r.get('p50'))}-{fmt(r.get('p99'))} ms"
            if "p99" in r
            else ""
        )
        pct = r.get("pct_peak_flops") if r.get("pct_peak_flops") is not None else r.get("pct_peak_bw")
        notes = []
        if r.get("tflops") is not None:
            notes.append(f"{fmt(r['tflops'])} TFLOP/s")
        if r.get("gbps") is not None:
            notes.append(f"{fmt(r['gbps'])} GB/s")
        if r.get("backend"):
            notes.append(f"kernels: {r['backend']}")
        if r.get("warmup_s", 0) > 1:
            notes.append(f"warm-up {r['warmup_s']:.1f} s")
        if r.get("peak_mem_mib"):
            notes.append(f"peak {r['peak_mem_mib']:.0f} MiB")
        if r.get("fps_per_watt"):
            notes.append(f"{r['fps_per_watt']:.2f} FPS/W")
        thr = r.get("telemetry", {}).get("throttle_reasons")
        if thr:
            notes.append("throttled: " + ",".join(thr))
        out.append(
            [
                r["case"],
                r["provider"],
                fmt(r["value"], 4),
                r["unit"],
                spread,
                fmt(r.get("speedup_vs_eager")) + ("x" if r.get("speedup_vs_eager") else ""),
                fmt(r.get("speedup_vs_compile")) + ("x" if r.get("speedup_vs_compile") else ""),
                f"{pct:.1f}%" if pct is not None else "",
                "; ".join(notes),
            ]
        )
    return out


def header_lines(env: dict) -> list[str]:
    lines = [
        f"device: {env['device']} | torch {env['torch']} | triton {env['triton']} | commit {env['commit']} | "
        f"{env['timestamp']}",
        f"command: {env['command']}",
        f"NVML telemetry: {env['nvml']}" + (f" (driver {env['driver']})" if env.get("driver") else ""),
    ]
    if env["cpu_only"]:
        lines.append("CPU run: tiny preset and small shapes so every path runs; CPU figures are not GPU figures.")
    elif env.get("peak") is None:
        lines.append("unknown GPU: no % of peak")
    return lines


def terminal_table(records: list[dict]) -> str:
    table = [list(COLUMNS)] + rows(records)
    widths = [min(max(len(row[i]) for row in table), 44) for i in range(len(COLUMNS) - 1)]
    return "\n".join("  ".join(c[:w].ljust(w) for c, w in zip(row, widths)) + "  " + row[-1] for row in table)


def markdown(env: dict, records: list[dict]) -> str:
    out = ["# flashtalk bench", "", *[f"- {line}" for line in header_lines(env)], ""]
    for group in ("kernel", "stage", "renderer", "pipeline", "stream"):
        recs = [r for r in records if r["group"] == group]
        if not recs:
            continue
        out += [f"## {group}", "", "| " + " | ".join(COLUMNS) + " | shape |", "|" + " --- |" * (len(COLUMNS) + 1)]
        out += [
            "| " + " | ".join(c.replace("|", "/") for c in row) + f" | {r['shape']} |"
            for row, r in zip(rows(recs), recs)
        ]
        out.append("")
    return "\n".join(out)


def plot(records: list[dict], path: str, env: dict) -> None:
    """speed-up per stage, FPS vs batch, latency CDF, in one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    ok = [r for r in records if r["status"] == "ok"]
    ax = axes[0]
    stage = [r for r in ok if r["group"] in ("stage", "kernel") and r["provider"] == "flashtalk"]
    names = [r["case"] for r in stage]
    for k, (key, label) in enumerate((("speedup_vs_eager", "vs eager"), ("speedup_vs_compile", "vs torch.compile"))):
        vals = [r.get(key) or 0.0 for r in stage]
        ax.barh([i + 0.4 * k for i in range(len(names))], vals, height=0.4, label=label)
    ax.set_yticks([i + 0.2 for i in range(len(names))], names, fontsize=7)
    ax.axvline(1.0, color="k", lw=0.8)
    ax.set_xlabel("speed-up of flashtalk (x)")
    ax.set_title("speed-up per kernel / stage")
    ax.legend(fontsize=7)
    ax = axes[1]
    rend = [r for r in ok if r["group"] == "renderer"]
    for prov in sorted({r["provider"] for r in rend}):
        pts = sorted((r["frames"], r["value"]) for r in rend if r["provider"] == prov)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=prov)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch (frames per call)")
    ax.set_ylabel("FPS")
    ax.set_title("renderer FPS vs batch")
    if rend:
        ax.legend(fontsize=7)
    ax = axes[2]
    for r in ok:
        if r["group"] == "stream" and r.get("samples_ms"):
            s = sorted(r["samples_ms"])
            ax.step(s, [(i + 1) / len(s) for i in range(len(s))], where="post", label=f"{r['case']} {r['provider']}")
    ax.set_xlabel("latency (ms)")
    ax.set_ylabel("fraction of frames")
    ax.set_title("streaming latency CDF")
    if any(r["group"] == "stream" and r.get("samples_ms") for r in ok):
        ax.legend(fontsize=7)
    fig.suptitle(f"flashtalk bench: {env['device']}" + (" (CPU: not GPU figures)" if env["cpu_only"] else ""))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def load_report(path: str) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise FlashTalkError(f"--compare: {path} not found") from None
    except json.JSONDecodeError as exc:
        raise FlashTalkError(f"--compare: {path} is not JSON ({exc})") from None
    errors = validate(data)
    if errors:
        raise FlashTalkError(f"--compare: {path} is not a flashtalk bench report: {errors[0]}")
    return data


def compare(records: list[dict], old: dict) -> list[str]:
    """new/old per (case, provider, metric); 'better' accounts for the unit (ms: lower is better)."""
    index = {(r["case"], r["provider"], r["metric"]): r for r in old["records"] if r["status"] == "ok"}
    lines = [
        f"compared with {old['environment']['command']} ({old['environment']['device']}, "
        f"{old['environment']['commit']}, {old['environment']['timestamp']})"
    ]
    for r in records:
        o = index.get((r["case"], r["provider"], r["metric"]))
        if r["status"] != "ok" or o is None or not o["value"]:
            continue
        ratio = r["value"] / o["value"]
        better = ratio < 1 if r["unit"] in LOWER_IS_BETTER else ratio > 1
        lines.append(
            f"{r['case']:<40} {r['provider']:<18} {fmt(o['value'], 4):>10} -> {fmt(r['value'], 4):>10} "
            f"{r['unit']:<9} x{ratio:.3f} {'better' if better else 'worse' if ratio != 1 else 'same'}"
        )
    return lines
