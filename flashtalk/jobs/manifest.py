"""Job manifests: JSONL or CSV, one (portrait, speech) job per line, read into checked `Job`s.

    {"portrait": "alice.jpg", "audio": "hello.wav"}
    {"portrait": "bob.png", "audio": "/data/intro.mp3", "output": "bob/intro.mp4", "seed": 3, "fps": 30}

Keys (the options of `flashtalk animate`): `portrait` and `audio` (paths, relative to the manifest's
folder or absolute), and optionally `output` (a path under the output folder; default
`<portrait stem>-<audio stem>.mp4`), `seed`, `crop` (auto | center | X,Y,W,H), `fps`, `paste_back`,
`controls` (a keyframe-track JSON file or object) and `emotion` (a preset file, a photo, or 63 numbers);
`controls` and `emotion` need the network. A CSV has these keys as its header; empty cells are absent.
A line that is not a valid job becomes a job that fails with its one-line error (the others go on);
so does an output outside the output folder, or one that another job writes.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flashtalk.errors import FlashTalkError
from flashtalk.runtime.batch import ClipRequest

KEYS = ("portrait", "audio", "output", "seed", "crop", "fps", "paste_back", "controls", "emotion")
NETWORK_KEYS = ("controls", "emotion")
TRUE, FALSE = ("true", "1", "yes"), ("false", "0", "no")


@dataclass(frozen=True)
class Job:
    """One line of a manifest: its request, or the error that makes it fail."""

    number: int  # 1-based, in manifest order
    output: str  # as written in the summary: relative to the output folder ("" when not known)
    request: ClipRequest | None = None
    error: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)  # what the line gave (for the summary)


def read_manifest(path: str | os.PathLike, out_dir: str | os.PathLike, *, network: bool) -> list[Job]:
    """The jobs of a JSONL (.jsonl / .json) or CSV (.csv) manifest, outputs under `out_dir`. `network`:
    the jobs run on the network (controls and emotion allowed). Raises FlashTalkError only for a manifest
    that cannot be read at all."""
    path = Path(path)
    if not path.is_file():
        raise FlashTalkError(f"manifest {path} not found")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise FlashTalkError(f"manifest {path}: cannot read it ({exc})") from None
    if path.suffix.lower() == ".csv":
        rows = _csv_rows(text, path)
    elif path.suffix.lower() in (".jsonl", ".json", ".ndjson"):
        rows = _jsonl_rows(text)
    else:
        raise FlashTalkError(f"manifest {path}: expected a .jsonl or .csv file")
    if not rows:
        raise FlashTalkError(f"manifest {path} holds no job")
    out_root = Path(out_dir).resolve()
    jobs: list[Job] = []
    taken: dict[Path, int] = {}
    for number, row in enumerate(rows, 1):
        if isinstance(row, str):  # a line that is not a JSON object
            jobs.append(Job(number, "", error=row))
            continue
        try:
            request = _request(row, number, path.resolve().parent, out_root, network)
        except FlashTalkError as exc:
            output = row.get("output") if isinstance(row.get("output"), str) else ""
            jobs.append(Job(number, output, error=str(exc), options=row))
            continue
        shown = request.output.relative_to(out_root).as_posix()
        if request.output in taken:
            error = f"output {shown} is also job {taken[request.output]}'s output; give each job its own"
            jobs.append(Job(number, shown, error=error, options=row))
            continue
        taken[request.output] = number
        jobs.append(Job(number, shown, request, options=row))
    return jobs


def _jsonl_rows(text: str) -> list[dict | str]:
    rows: list[dict | str] = []
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            rows.append(f"not valid JSON ({exc.msg} at column {exc.colno})")
            continue
        rows.append(row if isinstance(row, dict) else f"expected a JSON object, got {type(row).__name__}")
    return rows


def _csv_rows(text: str, path: Path) -> list[dict | str]:
    reader = csv.DictReader(text.splitlines())
    header = reader.fieldnames or []
    if "portrait" not in header or "audio" not in header:
        raise FlashTalkError(f"manifest {path}: the CSV header must name portrait and audio (got {header})")
    rows: list[dict | str] = []
    for record in reader:
        if None in record:
            rows.append("more cells than the header names")
            continue
        row = {k.strip(): v.strip() for k, v in record.items() if v is not None and v.strip() != ""}
        if row:
            rows.append(row)
    return rows


def _request(row: dict, number: int, base: Path, out_root: Path, network: bool) -> ClipRequest:
    unknown = sorted(set(row) - set(KEYS))
    if unknown:
        raise FlashTalkError(f"unknown key(s) {', '.join(unknown)} (known: {', '.join(KEYS)})")
    for key in ("portrait", "audio"):
        if not isinstance(row.get(key), str) or not row[key]:
            raise FlashTalkError(f"{key} must be given as a path")
    given = [k for k in NETWORK_KEYS if row.get(k) is not None]
    if given and not network:
        raise FlashTalkError(f"{', '.join(given)} need(s) the network: pass --weights or --seeded-weights")
    portrait, audio = _path(base, row["portrait"]), _path(base, row["audio"])
    output = _output(row.get("output"), portrait, audio, out_root)
    controls: dict[str, Any] = {}
    track = row.get("controls")
    if track is not None:
        if isinstance(track, str) and track.lstrip().startswith("{"):  # inline JSON (a CSV cell)
            try:
                track = json.loads(track)
            except json.JSONDecodeError as exc:
                raise FlashTalkError(f"controls: not valid JSON ({exc.msg})") from None
        controls["controls"] = _path(base, track) if isinstance(track, str) else track
    if row.get("emotion") is not None:
        emotion = row["emotion"]
        controls["emotion"] = _path(base, emotion) if isinstance(emotion, str) else emotion
    if network:
        controls["auto_blink"] = True  # as `animate` without --no-auto-blink
    return ClipRequest(
        key=str(number),
        portrait=portrait,
        audio=audio,
        output=output,
        crop=_crop(row.get("crop", "auto")),
        seed=_int("seed", row.get("seed", 0)),
        fps=_float("fps", row.get("fps", 25.0)),
        paste_back=_bool("paste_back", row.get("paste_back", False)),
        controls=controls,
    )


def _path(base: Path, value: str) -> Path:
    p = Path(value).expanduser()
    return p if p.is_absolute() else base / p


def _output(value: Any, portrait: Path, audio: Path, out_root: Path) -> Path:
    if value is None:
        value = f"{portrait.stem}-{audio.stem}.mp4"
    if not isinstance(value, str) or not value.strip():
        raise FlashTalkError("output must be a file name under the output folder")
    rel = Path(value)
    target = (out_root / rel).resolve()
    if rel.is_absolute() or not target.is_relative_to(out_root) or target == out_root:
        raise FlashTalkError(f"output {value} lands outside the output folder {out_root}")
    if target.suffix.lower() != ".mp4":
        raise FlashTalkError(f"output {value} must end in .mp4")
    return target


def _crop(value: Any) -> Any:
    if isinstance(value, list) and len(value) == 4 and all(isinstance(v, (int, float)) for v in value):
        return tuple(float(v) for v in value)
    if not isinstance(value, str):
        raise FlashTalkError(f"crop must be auto, center or X,Y,W,H, got {value!r}")
    return value


def _int(name: str, value: Any) -> int:
    if isinstance(value, bool):
        raise FlashTalkError(f"{name} must be an integer, got {value!r}")
    try:
        out = int(value)
    except (TypeError, ValueError):
        raise FlashTalkError(f"{name} must be an integer, got {value!r}") from None
    if isinstance(value, float) and out != value:
        raise FlashTalkError(f"{name} must be an integer, got {value!r}")
    return out


def _float(name: str, value: Any) -> float:
    if isinstance(value, bool):
        raise FlashTalkError(f"{name} must be a number, got {value!r}")
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise FlashTalkError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(out):
        raise FlashTalkError(f"{name} must be a finite number, got {value!r}")
    return out


def _bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in TRUE + FALSE:
        return value.lower() in TRUE
    raise FlashTalkError(f"{name} must be true or false, got {value!r}")


__all__ = ["KEYS", "Job", "read_manifest"]
