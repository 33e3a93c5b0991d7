"""Aggregate FPS of `flashtalk batch` against a loop of `flashtalk animate` calls over the same jobs.

    python benchmarks/batch_vs_animate.py --clips 20 --min-s 2 --max-s 10              # the preview
    python benchmarks/batch_vs_animate.py --seeded-tiny --clips 3 --min-s 0.3 --max-s 0.6

Both sides are timed as a user runs them: whole processes (start-up, weight loading, decoding, face crop,
rendering, encoding), `batch` once over a manifest, `animate` once per job, one after another. Clips are
excerpts of the bundled speech (looped for lengths past its 8 s), lengths spread evenly over
[min-s, max-s]; every job uses the bundled portrait. The frames of each pair of outputs are compared too.
Prints a Markdown table with the conditions (date, commit, CPU / GPU, command).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _clips(folder: Path, count: int, lo: float, hi: float) -> list[Path]:
    import soundfile as sf

    from flashtalk.cli.animate import demo_assets
    from flashtalk.io.audio import load_audio

    speech = load_audio(demo_assets()[1]).samples
    looped = np.tile(speech, int(np.ceil(hi * 16000 / len(speech))) + 1)
    out = []
    for k in range(count):
        seconds = lo + (hi - lo) * (k / max(1, count - 1))
        start = (k * 7919 * 16) % len(speech)
        path = folder / f"clip{k:02d}.wav"
        sf.write(path, looped[start : start + int(seconds * 16000)], 16000)
        out.append(path)
    return out


def _run(argv: list[str]) -> float:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "flashtalk", *argv], check=True, env=env, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def _frames(path: Path) -> np.ndarray:
    import av

    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


def _hardware() -> str:
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    except ImportError:
        pass
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in line
        ),
        platform.processor(),
    )
    return f"{model}, {os.cpu_count()} cores"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clips", type=int, default=20)
    p.add_argument("--min-s", type=float, default=2.0)
    p.add_argument("--max-s", type=float, default=10.0)
    p.add_argument("--seeded-tiny", action="store_true", help="the network with seeded weights, tiny preset")
    p.add_argument("--device", help="cpu or cuda")
    p.add_argument("--max-batch", type=int, default=64, help="batch --max-batch")
    args = p.parse_args()

    weights = ["--seeded-weights", "--preset", "tiny"] if args.seeded_tiny else []
    device = ["--device", args.device] if args.device else []
    with tempfile.TemporaryDirectory(prefix="flashtalk-batch-bench-") as tmp:
        folder = Path(tmp)
        from flashtalk.cli.animate import demo_assets

        portrait = demo_assets()[0]
        clips = _clips(folder, args.clips, args.min_s, args.max_s)
        manifest = folder / "jobs.jsonl"
        manifest.write_text(
            "".join(
                json.dumps({"portrait": str(portrait), "audio": str(c), "output": f"{c.stem}.mp4"}) + "\n"
                for c in clips
            )
        )
        batch_s = _run(
            [
                "batch",
                str(manifest),
                "--out",
                str(folder / "batch"),
                "-q",
                "--max-batch",
                str(args.max_batch),
                *weights,
                *device,
            ]
        )
        (folder / "animate").mkdir()
        animate_s = sum(
            _run(
                [
                    "animate",
                    str(portrait),
                    str(c),
                    "-o",
                    str(folder / "animate" / f"{c.stem}.mp4"),
                    "-q",
                    *weights,
                    *device,
                ]
            )
            for c in clips
        )
        frames, same = 0, 0
        for c in clips:
            a, b = _frames(folder / "batch" / f"{c.stem}.mp4"), _frames(folder / "animate" / f"{c.stem}.mp4")
            frames += len(a)
            same += int(a.shape == b.shape and np.array_equal(a, b))
            worst = int(np.abs(a.astype(int) - b).max()) if a.shape == b.shape else -1
            if a.shape != b.shape or worst > 2:
                print(f"warning: {c.stem}: batch and animate frames differ (max {worst})", file=sys.stderr)
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    backend = "seeded tiny network" if args.seeded_tiny else "preview"
    print(f"date {datetime.date.today()}, commit {commit.stdout.strip() or '?'}, {_hardware()}")
    print(f"command: python benchmarks/batch_vs_animate.py {' '.join(sys.argv[1:])}")
    print()
    print("| backend | jobs | frames | `animate` loop | `batch` | ratio | identical outputs |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    print(
        f"| {backend} | {args.clips} clips, {args.min_s:g}-{args.max_s:g} s | {frames} | "
        f"{frames / animate_s:.2f} FPS ({animate_s:.1f} s) | {frames / batch_s:.2f} FPS ({batch_s:.1f} s) | "
        f"{animate_s / batch_s:.2f}x | {same}/{args.clips} |"
    )


if __name__ == "__main__":
    main()
