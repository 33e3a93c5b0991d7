"""`flashtalk serve`: the WebSocket/HTTP streaming server with its web page (weights-free preview backend)."""

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
    serve(config)
    return 0
