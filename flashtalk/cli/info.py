"""`flashtalk info`: versions, device, and the implementation and backend each kernel op would use here, with
the reason."""

from __future__ import annotations

import argparse
import importlib
import json
import platform


def _buckets() -> tuple[int, ...]:
    from flashtalk.runtime.graphs import BUCKETS

    return BUCKETS


def collect(device: str | None = None) -> dict:
    import torch

    from flashtalk import __version__
    from flashtalk.kernels import OPS
    from flashtalk.kernels.dispatch import choose, env_impls, interpreter_enabled, last_choice, mode, triton_installed
    from flashtalk.kernels.registry import selected

    cuda = torch.cuda.is_available()
    dev = torch.device(device or ("cuda" if cuda else "cpu"))
    info = {
        "flashtalk": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": None,
        "cuda_available": cuda,
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or platform.machine(),
        "kernel_mode": mode(),
        "triton_interpreter": interpreter_enabled(),
        "engine": (
            "one engine (flashtalk/runtime): backends preview | network behind one interface "
            "(protocol.py), offline = one-stream driver of the streaming path; layers kernels -> model -> "
            "runtime -> serving / cli (flashtalk/cli), file I/O in flashtalk/io beside model"
        ),
        "streaming_latency": "low (<= 160 ms look-ahead, serve default) | exact (JoyVASA windows, offline-identical)",
        "graph_buckets": list(_buckets()),
        "ops": {},
    }
    if cuda:
        props = torch.cuda.get_device_properties(dev)
        info.update(
            cuda_version=torch.version.cuda,
            sm_count=props.multi_processor_count,
            capability=f"{props.major}.{props.minor}",
            memory_gib=round(props.total_memory / 2**30, 1),
        )
    if triton_installed():
        info["triton"] = importlib.import_module("triton").__version__
    for op in OPS:
        try:
            impl = selected(op)
            if impl is not None:
                how = "use_impl" if env_impls().get(op) is None else "FLASHTALK_KERNELS"
                info["ops"][op] = {"impl": impl.label, "backend": "impl", "reason": f"{how}: {impl.target}"}
                continue
            choice = choose(op, dev)
            info["ops"][op] = {"impl": "flashtalk", "backend": choice.backend, "reason": choice.reason}
        except ValueError as exc:
            info["ops"][op] = {"impl": "flashtalk", "backend": "error", "reason": str(exc)}
        last = last_choice(op)
        if last is not None and last.impl != "flashtalk":  # what actually ran here, when it differs
            info["ops"][op]["last_call"] = {"impl": last.impl, "backend": last.backend, "reason": last.reason}
    return info


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--json", action="store_true", help="print JSON")


def run(args: argparse.Namespace) -> int:
    info = collect(args.device)
    if args.json:
        print(json.dumps(info, indent=1))
        return 0
    for key, value in info.items():
        if key != "ops":
            print(f"{key:<20} {value}")
    print("kernel ops (implementation, backend on this device, and why):")
    for op, c in info["ops"].items():
        print(f"  {op:<22} {c['impl']:<12} {c['backend']:<19} {c['reason']}")
    return 0
