"""Streaming benchmark cases: a session on the scheduler, fed speech, for each streaming backend (the preview,
the network backend) and latency mode: the first frame's latency after the look-ahead, and the aggregate
FPS and per-frame latency of N sessions at once. Listed in the registry (`flashtalk bench --only stream`).
"""

from __future__ import annotations

import time

import torch

from flashtalk.bench.cases import ASSETS, BenchCase, Built, Provider, Setup, networks


def _stream_backends(setup: Setup) -> dict[str, object]:
    """The two backends: the preview and the network (at the setup's preset)."""
    from flashtalk.runtime.backends.network import NetworkBackend
    from flashtalk.runtime.backends.preview import PreviewBackend

    out: dict[str, object] = {"preview-backend": PreviewBackend(setup.device)}

    out["network-backend"] = NetworkBackend(networks(setup.preset, setup.device), torch.device(setup.device))
    return out


def _stream_providers(setup: Setup, make_run) -> dict[str, "Provider | str"]:
    """One provider per streaming backend and latency mode: `make_run(backend, portrait, latency)` with the
    bundled portrait encoded once. The preview has no look-ahead, so it runs once ("exact"); a quick run
    measures the network in serve's default mode ("low") only. An unavailable backend stays its reason."""
    from flashtalk.runtime.backends import encode_portrait

    provs: dict[str, Provider | str] = {}
    for name, backend in _stream_backends(setup).items():
        if isinstance(backend, str):
            provs[name] = backend
            continue
        portrait = encode_portrait(backend, ASSETS / "portrait.jpg", crop="center")
        modes = ("exact",) if name == "preview-backend" else ("low",) if setup.quick else ("low", "exact")
        for latency in modes:
            label = name if name == "preview-backend" else f"{name} {latency}"
            provs[label] = make_run(backend, portrait, latency)
    return provs


def first_frame_latency(setup: Setup) -> Built:
    """Push speech 40 ms at a time into a fresh session, one scheduler tick after each chunk; time from the
    chunk that completed the first frame's look-ahead to that frame (compute only). The session's announced
    look-ahead is the audio that had to arrive first; it rides along in the samples' notes."""
    import numpy as np

    from flashtalk.constants import HOP
    from flashtalk.io.audio import load_audio
    from flashtalk.runtime.scheduler import Scheduler
    from flashtalk.runtime.session import Frame, Session

    speech = load_audio(ASSETS / "speech.ogg", target_rate=16000).samples
    max_chunks = (len(speech) - HOP) // HOP

    def make_run(backend, portrait, latency: str) -> Provider:
        def run(i: int) -> float:
            sched = Scheduler(backend, max_sessions=1)
            s = Session(
                backend, portrait, seed=i, sample_rate=16000, sample_format="f32le", idle=False, latency=latency
            )
            sched.admit(s)
            try:
                for k in range(max_chunks):  # bounded: the whole clip at most, then its end flushes
                    t0 = time.perf_counter()
                    s.push_audio(np.ascontiguousarray(speech[k * HOP : (k + 1) * HOP], dtype=np.float32))
                    if k == max_chunks - 1:
                        s.end_speech()
                    sched.step()
                    if any(isinstance(item, Frame) for item in s.poll()):
                        if setup.cuda:
                            torch.cuda.synchronize()
                        return (time.perf_counter() - t0) * 1e3
                raise RuntimeError(f"no frame after {max_chunks} chunks of speech ({latency} latency)")
            finally:
                sched.release(s)

        return run

    return Built(
        _stream_providers(setup, make_run),
        "40-ms chunks of 16-kHz speech -> first 512² frame (watermarked)",
        "fp32",
        samples_key="latency",
        note="compute only: from the chunk that completed the first frame's look-ahead to the frame; "
        "scheduler stepped inline, no network; look-ahead: low <= 160 ms, exact = the model window",
    )


def aggregate_fps(setup: Setup) -> Built:
    """N sessions each push the same amount of speech at once; aggregate FPS and per-frame latency."""
    import numpy as np

    from flashtalk.constants import FPS, HOP
    from flashtalk.io.audio import load_audio
    from flashtalk.runtime.scheduler import Scheduler
    from flashtalk.runtime.session import Frame, Session

    seconds = 2.0 if setup.cuda else 0.2
    speech = load_audio(ASSETS / "speech.ogg", target_rate=16000).samples
    n = setup.sessions

    def make_run(backend, portrait, latency: str) -> Provider:
        def run(i: int) -> dict:
            sched = Scheduler(backend, max_sessions=n)
            sessions = [
                Session(
                    backend, portrait, seed=k, sample_rate=16000, sample_format="f32le", idle=False, latency=latency
                )
                for k in range(n)
            ]
            want = int(seconds * FPS)
            for k, s in enumerate(sessions):
                sched.admit(s)
                start = ((i * n + k) * HOP * 7) % (len(speech) - want * HOP)
                s.push_audio(np.ascontiguousarray(speech[start : start + want * HOP], dtype=np.float32))
                s.end_speech()  # the speech is all there: the last window flushes in either latency mode
            got, t0 = 0, time.perf_counter()
            for _ in range(100 * want):  # bounded; every tick renders at least one frame once motion is in
                if got >= n * want:
                    break
                sched.step()
                got += sum(sum(isinstance(x, Frame) for x in s.poll()) for s in sessions)
            wall = time.perf_counter() - t0
            lat = [1e3 * v for s in sessions for v in s.stats.latencies]
            for s in sessions:
                sched.release(s)
            return {"frames": got, "seconds": wall, "latency_ms": lat}

        return run

    return Built(
        _stream_providers(setup, make_run),
        f"{n} sessions x {seconds:g} s of speech, pushed at once",
        "fp32",
        samples_key="aggregate",
        frames=None,
        note="one batched motion + one batched render call per scheduler tick",
    )


def stream_cases() -> list[BenchCase]:
    return [
        BenchCase("stream/first_frame_latency", "stream", first_frame_latency),
        BenchCase("stream/aggregate_fps", "stream", aggregate_fps),
    ]
