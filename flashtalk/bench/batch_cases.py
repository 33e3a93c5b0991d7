"""The batch benchmark case: aggregate FPS of many short clips through the many-clip driver
(`flashtalk.runtime.batch.render_clips`: several clips' frames packed into each render call, loading and
encoding overlapping the compute), next to the same clips made one at a time as `animate` makes them
(`flashtalk.runtime.offline.render`). Listed in the registry (`flashtalk.bench.registry.model_cases`).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from flashtalk.bench.cases import ASSETS, NO_COMPILE, BenchCase, Built, Provider, Setup, kernel_mode, networks

GPU_CLIPS = (1.0, 1.5, 2.0, 2.5, 1.2, 0.8, 1.8, 2.2)  # seconds of speech per clip: 8 short clips, 13 s in all
QUICK_CPU = "not in --quick on CPU (the tiny network renders a frame in about a second here)"
CPU_CLIPS = (0.04, 0.06)  # the tiny preset renders a 512² frame in seconds here: a frame or two each


def _clips(folder: Path, lengths: tuple[float, ...]) -> list[Path]:
    """WAV excerpts of the bundled speech, one per length, from different offsets."""
    import soundfile as sf

    from flashtalk.io.audio import load_audio

    speech = load_audio(ASSETS / "speech.ogg", target_rate=16000).samples
    out = []
    for k, seconds in enumerate(lengths):
        n = int(seconds * 16000)
        start = min(int((1.0 + 0.6 * k) * 16000), max(0, len(speech) - n))  # inside the speech (8 s)
        path = folder / f"clip{k}.wav"
        sf.write(path, speech[start : start + n], 16000)
        out.append(path)
    return out


def batch_fps(setup: Setup) -> Built:
    from flashtalk.runtime.backends.network import NetworkBackend
    from flashtalk.runtime.batch import ClipRequest, PackOptions, render_clips
    from flashtalk.runtime.engine import Engine
    from flashtalk.runtime.offline import render

    engine = Engine(NetworkBackend(networks(setup.preset, setup.device), torch.device(setup.device), seeded=True))
    tmp = tempfile.TemporaryDirectory(prefix="flashtalk-bench-batch-")
    folder = Path(tmp.name)
    lengths = GPU_CLIPS if setup.cuda else CPU_CLIPS
    audio = _clips(folder, lengths)
    options = PackOptions(batch_size=16 if setup.cuda else 2, max_batch=64 if setup.cuda else 4, overwrite=True)

    def requests(i: int) -> list[ClipRequest]:
        portrait = ASSETS / "portrait.jpg"
        return [
            ClipRequest(str(k), portrait, a, folder / f"out{k}.mp4", crop="center", seed=i + k)
            for k, a in enumerate(audio)
        ]

    def packed(i: int) -> dict:
        t0 = time.perf_counter()
        frames = 0
        for result in render_clips(engine, requests(i), options):
            if result.error is not None:
                raise RuntimeError(f"batch case: clip {result.request.key} failed: {result.error}")
            frames += result.frames
        return {"frames": frames, "seconds": time.perf_counter() - t0, "latency_ms": []}

    def one_by_one(i: int) -> dict:
        t0 = time.perf_counter()
        frames = 0
        for r in requests(i):
            clip = engine.prepare(r.portrait, r.audio, crop=r.crop, seed=r.seed)
            frames += render(clip, r.output, overwrite=True, batch_size=options.batch_size, progress=False).frames
        return {"frames": frames, "seconds": time.perf_counter() - t0, "latency_ms": []}

    providers: dict[str, Provider | str] = {
        "flashtalk": kernel_mode("auto", packed),
        "one-by-one": kernel_mode("auto", one_by_one) if setup.cuda or not setup.quick else QUICK_CPU,
        "eager": kernel_mode("reference", packed) if setup.cuda or not setup.quick else QUICK_CPU,
        "compile": NO_COMPILE if not setup.compile else "torch.compile: not measured here (see pipeline/offline_fps)",
    }
    return Built(
        providers,
        f"{len(lengths)} clips of {min(lengths):g}-{max(lengths):g} s speech, 512² H.264 + AAC, "
        f"render calls of up to {options.max_batch} frames",
        engine.backend.precision,
        samples_key="aggregate",
        note="one engine; clips' frames packed into shared render calls, loading and encoding in threads; "
        "one-by-one: the same clips through animate's offline path, one after another (seeded weights)",
        extra={"cleanup": tmp.cleanup},
    )


def batch_cases() -> list[BenchCase]:
    return [BenchCase("pipeline/batch_fps", "pipeline", batch_fps)]
