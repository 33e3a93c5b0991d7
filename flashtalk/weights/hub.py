"""The published weights on the Hugging Face Hub: which files of which repos at which pinned revisions,
fetching them (resumable, checksum-verified) into the HF cache or a folder, and resolving the cache
offline for `--weights hf` / `Engine.from_pretrained()`.

huggingface_hub is an optional extra (`pip install 'flashtalk[hub]'`), imported only here, lazily. The
endpoint (`HF_ENDPOINT`), cache (`HF_HUB_CACHE` / `HF_HOME`) and offline switch (`HF_HUB_OFFLINE`) are read
at call time, so they work however the process was started.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from flashtalk.errors import FlashTalkError

log = logging.getLogger(__name__)

EXTRA_HINT = "pip install 'flashtalk[hub]'"
HUBERT_WEIGHTS = "pytorch_model.bin"
RETRIES = 5  # dropped connections resumed within one run


@dataclass(frozen=True)
class Repo:
    """One Hub repo: files always fetched, and `optional` ones fetched only when `needs_optional` says so."""

    repo_id: str
    revision: str  # a commit hash: what `download` fetches unless --revision says otherwise
    folder: str  # sub-folder of --dir DIR
    files: tuple[str, ...]
    optional: tuple[str, ...] = ()
    note: str = ""


# Pinned revisions (commit hashes; override with --revision REPO=REV). The LivePortrait weights moved from
# KwaiVGI/LivePortrait to KlingTeam/LivePortrait; the commit hash names the same files under either.
REPOS = (
    Repo(
        "KlingTeam/LivePortrait",
        "82a4fa6735ca58432b6ce39301b4b9ee066dea47",
        "LivePortrait",
        (
            "liveportrait/base_models/appearance_feature_extractor.pth",
            "liveportrait/base_models/motion_extractor.pth",
            "liveportrait/base_models/warping_module.pth",
            "liveportrait/base_models/spade_generator.pth",
            "liveportrait/retargeting_models/stitching_retargeting_module.pth",
            "liveportrait/landmark.onnx",
            "insightface/models/buffalo_l/det_10g.onnx",
            "insightface/models/buffalo_l/2d106det.onnx",
        ),
        note="formerly KwaiVGI/LivePortrait; the insightface/ files are InsightFace models: non-commercial "
        "research use only",
    ),
    Repo(
        "jdh-algo/JoyVASA",
        "b8f13fe9c23679c56f21b1baafb92ed00dc087c3",
        "JoyVASA",
        (
            "motion_generator/motion_generator_hubert_chinese.pt",
            "motion_template/motion_template.pkl",
        ),
    ),
    Repo(
        "TencentGameMate/chinese-hubert-base",
        "fce0375452b1dd6c080ac3248d423d4d037bc831",
        "chinese-hubert-base",
        ("config.json",),
        optional=(HUBERT_WEIGHTS,),
        note=f"{HUBERT_WEIGHTS} only if the JoyVASA checkpoint has no audio_encoder.* weights",
    ),
)
INSIGHTFACE_NOTICE = (
    "NOTICE: insightface/models/buffalo_l/{det_10g,2d106det}.onnx are InsightFace models, licensed "
    "for non-commercial research purposes only (LivePortrait's LICENSE repeats this). Commercial "
    "users must obtain a licence from InsightFace or not use them (flashtalk then uses its Haar crop)."
)


def _hub():
    try:
        import huggingface_hub
    except ModuleNotFoundError:
        raise FlashTalkError(f"downloading weights needs huggingface_hub: {EXTRA_HINT}") from None
    return huggingface_hub


def endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def cache_dir() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    xdg = os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache"))
    home = os.environ.get("HF_HOME") or os.path.join(xdg, "huggingface")
    return Path(home) / "hub"


def revisions(overrides: list[str] | None) -> dict[str, str]:
    """repo id -> revision: the pins, with `REPO=REV` overrides (or a bare REV when it is unambiguous)."""
    revs = {r.repo_id: r.revision for r in REPOS}
    for item in overrides or []:
        repo, sep, rev = item.rpartition("=")
        if not sep or not rev:
            raise FlashTalkError(f"--revision {item!r}: expected REPO=REVISION, e.g. {REPOS[0].repo_id}=main")
        match = [r for r in revs if r.split("/")[-1] == repo.split("/")[-1]]  # the name alone, or a former owner
        if len(match) != 1:
            raise FlashTalkError(f"--revision {item!r}: unknown repo {repo!r} (known: {', '.join(revs)})")
        revs[match[0]] = rev
    return revs


@dataclass
class Planned:
    repo: Repo
    revision: str
    path: str
    optional: bool
    size: int | None = None
    etag: str | None = None
    commit: str | None = None


@dataclass
class Plan:
    files: list[Planned]
    licences: dict[str, str] = field(default_factory=dict)


def plan(revs: dict[str, str], *, query: bool = True) -> Plan:
    """Every file with its repo and revision; with `query`, sizes, checksums and licences from the hub."""
    files = [Planned(r, revs[r.repo_id], f, False) for r in REPOS for f in r.files]
    files += [Planned(r, revs[r.repo_id], f, True) for r in REPOS for f in r.optional]
    out = Plan(files)
    if not query:
        return out
    hub = _hub()
    api = hub.HfApi(endpoint=endpoint())
    for r in REPOS:
        try:
            info = api.model_info(r.repo_id, revision=revs[r.repo_id])
            card = info.card_data.to_dict() if info.card_data is not None else {}
            out.licences[r.repo_id] = str(card.get("license") or "not stated on the model card")
        except Exception as exc:
            raise _hub_error(exc, r.repo_id, revs[r.repo_id], None) from None
    for p in files:
        url = hub.hf_hub_url(p.repo.repo_id, p.path, revision=p.revision, endpoint=endpoint())
        try:
            meta = hub.get_hf_file_metadata(url)
        except Exception as exc:
            raise _hub_error(exc, p.repo.repo_id, p.revision, p.path) from None
        p.size, p.etag, p.commit = meta.size, meta.etag, meta.commit_hash
        if not p.etag:
            raise FlashTalkError(
                f"{p.repo.repo_id}@{p.revision[:12]}: {p.path}: {endpoint()} sent no ETag, so the "
                "download could not be verified"
            )
    return out


class HubUnreachable(FlashTalkError):
    """The hub could not be reached at all (no network, DNS, refused): nothing was learnt from it."""


def _hub_error(exc: Exception, repo: str, rev: str, path: str | None) -> FlashTalkError:
    name = type(exc).__name__
    what = f"{repo}@{rev[:12]}" + (f": {path}" if path else "")
    if isinstance(exc, _transport_errors()) or "ConnectError" in name or "ConnectionError" in name:
        first = (str(exc).strip().splitlines() or [name])[0][:200]
        return HubUnreachable(f"{endpoint()} could not be reached ({name}: {first})")
    if path and ("EntryNotFound" in name or "404" in str(exc)[:200]):
        return FlashTalkError(f"{what}: no such file on {endpoint()} (404); check --revision")
    if "RevisionNotFound" in name:
        return FlashTalkError(f"{repo}: revision {rev} not found on {endpoint()}")
    if "RepositoryNotFound" in name:
        return FlashTalkError(f"{repo}: repository not found on {endpoint()} (or it needs a token: HF_TOKEN)")
    first = (str(exc).strip().splitlines() or [name])[0][:200]
    return FlashTalkError(f"{what}: download failed from {endpoint()} ({name}: {first})")


def _checksum_ok(path: Path, etag: str | None) -> bool | None:
    """sha256 (LFS files) or git blob sha1 (small files) against the hub's ETag; None if not checkable."""
    if not etag:
        return None
    etag = etag.strip('"').lower()
    if len(etag) == 64:
        h = hashlib.sha256()
    elif len(etag) == 40:
        h = hashlib.sha1(b"blob %d\0" % path.stat().st_size)
    else:
        return None
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest() == etag


def _transport_errors() -> tuple[type[BaseException], ...]:
    import importlib

    errors = []
    for name in ("httpx2", "httpx"):  # huggingface_hub's HTTP client (httpx2 in 1.x+, httpx before)
        try:
            errors.append(importlib.import_module(name).TransportError)
        except (ImportError, AttributeError):
            pass
    return tuple(errors) or (OSError,)


def _stream(url: str, part: Path, size: int | None, what: str) -> None:
    """GET url into `part`, appending from its current length (Range); resumes after dropped connections
    (a few times) and across runs (the .part file stays until the bytes are complete and verified)."""
    hub = _hub()
    from huggingface_hub.utils import build_hf_headers, hf_raise_for_status

    errors = _transport_errors()
    session = hub.get_session()
    for attempt in range(RETRIES + 1):
        have = part.stat().st_size if part.exists() else 0
        if size is not None and have >= size:
            return
        headers = build_hf_headers()
        headers["Accept-Encoding"] = "identity"
        if have:
            headers["Range"] = f"bytes={have}-"
        try:
            with session.stream("GET", url, headers=headers, follow_redirects=True, timeout=60) as r:
                hf_raise_for_status(r)
                mode = "ab" if have and r.status_code == 206 else "wb"  # a 200 restarts the file
                with open(part, mode) as f:
                    for chunk in r.iter_bytes():
                        f.write(chunk)
            return
        except errors as exc:
            if attempt == RETRIES:
                got = part.stat().st_size if part.exists() else 0
                raise FlashTalkError(
                    f"{what}: the connection kept failing ({type(exc).__name__}: {exc}); "
                    f"run the command again to resume from {got} bytes"
                ) from None
            log.warning("%s: %s; resuming", what, exc)


def _place_in_cache(p: Planned, data: Path) -> Path:
    """Move verified bytes into the HF cache layout: blobs/<etag>, snapshots/<commit>/<path> -> blob,
    refs/<revision> when the revision is a name."""
    storage = cache_dir() / f"models--{p.repo.repo_id.replace('/', '--')}"
    blob = storage / "blobs" / str(p.etag)
    os.replace(data, blob)
    commit = p.commit or p.revision  # the hub names the commit in X-Repo-Commit; a pinned hash is one
    pointer = storage / "snapshots" / commit / p.path
    pointer.parent.mkdir(parents=True, exist_ok=True)
    if pointer.is_symlink() or pointer.exists():
        pointer.unlink()
    try:
        pointer.symlink_to(os.path.relpath(blob, pointer.parent))
    except OSError:  # no symlinks (some Windows setups): a copy
        import shutil

        shutil.copyfile(blob, pointer)
    if p.revision != commit:
        (storage / "refs").mkdir(parents=True, exist_ok=True)
        (storage / "refs" / p.revision).write_text(commit)
    return pointer


def fetch(p: Planned, target: Path | None) -> Path:
    """One file into the HF cache (target None) or target/<repo folder>/<path>. The bytes go to a .part
    file first and become the file only once their checksum matches the hub's (else deleted)."""
    hub = _hub()
    what = f"{p.repo.repo_id}@{p.revision[:12]}: {p.path}"
    if target is not None:
        final = target / p.repo.folder / p.path
    else:
        hit = hub.try_to_load_from_cache(
            p.repo.repo_id, p.path, cache_dir=str(cache_dir()), revision=p.commit or p.revision
        )
        final = Path(hit) if isinstance(hit, str) else None
    if final is not None and final.is_file() and _checksum_ok(final, p.etag) is not False:
        return final  # already complete
    if target is not None:
        part = final.with_name(final.name + ".part")
    else:
        part = cache_dir() / f"models--{p.repo.repo_id.replace('/', '--')}" / "blobs" / f"{p.etag}.part"
    part.parent.mkdir(parents=True, exist_ok=True)
    url = hub.hf_hub_url(p.repo.repo_id, p.path, revision=p.commit or p.revision, endpoint=endpoint())
    try:
        _stream(url, part, p.size, what)
    except FlashTalkError:
        raise
    except Exception as exc:
        raise _hub_error(exc, p.repo.repo_id, p.revision, p.path) from None
    ok = _checksum_ok(part, p.etag)
    if ok is False or (p.size is not None and part.stat().st_size != p.size):
        part.unlink()
        raise FlashTalkError(
            f"{what}: the downloaded bytes do not match the hub's checksum {p.etag} "
            f"(size {p.size}); the partial file was deleted, run the command again"
        )
    if target is None:
        return _place_in_cache(p, part)
    os.replace(part, final)
    return final


def local_copy(p: Planned, target: Path | None) -> Path | None:
    """Where `p` already is, without the network: target/<repo folder>/<path>, or the HF cache's copy of
    the pinned revision (None when absent, or when huggingface_hub is missing to read the cache)."""
    if target is not None:
        path = target / p.repo.folder / p.path
        return path if path.is_file() else None
    try:
        import huggingface_hub
    except ModuleNotFoundError:
        return None
    hit = huggingface_hub.try_to_load_from_cache(
        p.repo.repo_id, p.path, cache_dir=str(cache_dir()), revision=p.revision
    )
    return Path(hit) if isinstance(hit, str) else None


def needs_hubert_weights(motion_checkpoint: Path) -> bool:
    from flashtalk.weights.joyvasa import load_checkpoint

    return not load_checkpoint(motion_checkpoint).audio_state


def download(revs: dict[str, str], target: Path | None, *, say=print) -> dict[tuple[str, str], Path]:
    """Fetch every needed file; returns (repo id, path in repo) -> local path."""
    pl = plan(revs)
    got: dict[tuple[str, str], Path] = {}
    for p in pl.files:
        if p.optional:
            motion = got[("jdh-algo/JoyVASA", REPOS[1].files[0])]
            if not needs_hubert_weights(motion):
                say(f"  skip {p.repo.repo_id}/{p.path}: {motion.name} carries its audio encoder")
                continue
        say(f"  {p.repo.repo_id}@{p.revision[:12]}  {p.path}  ({_size(p.size)})")
        got[(p.repo.repo_id, p.path)] = fetch(p, target)
    for r in REPOS:
        say(f"licence of {r.repo_id}: {pl.licences.get(r.repo_id, '?')}" + (f" ({r.note})" if r.note else ""))
    say(INSIGHTFACE_NOTICE)
    return got


def _size(n: int | None) -> str:
    if n is None:
        return "size unknown"
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 1024:.1f} KiB"


def view_dir(revs: dict[str, str]) -> Path:
    key = hashlib.sha256(json.dumps(sorted(revs.items())).encode()).hexdigest()[:16]
    root = Path(os.environ.get("FLASHTALK_CACHE") or os.path.join(os.path.expanduser("~/.cache"), "flashtalk"))
    return root / "weights" / key


def link_view(files: dict[tuple[str, str], Path], revs: dict[str, str]) -> Path:
    """One folder in the published layout whose files link to the cache (what `--weights` reads)."""
    view = view_dir(revs)
    by_repo = {r.repo_id: r for r in REPOS}
    for (repo, rel), path in files.items():
        link = view / by_repo[repo].folder / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(path.resolve())
    return view


def resolve_cache(revision: list[str] | None = None) -> Path:
    """The pinned files already in the HF cache (no network; HF_HUB_OFFLINE=1 works) as one weights folder."""
    hub = _hub()
    revs = revisions(revision)
    found, missing = {}, []
    for p in plan(revs, query=False).files:
        hit = hub.try_to_load_from_cache(p.repo.repo_id, p.path, cache_dir=str(cache_dir()), revision=p.revision)
        if isinstance(hit, str):
            found[(p.repo.repo_id, p.path)] = Path(hit)
        elif not p.optional:
            missing.append(f"{p.repo.repo_id}@{p.revision[:12]}/{p.path}")
    if missing:
        raise FlashTalkError(
            f"the Hugging Face cache {cache_dir()} lacks {len(missing)} weights file(s) "
            f"({missing[0]}{', ...' if len(missing) > 1 else ''}); run `flashtalk download`"
        )
    return link_view(found, revs)
