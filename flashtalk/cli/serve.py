"""`flashtalk serve`: the WebSocket/HTTP streaming server with its web page (one ASGI app, run by uvicorn,
or by Ray Serve with --ray): the weights-free preview backend, or the full network with --weights /
--seeded-weights."""

from __future__ import annotations

import argparse
import os

from flashtalk.constants import DEFAULT_BUDGET_S, DEFAULT_HEADROOM, LATENCY_MODES, PRESETS
from flashtalk.errors import FlashTalkError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default 127.0.0.1); anything but loopback needs --token"
    )
    parser.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    parser.add_argument(
        "--token",
        default=os.environ.get("FLASHTALK_TOKEN"),
        help="bearer token clients must send (default: $FLASHTALK_TOKEN)",
    )
    parser.add_argument(
        "--max-sessions",
        type=int,
        default=16,
        help="live sessions admitted at once (default 16; per replica with --ray)",
    )
    parser.add_argument(
        "--latency-budget-ms",
        type=int,
        default=round(DEFAULT_BUDGET_S * 1000),
        help="a realtime frame's latency budget, audio in -> frame rendered (default %(default)s; a start message "
        "may choose budget_ms): the scheduler serves frames earliest deadline first within it",
    )
    parser.add_argument(
        "--capacity-headroom",
        type=float,
        default=DEFAULT_HEADROOM,
        help="fraction of the measured render capacity kept free of realtime load: a realtime session that "
        "would pass the rest is refused with 1013 (default %(default)s; per replica with --ray)",
    )
    parser.add_argument(
        "--max-portraits",
        type=int,
        default=64,
        help="encoded portraits kept in memory, least recently used dropped (default 64)",
    )
    parser.add_argument("--max-upload-mb", type=float, default=8.0, help="largest portrait upload in MB (default 8)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    weights = parser.add_mutually_exclusive_group()
    weights.add_argument("--weights", help="full network: a published weights folder or a .safetensors bundle")
    weights.add_argument(
        "--seeded-weights",
        action="store_true",
        help="full network with seeded synthetic weights (not a face: for testing)",
    )
    parser.add_argument(
        "--preset",
        default="liveportrait",
        choices=PRESETS,
        help="network size with --seeded-weights (default liveportrait)",
    )
    parser.add_argument(
        "--latency",
        choices=LATENCY_MODES,
        default="low",
        help="sessions' default streaming latency (default low: <= 160 ms of audio look-ahead; "
        "exact: JoyVASA's whole windows, offline-identical); a start message may choose",
    )
    parser.add_argument(
        "--precision",
        metavar="fp32|bf16|fp16",
        help="renderer precision of the network (default bf16 on CUDA, fp32 on CPU)",
    )
    parser.add_argument(
        "--ray",
        action="store_true",
        help="serve through Ray Serve (pip install 'flashtalk[ray]'): a local Ray on 127.0.0.1, one "
        "replica per GPU (or --replicas N), --max-sessions per replica",
    )
    parser.add_argument(
        "--replicas",
        type=int,
        default=None,
        help="with --ray: number of replicas (default one per visible GPU, at least 1)",
    )


def run(args: argparse.Namespace) -> int:
    try:
        from flashtalk.serving.server import serve
        from flashtalk.serving.state import BackendSpec, ServeConfig, build_backend, build_faces, check_config
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] in ("starlette", "uvicorn"):
            raise FlashTalkError(
                "flashtalk serve needs starlette and uvicorn: pip install 'flashtalk[serve]'"
            ) from None
        raise
    from flashtalk.runtime.engine import default_device

    if not 0 < args.max_upload_mb <= 64:
        raise FlashTalkError(f"--max-upload-mb must be in (0, 64]; got {args.max_upload_mb}")
    if args.replicas is not None and not args.ray:
        raise FlashTalkError("--replicas applies to --ray")
    if args.replicas is not None and not 1 <= args.replicas <= 1024:
        raise FlashTalkError(f"--replicas must be in [1, 1024]; got {args.replicas}")
    config = ServeConfig(
        host=args.host,
        port=args.port,
        token=args.token,
        max_sessions=args.max_sessions,
        max_portraits=args.max_portraits,
        max_upload_bytes=int(args.max_upload_mb * (1 << 20)),
        device=args.device,
        latency=args.latency,
        latency_budget_ms=args.latency_budget_ms,
        headroom=args.capacity_headroom,
    )
    check_config(config)  # refuse a public bind without a token before touching the device
    if args.weights is None and not args.seeded_weights:
        if args.precision is not None:
            raise FlashTalkError("--precision applies to the network (--weights / --seeded-weights), not the preview")
        spec = BackendSpec()
    else:
        spec = BackendSpec(
            "network", weights=args.weights, seeded=args.seeded_weights, preset=args.preset, precision=args.precision
        )
    if args.ray:
        from flashtalk.serving import ray_app

        ray_app.run(config, ray_app.RayOptions(replicas=args.replicas, sessions=args.max_sessions), spec)
        return 0
    device = str(default_device(args.device))
    if spec.kind == "network":
        import torch

        from flashtalk.runtime.backends.network import resolve_precision

        resolve_precision(args.precision, torch.device(device))  # a bad value fails before the weights load
    serve(ServeConfig(**{**config.__dict__, "device": device}), build_backend(spec, device), build_faces(spec, device))
    return 0
