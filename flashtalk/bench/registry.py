"""The one registry of benchmark cases, shared by `flashtalk bench` and the pytest-benchmark suites.

A `BenchCase` builds, for a `Setup` (device, dtype, preset, quick), a `Built`: providers (name -> a callable
`fn(i)` that runs iteration i on inputs[i % rotation], or a string saying why that provider cannot run),
the shape it runs at, and the work it does (FLOPs, bytes, frames) for throughput figures.

Provider names are the same everywhere: "flashtalk" (our code, kernels in `auto` mode: Triton on CUDA, the
reference on CPU), "eager" (the same model / op on the pure-PyTorch references), "compile" (torch.compile of
the eager reference), plus per-case extras (SDPA backends, xformers, the fast renderer when it exists).

The attention and warp kernel cases are the ones listed in attention_cases.py / warp_cases.py (imported, not
re-listed); on the CPU the kernels run at small shapes of the same ops, and the networks use the tiny preset
(with a smaller feature volume for the warping / decoder stages): CPU figures are not GPU figures.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.util
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch

from flashtalk.bench import attention_cases as bench_attention
from flashtalk.bench import warp_cases as bench_warp

Provider = Callable[[int], object]
ASSETS = Path(__file__).resolve().parents[1] / "assets"
GROUPS = ("kernel", "stage", "renderer", "pipeline", "stream")


@dataclass(frozen=True)
class Setup:
    device: str = "cpu"
    preset: str = "tiny"  # renderer / motion / audio preset of the model cases
    quick: bool = True
    compile: bool = True  # build torch.compile providers (else they are reported as skipped)
    rotation: int = 3  # input sets each case cycles through
    sessions: int = 2  # concurrent sessions of the aggregate streaming case
    dtype: torch.dtype | None = None  # kernel dtype override (attention / warp ops)

    @property
    def cuda(self) -> bool:
        return self.device.startswith("cuda")

    @classmethod
    def for_device(cls, device: str, *, quick: bool, compile: bool | None = None, sessions: int | None = None,
                   dtype: torch.dtype | None = None) -> "Setup":
        cuda = device.startswith("cuda")
        if compile is None:  # inductor takes minutes (on two shared CPU cores, or compiling every GPU case): not in --quick
            compile = not quick
        return cls(device, "liveportrait" if cuda else "tiny", quick, compile, 4 if cuda else 3,
                   sessions or (8 if cuda else 2), dtype)


@dataclass
class Built:
    providers: dict[str, Provider | str]
    shape: str
    dtype: str
    flops: float | None = None  # per call
    bytes: float | None = None  # unavoidable memory traffic per call
    frames: int | None = None  # frames produced per call (FPS figures)
    note: str = ""
    samples_key: str | None = None  # streaming cases: the provider returns latency samples (ms) itself
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class BenchCase:
    name: str
    group: str  # one of GROUPS
    build: Callable[[Setup], Built]
    quick: bool = True  # part of --quick
    gpu_only: bool = False


def _dtype_name(dtype: torch.dtype) -> str:
    return {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.uint8: "uint8"}.get(
        dtype, str(dtype).removeprefix("torch."))


def _kernel_mode(mode: str, fn: Callable) -> Callable:
    from flashtalk.kernels import use_kernels

    def run(*args, **kwargs):
        with use_kernels(mode):
            return fn(*args, **kwargs)

    return run


NO_COMPILE = "torch.compile is off (--quick, or over the suite's budget: inductor takes minutes; --compile forces it)"


def _compiled(setup: Setup, fn: Callable) -> Callable | str:
    """torch.compile of a reference function, run with the kernels in reference mode; or why not."""
    return _kernel_mode("reference", torch.compile(fn)) if setup.compile else NO_COMPILE


def _rotating(inputs: list[tuple], fn: Callable) -> Provider:
    return lambda i: fn(*inputs[i % len(inputs)])


def _gen(setup: Setup, seed: int) -> torch.Generator:
    return torch.Generator(device=setup.device).manual_seed(seed)


def tensor_bytes(*tensors: torch.Tensor) -> float:
    return float(sum(t.numel() * t.element_size() for t in tensors))


def kernel_providers(setup: Setup, op: Callable, ref: Callable, inputs: list[tuple]) -> dict[str, Provider | str]:
    """flashtalk / eager / compile of one op over rotating inputs."""
    comp = _compiled(setup, ref)
    return {
        "flashtalk": _rotating(inputs, _kernel_mode("auto", op)),
        "eager": _rotating(inputs, _kernel_mode("reference", ref)),
        "compile": comp if isinstance(comp, str) else _rotating(inputs, comp),
    }


# ------------------------------------------------------------------------------------------------ kernels


def _attention(case: bench_attention.Case) -> Callable[[Setup], Built]:
    def build(setup: Setup) -> Built:
        from flashtalk.kernels.attention import attention, attention_ref

        dtype = setup.dtype or (torch.float16 if setup.cuda else torch.float32)
        torch.manual_seed(0)
        sets = [bench_attention.make_inputs(case, dtype, setup.device) for _ in range(setup.rotation)]
        per_set = [bench_attention.providers(case, *s) for s in sets] if setup.cuda else None
        providers: dict[str, Provider | str] = kernel_providers(
            setup, lambda q, k, v, m: attention(q, k, v, key_padding_mask=m, causal=case.causal),
            lambda q, k, v, m: attention_ref(q, k, v, key_padding_mask=m, causal=case.causal), sets)
        if per_set is None:
            providers["sdpa"] = "not measured on CPU (SDPA backends are CUDA kernels)"
        else:
            for name, fn in per_set[0].items():
                if name.startswith(("sdpa", "xformers")):
                    providers[name] = fn if isinstance(fn, str) else (lambda i, n=name: per_set[i % len(per_set)][n]())
        q, k, v, _ = sets[0]
        return Built(providers, f"B{case.B} H{case.H} L{case.L} D{case.D}" + (" causal" if case.causal else "")
                     + (" key-padding" if case.padded else ""), _dtype_name(dtype), flops=case.flops(),
                     bytes=tensor_bytes(q, k, v, q))
    return build



def warp_inputs(op: str, B: int, size: tuple[int, int, int], dtype: torch.dtype, setup: Setup, seed: int) -> tuple:
    """Inputs of the fused warping ops at feature volume `size` (bench_warp's layout, any device / size)."""
    g = _gen(setup, seed)
    dev, K = setup.device, bench_warp.K
    xs = (torch.rand(B, K, 3, device=dev, generator=g) * 2 - 1) * 0.8
    xd = xs + (torch.rand(B, K, 3, device=dev, generator=g) * 2 - 1) * 0.15
    if op == "dense_motion_input":
        return (torch.randn(B, bench_warp.C_COMP, *size, device=dev, generator=g).to(dtype), xs, xd)
    logits = torch.randn(B, K + 1, *size, device=dev, generator=g).to(dtype)
    return (logits, xs, xd, torch.randn(B, bench_warp.C_FEAT, *size, device=dev, generator=g).to(dtype))


def _warp(case: bench_warp.Case) -> Callable[[Setup], Built]:
    def build(setup: Setup) -> Built:
        mod = importlib.import_module(f"flashtalk.kernels.{case.op}")
        op, ref = getattr(mod, case.op), getattr(mod, f"{case.op}_ref")
        size = bench_warp.SIZE if setup.cuda else (4, 16, 16)
        B = case.B if setup.cuda else min(case.B, 2)
        dtype = setup.dtype or torch.float32
        sets = [warp_inputs(case.op, B, size, dtype, setup, s) for s in range(setup.rotation)]
        out = ref(*sets[0])
        out = out if torch.is_tensor(out) else out[0]
        return Built(kernel_providers(setup, op, ref, sets), f"B{B} K{bench_warp.K} volume {'x'.join(map(str, size))}",
                     _dtype_name(dtype), bytes=tensor_bytes(*sets[0], out))
    return build


def _paste_back(B_gpu: int) -> Callable[[Setup], Built]:
    def build(setup: Setup) -> Built:
        from flashtalk.kernels.paste_back import make_feather_mask, paste_back, paste_back_ref

        crop, (H, W) = (512, (1080, 1920)) if setup.cuda else (64, (96, 128))
        B = B_gpu if setup.cuda else 2
        mask = make_feather_mask(crop, device=setup.device)
        s = crop / (0.45 * H)  # the face covers ~45% of the frame height, centred
        affine = torch.tensor([[[s, 0.0, crop / 2 - s * W / 2], [0.0, s, crop / 2 - s * H / 2]]], device=setup.device)
        sets = []
        for seed in range(setup.rotation):
            g = _gen(setup, seed)
            sets.append((torch.rand(B, 3, crop, crop, device=setup.device, generator=g),
                         torch.randint(0, 256, (1, H, W, 3), device=setup.device, generator=g, dtype=torch.uint8),
                         affine, mask))
        return Built(kernel_providers(setup, paste_back, paste_back_ref, sets), f"B{B} crop {crop}² -> {W}x{H}",
                     "fp32->uint8", bytes=tensor_bytes(*sets[0][:3]) + B * H * W * 3, frames=B)
    return build


def _watermark(B_gpu: int) -> Callable[[Setup], Built]:
    def build(setup: Setup) -> Built:
        from flashtalk.kernels.watermark_embed import watermark_embed, watermark_embed_ref
        from flashtalk.provenance import watermark as wm

        side, B = (512, B_gpu) if setup.cuda else (128, 2)
        table = torch.from_numpy(wm.cell_table(wm.DEFAULT_KEY, 1234)).to(setup.device)
        kw = dict(cell=wm.CELL, base=wm.BASE, gain=wm.GAIN, act_ref=wm.ACT_REF)
        sets = [(torch.randint(0, 256, (B, side, side, 3), device=setup.device, generator=_gen(setup, s),
                               dtype=torch.uint8),) for s in range(setup.rotation)]
        provs = kernel_providers(setup, functools.partial(watermark_embed, table=table, **kw),
                                 functools.partial(watermark_embed_ref, table=table, **kw), sets)
        return Built(provs, f"B{B} {side}x{side}x3", "uint8", bytes=2 * tensor_bytes(sets[0][0]), frames=B)
    return build


def kernel_cases() -> list[BenchCase]:
    quick_attention = {"motion-B16-H8-L110-D32", "audio-B8-H12-L1000-D64-keypad"}
    cases = [BenchCase(f"attention/{c.name}", "kernel", _attention(c), quick=c.name in quick_attention)
             for c in bench_attention.CASES]
    # the CPU runs one small attention shape of each kind instead of the GPU grid
    cases += [BenchCase("attention/cpu-B2-H2-L37-D16-keypad", "kernel",
                        _attention(bench_attention.Case("cpu", 2, 2, 37, 16, padded=True)))]
    cases += [BenchCase(f"{c.op}/B{c.B}", "kernel", _warp(c), quick=c.B == 8) for c in bench_warp.CASES]
    cases += [BenchCase(f"warp_tail/B{b}", "kernel", bench_warp.warp_tail_case(b)) for b in (1, 8)]
    cases += [BenchCase("paste_back/B16", "kernel", _paste_back(16)), BenchCase("watermark_embed/B16", "kernel", _watermark(16))]
    return cases


# ------------------------------------------------------------------------------------------------ models


@functools.lru_cache(maxsize=2)
def networks(preset: str, device: str):
    """Seeded networks of a preset (golden weight rule: not a face, same cost), on `device`, eval mode."""
    from flashtalk.model.bundle import seeded_networks

    return seeded_networks(preset).to(torch.device(device))


@contextlib.contextmanager
def swapped(module: torch.nn.Module, **children: torch.nn.Module) -> Iterator[None]:
    """Temporarily replace named child modules (e.g. by their torch.compile wrappers)."""
    old = {name: getattr(module, name) for name in children}
    try:
        for name, child in children.items():
            setattr(module, name, child)
        yield
    finally:
        for name, child in old.items():
            setattr(module, name, child)


@functools.lru_cache(maxsize=4)
def _compiled_module(module: torch.nn.Module) -> torch.nn.Module:
    return torch.compile(module)


def count_flops(fn: Callable[[], object]) -> float | None:
    """FLOPs of one call (matmuls and convolutions, torch's FlopCounterMode), or None if it cannot count."""
    from torch.utils.flop_counter import FlopCounterMode

    try:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            fn()
        return float(counter.get_total_flops()) or None
    except Exception:  # noqa: BLE001 - an op the counter cannot follow: no FLOP figure rather than a crash
        return None


def _model_providers(run: Callable[[int], object], compiled_run: Callable[[int], object] | str):
    return {"flashtalk": _kernel_mode("auto", run), "eager": _kernel_mode("reference", run), "compile": compiled_run}


def _volume(setup: Setup, nets):
    """(source state of a random image, its feature volume f_s): the real volume on CUDA, resized to 16x16
    on the CPU (the networks are fully convolutional; the output is then 128²)."""
    r = nets.renderer
    size = r.cfg.motion.image_size
    img = torch.rand(1, 3, size, size, device=setup.device, generator=_gen(setup, 7))
    src = r.encode_source(img)
    f_s = src.f_s if setup.cuda else torch.nn.functional.interpolate(src.f_s, size=(src.f_s.shape[2], 16, 16),
                                                                      mode="trilinear")
    return src, f_s


def _stage(kind: str) -> Callable[[Setup], Built]:
    def build(setup: Setup) -> Built:
        nets = networks(setup.preset, setup.device)
        r, dev, R = nets.renderer, setup.device, setup.rotation
        cm = _compiled_module
        if kind == "source_encode":
            size = r.cfg.motion.image_size
            imgs = [torch.rand(1, 3, size, size, device=dev, generator=_gen(setup, s)) for s in range(R)]
            run = lambda i, m=r.motion_extractor, f=r.appearance_feature_extractor: (m(imgs[i % R]), f(imgs[i % R]))  # noqa: E731
            crun = lambda i: run(i, cm(r.motion_extractor), cm(r.appearance_feature_extractor))  # noqa: E731
            shape = f"1x3x{size}x{size}"
        elif kind == "audio_encode":
            from flashtalk.model.audio_encoder import joyvasa_audio_features

            cfg = nets.motion.cfg
            wins = [torch.randn(1, cfg.window_samples, device=dev, generator=_gen(setup, s)) * 0.1 for s in range(R)]
            fn = lambda w: joyvasa_audio_features(nets.audio, w, cfg.n_motions)  # noqa: E731
            cfn = torch.compile(fn) if setup.compile else None
            run, crun = (lambda i: fn(wins[i % R])), (lambda i: cfn(wins[i % R]))
            shape = f"1x{cfg.window_samples} samples -> {cfg.n_motions} frames"
        elif kind == "motion_window":
            from flashtalk.model.motion_pipeline import MotionStream
            from flashtalk.runtime.network import sampler_config

            cfg = nets.motion.cfg
            feats = [torch.randn(1, cfg.n_motions, cfg.audio_dim, device=dev, generator=_gen(setup, s)) for s in range(R)]
            steps = min(10, cfg.n_diff_steps)
            stream = MotionStream(nets.motion, sampler=sampler_config(steps=steps), template=nets.template,
                                  generator=torch.Generator(device=dev).manual_seed(0))
            cpush = torch.compile(stream.push) if setup.compile else None
            run, crun = (lambda i: stream.push(feats[i % R])), (lambda i: cpush(feats[i % R]))
            shape = f"1 window of {cfg.n_motions} frames, dpmpp {steps} steps, CFG batched"
        elif kind in ("warping", "decoder"):
            src, f_s = _volume(setup, nets)
            sets = [(f_s, src.x_s + 0.03 * torch.randn(1, r.num_kp, 3, device=dev, generator=_gen(setup, s)), src.x_s)
                    for s in range(R)]

            def warp(i: int, m=r.warping_module):
                f, xd, xs = sets[i % R]
                return m(f, kp_driving=xd, kp_source=xs, return_deformation=False)["out"]
            if kind == "warping":
                run, crun = warp, (lambda i: warp(i, cm(r.warping_module)))
                shape = f"f_s 1x{'x'.join(map(str, f_s.shape[1:]))}"
            else:
                with torch.no_grad():
                    feats = [warp(i) for i in range(R)]
                run = lambda i, g=r.spade_generator: g(feats[i % R])  # noqa: E731
                crun = lambda i: run(i, cm(r.spade_generator))  # noqa: E731
                shape = f"feature 1x{'x'.join(map(str, feats[0].shape[1:]))}"
        else:
            raise ValueError(f"unknown stage {kind!r}")
        note = "" if setup.cuda else "tiny preset" + (", 16x16 volume" if kind in ("warping", "decoder") else "")
        flops = count_flops(lambda: run(0))
        c = _kernel_mode("reference", torch.no_grad()(crun)) if setup.compile else NO_COMPILE
        provs = {"flashtalk": _kernel_mode("auto", torch.no_grad()(run)),
                 "eager": _kernel_mode("reference", torch.no_grad()(run)), "compile": c}
        return Built(provs, shape, "fp32", flops=flops, frames=1, note=note)
    return build


def _frame_stage(kind: str) -> Callable[[Setup], Built]:
    """Per-frame post-processing: paste-back into a 1080p photo, watermark, H.264 encode (one frame a call)."""
    def build(setup: Setup) -> Built:
        side = 512
        frames = [torch.randint(0, 256, (1, side, side, 3), dtype=torch.uint8, device=setup.device,
                                generator=_gen(setup, s)) for s in range(setup.rotation)]
        if kind == "paste_back":
            return _paste_back(1)(setup)
        if kind == "watermark":
            from flashtalk.provenance.watermark import embed

            run = lambda i: embed(frames[i % len(frames)], payload="FlashTalk bench")  # noqa: E731
            return Built({"flashtalk": _kernel_mode("auto", run), "eager": _kernel_mode("reference", run),
                          "compile": "torch.compile of the embed is measured in the kernel case watermark_embed"},
                         f"1x{side}x{side}x3", "uint8", bytes=2 * tensor_bytes(frames[0]), frames=1)
        from flashtalk.io.media import VideoWriter

        host = [f.cpu().numpy() for f in frames]
        tmp = tempfile.TemporaryDirectory(prefix="flashtalk-bench-")
        writer = VideoWriter(Path(tmp.name) / "bench.mp4", width=side, height=side, fps=25, audio=None, metadata={})

        def run(i: int) -> None:
            writer.write(host[i % len(host)])

        return Built({"pyav-libx264": run}, f"1x{side}x{side}x3 -> H.264 crf 18 veryfast", "uint8", frames=1,
                     note="CPU encoder (PyAV/libx264) on random frames: the worst case for the encoder",
                     extra={"cleanup": lambda: (writer.close(), tmp.cleanup())})
    return build


def fast_renderer_provider(setup: Setup, renderer, source, sets) -> Provider | str:
    """The renderer fast path: `flashtalk.runtime.fast_renderer.FastRenderer(renderer).render(source, x_d)`."""
    from flashtalk.runtime.fast_renderer import FastRenderer

    fr = FastRenderer(renderer)
    return lambda i: fr.render(source, sets[i % len(sets)])


def _renderer(batch: int) -> Callable[[Setup], Built]:
    def build(setup: Setup) -> Built:
        nets = networks(setup.preset, setup.device)
        r = nets.renderer
        src, f_s = _volume(setup, nets)
        if not setup.cuda:
            src = type(src)(**{**src.__dict__, "f_s": f_s})
        sets = [src.x_s.expand(batch, -1, -1) + 0.03 * torch.randn(batch, r.num_kp, 3, device=setup.device,
                                                                     generator=_gen(setup, s))
                for s in range(setup.rotation)]
        run = lambda i: r.render(src, sets[i % len(sets)])  # noqa: E731
        if setup.compile:
            cw, cg = _compiled_module(r.warping_module), _compiled_module(r.spade_generator)

            def comp(i: int):
                with swapped(r, warping_module=cw, spade_generator=cg):
                    return r.render(src, sets[i % len(sets)])
            c: Provider | str = _kernel_mode("reference", comp)
        else:
            c = _compiled(setup, run)
        provs = _model_providers(run, c)
        provs["flashtalk-fast"] = fast_renderer_provider(setup, r, src, sets)
        out_side = 8 * f_s.shape[-1]
        return Built(provs, f"batch {batch}, f_s {'x'.join(map(str, f_s.shape[1:]))} -> {out_side}²", "fp32",
                     flops=count_flops(lambda: run(0)), frames=batch,
                     note="" if setup.cuda else "tiny preset, 16x16 volume")
    return build


# ------------------------------------------------------------------------------------------------ pipeline


def _offline(setup: Setup) -> Built:
    """End to end, one stream: audio decode + encode, motion, render, paste-back off, watermark, H.264 mux."""
    import numpy as np

    from flashtalk.io.audio import AudioClip, load_audio
    from flashtalk.runtime.engine import Engine
    from flashtalk.runtime.network import NetworkBackend
    from flashtalk.runtime.offline import render

    nets = networks(setup.preset, setup.device)
    engine = Engine(NetworkBackend(nets, torch.device(setup.device), seeded=True))
    speech = load_audio(ASSETS / "speech.ogg", target_rate=16000)
    if not setup.cuda:  # one frame on the CPU: the tiny preset still renders 512² (seconds a frame here)
        speech = AudioClip(np.ascontiguousarray(speech.samples[:320]), 16000, 320 / 16000, speech.source)
    clip = engine.prepare(ASSETS / "portrait.jpg", speech, crop="center")
    tmp = tempfile.TemporaryDirectory(prefix="flashtalk-bench-")
    batch = 16 if setup.cuda else 1

    def run(i: int) -> float:
        stats = render(clip, Path(tmp.name) / f"out{i}.mp4", overwrite=True, batch_size=batch, progress=False)
        return stats.frames

    provs: dict[str, Provider | str] = {"flashtalk": _kernel_mode("auto", run)}
    if setup.cuda or not setup.quick:
        provs["eager"] = _kernel_mode("reference", run)
    else:
        provs["eager"] = "not in --quick on CPU: the same code path as flashtalk (kernels run the reference here)"
    if setup.compile:
        r = nets.renderer
        cw, cg = _compiled_module(r.warping_module), _compiled_module(r.spade_generator)

        def comp(i: int):
            with swapped(r, warping_module=cw, spade_generator=cg):
                return run(i)
        provs["compile"] = _kernel_mode("reference", comp)
    else:
        provs["compile"] = _compiled(setup, run)
    return Built(provs, f"{clip.num_frames} frames ({clip.audio.duration:.2f} s speech), batch {batch}, "
                 f"{clip.size[0]}x{clip.size[1]} H.264 + AAC", "fp32", frames=clip.num_frames,
                 note="includes audio encode, motion, render, watermark, H.264 encode and mux (seeded weights)",
                 extra={"cleanup": tmp.cleanup})


def _stream_backends(setup: Setup) -> dict[str, object]:
    """Streaming backends in this checkout: the preview always; the network one when it exists (hook)."""
    from flashtalk.runtime import session

    out: dict[str, object] = {"preview-backend": session.PreviewStreamingBackend(setup.device)}
    from flashtalk.runtime.network import NetworkBackend

    out["network-backend"] = NetworkBackend(networks(setup.preset, setup.device), torch.device(setup.device))
    return out


def _stream_providers(setup: Setup, make_run) -> dict[str, "Provider | str"]:
    """One provider per streaming backend and latency mode: `make_run(backend, portrait, latency)` with the
    bundled portrait encoded once. The preview has no look-ahead, so it runs once ("exact"); a quick run
    measures the network in serve's default mode ("low") only. An unavailable backend stays its reason."""
    from flashtalk.runtime.session import encode_portrait

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


def _first_frame(setup: Setup) -> Built:
    """Push speech 40 ms at a time into a fresh session, one scheduler tick after each chunk; time from the
    chunk that completed the first frame's look-ahead to that frame (compute only). The session's announced
    look-ahead is the audio that had to arrive first; it rides along in the samples' notes."""
    import numpy as np

    from flashtalk.io.audio import load_audio
    from flashtalk.runtime.scheduler import Scheduler
    from flashtalk.runtime.session import HOP, Frame, Session

    speech = load_audio(ASSETS / "speech.ogg", target_rate=16000).samples
    max_chunks = (len(speech) - HOP) // HOP

    def make_run(backend, portrait, latency: str) -> Provider:
        def run(i: int) -> float:
            sched = Scheduler(backend, max_sessions=1)
            s = Session(backend, portrait, seed=i, sample_rate=16000, sample_format="f32le", idle=False,
                        latency=latency)
            sched.admit(s)
            try:
                for k in range(max_chunks):  # bounded: the whole clip at most, then its end flushes
                    t0 = time.perf_counter()
                    s.push_audio(np.ascontiguousarray(speech[k * HOP:(k + 1) * HOP], dtype=np.float32))
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

    return Built(_stream_providers(setup, make_run), "40-ms chunks of 16-kHz speech -> first 512² frame (watermarked)",
                 "fp32", samples_key="latency",
                 note="compute only: from the chunk that completed the first frame's look-ahead to the frame; "
                      "scheduler stepped inline, no network; look-ahead: low <= 160 ms, exact = the model window")


def _aggregate(setup: Setup) -> Built:
    """N sessions each push the same amount of speech at once; aggregate FPS and per-frame latency."""
    import numpy as np

    from flashtalk.io.audio import load_audio
    from flashtalk.runtime.scheduler import Scheduler
    from flashtalk.runtime.session import FPS, HOP, Frame, Session

    seconds = 2.0 if setup.cuda else 0.2
    speech = load_audio(ASSETS / "speech.ogg", target_rate=16000).samples
    n = setup.sessions

    def make_run(backend, portrait, latency: str) -> Provider:
        def run(i: int) -> dict:
            sched = Scheduler(backend, max_sessions=n)
            sessions = [Session(backend, portrait, seed=k, sample_rate=16000, sample_format="f32le", idle=False,
                                latency=latency) for k in range(n)]
            want = int(seconds * FPS)
            for k, s in enumerate(sessions):
                sched.admit(s)
                start = ((i * n + k) * HOP * 7) % (len(speech) - want * HOP)
                s.push_audio(np.ascontiguousarray(speech[start:start + want * HOP], dtype=np.float32))
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

    return Built(_stream_providers(setup, make_run), f"{n} sessions x {seconds:g} s of speech, pushed at once", "fp32", samples_key="aggregate",
                 frames=None, note="one batched motion + one batched render call per scheduler tick")


def model_cases() -> list[BenchCase]:
    stages = ["source_encode", "audio_encode", "motion_window", "warping", "decoder"]
    cases = [BenchCase(f"stage/{k}", "stage", _stage(k)) for k in stages]
    cases += [BenchCase(f"stage/{k}", "stage", _frame_stage(k)) for k in ("paste_back", "watermark", "video_encode")]
    cases += [BenchCase(f"renderer/B{b}", "renderer", _renderer(b), quick=b in (1, 8)) for b in (1, 2, 8, 16, 32)]
    cases += [BenchCase("pipeline/offline_fps", "pipeline", _offline),
              BenchCase("stream/first_frame_latency", "stream", _first_frame),
              BenchCase("stream/aggregate_fps", "stream", _aggregate)]
    return cases


def all_cases() -> list[BenchCase]:
    return kernel_cases() + model_cases()


def select(setup: Setup, groups: list[str] | None = None, match: list[str] | None = None) -> list[BenchCase]:
    """The cases a run does: the GPU grid on CUDA, the small CPU shapes on the CPU; --quick keeps the marked ones."""
    out = []
    for c in all_cases():
        cpu_case = "/cpu-" in c.name
        if setup.cuda and cpu_case:
            continue
        if not setup.cuda:
            if c.name.startswith("attention/") and not cpu_case:
                continue
            if c.group == "renderer" and c.name not in ("renderer/B1", "renderer/B2"):
                continue
            if c.group == "kernel" and c.name.split("/")[0] in ("dense_motion_input", "deform_warp") and \
                    not c.name.endswith("B1"):
                continue
        elif setup.quick and not c.quick:
            continue
        if groups and c.group not in groups:
            continue
        if match and not any(m in c.name for m in match):
            continue
        out.append(c)
    return out
