"""The `flashtalk` command line.

Each subcommand lives in its own module of this package, which provides `add_arguments(parser)` and
`run(args) -> int`; the code it drives lives in the package below (`runtime`, `bench`, `golden`, `kernels`, ...).
A module is imported only when its subcommand runs, so `flashtalk --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from flashtalk import __version__
from flashtalk.errors import FlashTalkError

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "info": ("flashtalk.cli.info", "print the environment and which kernel backend each op uses, and why"),
    "verify-golden": ("flashtalk.cli.verify_golden", "check our networks against a folder of golden tensors"),
    "animate": ("flashtalk.cli.animate", "turn a portrait photo and a speech file into a talking-head video"),
    "batch": (
        "flashtalk.cli.batch",
        "many portrait + speech jobs from a JSONL / CSV manifest: packed batches, resumable, on Ray",
    ),
    "detect": ("flashtalk.cli.detect", "look for FlashTalk's invisible watermark in a video or an image"),
    "convert-weights": (
        "flashtalk.cli.convert_weights",
        "convert a LivePortrait + JoyVASA weights folder into one bundle",
    ),
    "bench": (
        "flashtalk.cli.bench",
        "measure kernels, stages, renderer, pipeline and streaming against eager / compile",
    ),
    "kernels": (
        "flashtalk.cli.kernels",
        "kernels check: compile every kernel variant ahead of time for a GPU arch (sm_90)",
    ),
    "profile": ("flashtalk.cli.profile", "write a torch-profiler trace of a few rendered frames"),
    "serve": ("flashtalk.cli.serve", "stream talking heads over WebSocket/HTTP, with a web page to try it"),
    "emotion": ("flashtalk.cli.emotion", "save a reference photo's expression as an emotion preset (or show one)"),
    "preset": ("flashtalk.cli.emotion", "the former name of `emotion` (kept so scripts keep working)"),
    "lease": (
        "flashtalk.cli.lease",
        "a lent GPU in one call: `lease prepare` here (wheels, golden subset), `lease run` there",
    ),
    "download": (
        "flashtalk.cli.download",
        "fetch the published LivePortrait / JoyVASA / HuBERT weights (Hugging Face)",
    ),
}


def _top_level_parser() -> argparse.ArgumentParser:
    lines = "\n".join(f"  {name:<15} {text}" for name, (_, text) in COMMANDS.items())
    parser = argparse.ArgumentParser(
        prog="flashtalk",
        description="FlashTalk: real-time talking portraits.",
        epilog=f"commands:\n{lines}\n\nRun `flashtalk COMMAND --help` for a command's options.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"flashtalk {__version__}")
    parser.add_argument("command", nargs="?", choices=sorted(COMMANDS), metavar="COMMAND")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] not in COMMANDS:
        parser = _top_level_parser()
        args = parser.parse_args(argv[:1])
        parser.print_help()
        return 0 if args.command is None else 2
    name = argv[0]
    module = importlib.import_module(COMMANDS[name][0])
    parser = argparse.ArgumentParser(prog=f"flashtalk {name}", description=COMMANDS[name][1])
    module.add_arguments(parser)
    args = parser.parse_args(argv[1:])
    try:
        if "=" in os.environ.get("FLASHTALK_KERNELS", ""):  # OP=IMPL items: a typo fails here, before any work
            from flashtalk.kernels.registry import check_environment

            check_environment()
        return int(module.run(args) or 0)
    except FlashTalkError as exc:
        print(f"flashtalk {name}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
