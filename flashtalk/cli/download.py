"""`flashtalk download`: fetch the published LivePortrait, JoyVASA and HuBERT files (pinned revisions,
resumable, checksum-verified) into the Hugging Face cache or `--dir DIR`, then load them once.

Afterwards `--weights hf` (or `Engine.from_pretrained()`) reads the cache, offline too, and `--weights DIR`
reads a `--dir` folder.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from flashtalk.errors import FlashTalkError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dir", metavar="DIR", help="download into DIR (default: the Hugging Face cache)")
    p.add_argument(
        "--revision",
        nargs="+",
        metavar="REPO=REV",
        help="use another revision of a repo (e.g. LivePortrait=main); default: the pinned commits",
    )
    p.add_argument("--dry-run", action="store_true", help="list repos, revisions, files and sizes; fetch nothing")
    p.add_argument("--no-load", action="store_true", help="skip loading the networks after the download")


def _load_check(folder: Path, say) -> None:
    from flashtalk.faces.onnx_models import load as load_faces
    from flashtalk.weights.bundle import load_networks

    load_faces(folder)
    say("loaded LivePortrait's face models (detector, 106 and 203 landmarks)")
    load_networks(folder)
    say("loaded the LivePortrait renderer, the JoyVASA motion generator and the audio encoder")


def _dry_run(hub, revs: dict[str, str], target: Path | None) -> int:
    """List what `download` would fetch; with the hub, sizes and licences; without it (HF_HUB_OFFLINE, or
    no network), where each file would go and which are already there."""
    offline = "HF_HUB_OFFLINE is set" if hub.offline() else None
    if offline is None:
        try:
            pl = hub.plan(revs, query=True)
        except hub.HubUnreachable as exc:
            offline = str(exc)
    if offline is not None:
        pl = hub.plan(revs, query=False)
        where = target if target is not None else hub.cache_dir()
        print(f"offline ({offline}): sizes, checksums and licences need the hub")
        print(f"files go to {where}" + ("" if target is not None else " (the Hugging Face cache)"))
        print(f"{'repo':<36} {'revision':<40} {'here?':>8}  file")
        for f in pl.files:
            have = "present" if hub.local_copy(f, target) else "missing"
            print(
                f"{f.repo.repo_id:<36} {f.revision:<40} {have:>8}  {f.path}" + ("  (if needed)" if f.optional else "")
            )
        print(hub.INSIGHTFACE_NOTICE)
        return 0
    print(f"{'repo':<36} {'revision':<40} {'size':>10}  file")
    for f in pl.files:
        print(
            f"{f.repo.repo_id:<36} {f.revision:<40} {hub._size(f.size):>10}  {f.path}"
            + ("  (if needed)" if f.optional else "")
        )
    known = [f.size for f in pl.files if f.size is not None and not f.optional]
    print(f"total {hub._size(sum(known))} (without the files marked 'if needed')")
    for r in hub.REPOS:
        note = f" ({r.note})" if r.note else ""
        print(f"licence of {r.repo_id}: {pl.licences.get(r.repo_id, 'unknown')}{note}")
    print(hub.INSIGHTFACE_NOTICE)
    return 0


def run(args: argparse.Namespace) -> int:
    from flashtalk.weights import hub

    def say(line: str) -> None:
        print(line, file=sys.stderr)

    revs = hub.revisions(args.revision)
    if args.dry_run:
        return _dry_run(hub, revs, Path(args.dir) if args.dir else None)
    if hub.offline():
        raise FlashTalkError(
            "HF_HUB_OFFLINE is set: downloading needs the hub (unset it; `--weights hf` reads the cache offline)"
        )
    target = Path(args.dir) if args.dir else None
    if target is not None and target.exists() and not target.is_dir():
        raise FlashTalkError(f"--dir {target} exists and is not a folder")
    say(f"downloading from {hub.endpoint()} into {target or hub.cache_dir()}")
    files = hub.download(revs, target, say=say)
    folder = target if target is not None else hub.link_view(files, revs)
    if not args.no_load:
        _load_check(folder, say)
    use = f"--weights {target}" if target is not None else "--weights hf"
    say(f"done: pass {use} to `flashtalk animate` / `serve`")
    return 0
