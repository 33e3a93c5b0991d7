"""`flashtalk serve`: the WebSocket/HTTP streaming server with its web page: the weights-free preview backend,
or the full network with --weights / --seeded-weights."""

from __future__ import annotations

import argparse
import os

from flashtalk.errors import FlashTalkError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default 127.0.0.1); anything but loopback needs --token")
    parser.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    parser.add_argument("--token", default=os.environ.get("FLASHTALK_TOKEN"),
                        help="bearer token clients must send (default: $FLASHTALK_TOKEN)")
    parser.add_argument("--max-sessions", type=int, default=16, help="live sessions admitted at once (default 16)")
    parser.add_argument("--max-upload-mb", type=float, default=8.0, help="largest portrait upload in MB (default 8)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    weights = parser.add_mutually_exclusive_group()
    weights.add_argument("--weights", help="full network: a published weights folder or a .safetensors bundle")
    weights.add_argument("--seeded-weights", action="store_true",
                         help="full network with seeded synthetic weights (not a face: for testing)")
    parser.add_argument("--preset", default="liveportrait", choices=("liveportrait", "tiny"),
                        help="network size with --seeded-weights (default liveportrait)")
    parser.add_argument("--precision", metavar="fp32|bf16|fp16",
                        help="renderer precision of the network (default bf16 on CUDA, fp32 on CPU)")


def run(args: argparse.Namespace) -> int:
    try:
        from flashtalk.serving.server import ServeConfig, check_config, serve
    except ModuleNotFoundError as exc:
        if exc.name == "aiohttp":
            raise FlashTalkError("flashtalk serve needs aiohttp: pip install 'flashtalk[serve]'") from None
        raise
    from flashtalk.runtime.engine import _default_device

    if not 0 < args.max_upload_mb <= 64:
        raise FlashTalkError(f"--max-upload-mb must be in (0, 64]; got {args.max_upload_mb}")
    config = ServeConfig(host=args.host, port=args.port, token=args.token, max_sessions=args.max_sessions,
                         max_upload_bytes=int(args.max_upload_mb * (1 << 20)), device=None)
    check_config(config)  # refuse a public bind without a token before touching the device
    config = ServeConfig(**{**config.__dict__, "device": str(_default_device(args.device))})
    if args.weights is None and not args.seeded_weights:
        if args.precision is not None:
            raise FlashTalkError("--precision applies to the network (--weights / --seeded-weights), not the preview")
        serve(config)  # the preview
        return 0
    import torch
    from aiohttp import web

    from flashtalk.model.bundle import load_networks, seeded_networks
    from flashtalk.runtime.session import NetworkStreamingBackend
    from flashtalk.runtime.network import resolve_precision
    from flashtalk.serving.server import create_app

    resolve_precision(args.precision, torch.device(config.device))  # a bad value fails before the weights load
    nets = seeded_networks(args.preset) if args.seeded_weights else load_networks(args.weights)
    backend = NetworkStreamingBackend(nets, config.device, seeded=args.seeded_weights, precision=args.precision)
    print(f"flashtalk serve: http://{config.host}:{config.port}/  (backend {backend.name}, max "
          f"{config.max_sessions} sessions{', token required' if config.token else ''})", flush=True)
    web.run_app(create_app(config, backend), host=config.host, port=config.port, print=None, handle_signals=True)
    return 0
