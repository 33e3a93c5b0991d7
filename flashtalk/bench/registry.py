"""The one registry of benchmark cases, shared by `flashtalk bench` and the pytest-benchmark suites.

What a case is (`Setup`, `Built`, `BenchCase`) and the helpers every case uses live in `cases.py`.
Provider names are the same everywhere: "flashtalk" (our code, kernels in `auto` mode: Triton on CUDA, the
reference on CPU), "eager" (the same model / op on the pure-PyTorch references), "compile" (torch.compile of
the eager reference), plus per-case extras (SDPA backends, xformers, the fast renderer when it exists).

The attention, warp and streaming cases are the ones listed in attention_cases.py / warp_cases.py /
streaming_cases.py (imported, not re-listed); on the CPU the kernels run at small shapes of the same ops, and
the networks use the tiny preset (with a smaller feature volume for the warping / decoder stages): CPU
figures are not GPU figures.
"""

from __future__ import annotations

import contextlib
import functools
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from flashtalk.bench import attention_cases as bench_attention
from flashtalk.bench import warp_cases as bench_warp
from flashtalk.bench.batch_cases import batch_cases
from flashtalk.bench.cases import (
    ASSETS,
    NO_COMPILE,
    BenchCase,
    Built,
    Provider,
    Setup,
    compiled,
    dtype_name,
    kernel_mode,
    kernel_providers,
    networks,
    seeded,
    tensor_bytes,
)
from flashtalk.bench.streaming_cases import stream_cases

# ------------------------------------------------------------------------------------------------ kernels


def _attention(case: bench_attention.Case) -> Callable[[Setup], Built]:
    def build(setup: Setup) -> Built:
        from flashtalk.kernels.attention import attention, attention_ref

        dtype = setup.dtype or (torch.float16 if setup.cuda else torch.float32)
        torch.manual_seed(0)
        sets = [bench_attention.make_inputs(case, dtype, setup.device) for _ in range(setup.rotation)]
        per_set = [bench_attention.providers(case, *s) for s in sets] if setup.cuda else None
        providers: dict[str, Provider | str] = kernel_providers(
            setup,
            lambda q, k, v, m: attention(q, k, v, key_padding_mask=m, causal=case.causal),
            lambda q, k, v, m: attention_ref(q, k, v, key_padding_mask=m, causal=case.causal),
            sets,
        )
        if per_set is None:
            providers["sdpa"] = "not measured on CPU (SDPA backends are CUDA kernels)"
        else:
            for name, fn in per_set[0].items():
                if name.startswith(("sdpa", "xformers")):
                    providers[name] = fn if isinstance(fn, str) else (lambda i, n=name: per_set[i % len(per_set)][n]())
        q, k, v, _ = sets[0]
        return Built(
            providers,
            f"B{case.B} H{case.H} L{case.L} D{case.D}"
            + (" causal" if case.causal else "")
            + (" key-padding" if case.padded else ""),
            dtype_name(dtype),
            flops=case.flops(),
            bytes=tensor_bytes(q, k, v, q),
        )

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
            g = seeded(setup, seed)
            sets.append(
                (
                    torch.rand(B, 3, crop, crop, device=setup.device, generator=g),
                    torch.randint(0, 256, (1, H, W, 3), device=setup.device, generator=g, dtype=torch.uint8),
                    affine,
                    mask,
                )
            )
        return Built(
            kernel_providers(setup, paste_back, paste_back_ref, sets),
            f"B{B} crop {crop}² -> {W}x{H}",
            "fp32->uint8",
            bytes=tensor_bytes(*sets[0][:3]) + B * H * W * 3,
            frames=B,
        )

    return build


def _watermark(B_gpu: int) -> Callable[[Setup], Built]:
    def build(setup: Setup) -> Built:
        from flashtalk.kernels.watermark_embed import watermark_embed, watermark_embed_ref
        from flashtalk.provenance import watermark as wm

        side, B = (512, B_gpu) if setup.cuda else (128, 2)
        table = torch.from_numpy(wm.cell_table(wm.DEFAULT_KEY, 1234)).to(setup.device)
        kw = dict(cell=wm.CELL, base=wm.BASE, gain=wm.GAIN, act_ref=wm.ACT_REF)
        sets = [
            (
                torch.randint(
                    0, 256, (B, side, side, 3), device=setup.device, generator=seeded(setup, s), dtype=torch.uint8
                ),
            )
            for s in range(setup.rotation)
        ]
        provs = kernel_providers(
            setup,
            functools.partial(watermark_embed, table=table, **kw),
            functools.partial(watermark_embed_ref, table=table, **kw),
            sets,
        )
        return Built(provs, f"B{B} {side}x{side}x3", "uint8", bytes=2 * tensor_bytes(sets[0][0]), frames=B)

    return build


def kernel_cases() -> list[BenchCase]:
    quick_attention = {"motion-B16-H8-L110-D32", "audio-B8-H12-L1000-D64-keypad"}
    cases = [
        BenchCase(f"attention/{c.name}", "kernel", _attention(c), quick=c.name in quick_attention)
        for c in bench_attention.CASES
    ]
    # the CPU runs one small attention shape of each kind instead of the GPU grid
    cases += [
        BenchCase(
            "attention/cpu-B2-H2-L37-D16-keypad",
            "kernel",
            _attention(bench_attention.Case("cpu", 2, 2, 37, 16, padded=True)),
        )
    ]
    cases += [BenchCase(f"{c.op}/B{c.B}", "kernel", bench_warp.warp_case(c), quick=c.B == 8) for c in bench_warp.CASES]
    cases += [BenchCase(f"warp_tail/B{b}", "kernel", bench_warp.warp_tail_case(b)) for b in (1, 8)]
    cases += [
        BenchCase("paste_back/B16", "kernel", _paste_back(16)),
        BenchCase("watermark_embed/B16", "kernel", _watermark(16)),
    ]
    return cases


# ------------------------------------------------------------------------------------------------ models


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
    except Exception:
        return None


def _model_providers(run: Callable[[int], object], compiled_run: Callable[[int], object] | str):
    return {"flashtalk": kernel_mode("auto", run), "eager": kernel_mode("reference", run), "compile": compiled_run}


def _volume(setup: Setup, nets):
    """(source state of a random image, its feature volume f_s): the real volume on CUDA, resized to 16x16
    on the CPU (the networks are fully convolutional; the output is then 128²)."""
    r = nets.renderer
    size = r.cfg.motion.image_size
    img = torch.rand(1, 3, size, size, device=setup.device, generator=seeded(setup, 7))
    src = r.encode_source(img)
    f_s = (
        src.f_s
        if setup.cuda
        else torch.nn.functional.interpolate(src.f_s, size=(src.f_s.shape[2], 16, 16), mode="trilinear")
    )
    return src, f_s


def _stage(kind: str) -> Callable[[Setup], Built]:
    def build(setup: Setup) -> Built:
        nets = networks(setup.preset, setup.device)
        r, dev, R = nets.renderer, setup.device, setup.rotation
        cm = _compiled_module
        if kind == "source_encode":
            size = r.cfg.motion.image_size
            imgs = [torch.rand(1, 3, size, size, device=dev, generator=seeded(setup, s)) for s in range(R)]
            run = lambda i, m=r.motion_extractor, f=r.appearance_feature_extractor: (m(imgs[i % R]), f(imgs[i % R]))  # noqa: E731
            crun = lambda i: run(i, cm(r.motion_extractor), cm(r.appearance_feature_extractor))  # noqa: E731
            shape = f"1x3x{size}x{size}"
        elif kind == "audio_encode":
            from flashtalk.models.hubert import joyvasa_audio_features

            cfg = nets.motion.cfg
            wins = [torch.randn(1, cfg.window_samples, device=dev, generator=seeded(setup, s)) * 0.1 for s in range(R)]
            fn = lambda w: joyvasa_audio_features(nets.audio, w, cfg.n_motions)  # noqa: E731
            cfn = torch.compile(fn) if setup.compile else None
            run, crun = (lambda i: fn(wins[i % R])), (lambda i: cfn(wins[i % R]))
            shape = f"1x{cfg.window_samples} samples -> {cfg.n_motions} frames"
        elif kind == "motion_window":
            from flashtalk.models.joyvasa.pipeline import MotionStream
            from flashtalk.runtime.backends.network import sampler_config

            cfg = nets.motion.cfg
            feats = [
                torch.randn(1, cfg.n_motions, cfg.audio_dim, device=dev, generator=seeded(setup, s)) for s in range(R)
            ]
            steps = min(10, cfg.n_diff_steps)
            stream = MotionStream(
                nets.motion,
                sampler=sampler_config(steps=steps),
                template=nets.template,
                generator=torch.Generator(device=dev).manual_seed(0),
            )
            cpush = torch.compile(stream.push) if setup.compile else None
            run, crun = (lambda i: stream.push(feats[i % R])), (lambda i: cpush(feats[i % R]))
            shape = f"1 window of {cfg.n_motions} frames, dpmpp {steps} steps, CFG batched"
        elif kind in ("warping", "decoder"):
            src, f_s = _volume(setup, nets)
            sets = [
                (f_s, src.x_s + 0.03 * torch.randn(1, r.num_kp, 3, device=dev, generator=seeded(setup, s)), src.x_s)
                for s in range(R)
            ]

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
        c = kernel_mode("reference", torch.no_grad()(crun)) if setup.compile else NO_COMPILE
        provs = {
            "flashtalk": kernel_mode("auto", torch.no_grad()(run)),
            "eager": kernel_mode("reference", torch.no_grad()(run)),
            "compile": c,
        }
        return Built(provs, shape, "fp32", flops=flops, frames=1, note=note)

    return build


def _frame_stage(kind: str) -> Callable[[Setup], Built]:
    """Per-frame post-processing: paste-back into a 1080p photo, watermark, H.264 encode (one frame a call)."""

    def build(setup: Setup) -> Built:
        side = 512
        frames = [
            torch.randint(
                0, 256, (1, side, side, 3), dtype=torch.uint8, device=setup.device, generator=seeded(setup, s)
            )
            for s in range(setup.rotation)
        ]
        if kind == "paste_back":
            return _paste_back(1)(setup)
        if kind == "watermark":
            from flashtalk.provenance.watermark import embed

            run = lambda i: embed(frames[i % len(frames)], payload="FlashTalk bench")  # noqa: E731
            return Built(
                {
                    "flashtalk": kernel_mode("auto", run),
                    "eager": kernel_mode("reference", run),
                    "compile": "torch.compile of the embed is measured in the kernel case watermark_embed",
                },
                f"1x{side}x{side}x3",
                "uint8",
                bytes=2 * tensor_bytes(frames[0]),
                frames=1,
            )
        from flashtalk.io.media import VideoWriter

        host = [f.cpu().numpy() for f in frames]
        tmp = tempfile.TemporaryDirectory(prefix="flashtalk-bench-")
        writer = VideoWriter(Path(tmp.name) / "bench.mp4", width=side, height=side, fps=25, audio=None, metadata={})

        def run(i: int) -> None:
            writer.write(host[i % len(host)])

        return Built(
            {"pyav-libx264": run},
            f"1x{side}x{side}x3 -> H.264 crf 18 veryfast",
            "uint8",
            frames=1,
            note="CPU encoder (PyAV/libx264) on random frames: the worst case for the encoder",
            extra={"cleanup": lambda: (writer.close(), tmp.cleanup())},
        )

    return build


def fast_renderer_provider(setup: Setup, renderer, source, sets) -> Provider | str:
    """The renderer fast path: `flashtalk.runtime.graphed_renderer.GraphedRenderer(renderer).render(source, x_d)`."""
    from flashtalk.runtime.graphed_renderer import GraphedRenderer

    fr = GraphedRenderer(renderer)
    return lambda i: fr.render(source, sets[i % len(sets)])


def _renderer(batch: int) -> Callable[[Setup], Built]:
    def build(setup: Setup) -> Built:
        nets = networks(setup.preset, setup.device)
        r = nets.renderer
        src, f_s = _volume(setup, nets)
        if not setup.cuda:
            src = type(src)(**{**src.__dict__, "f_s": f_s})
        sets = [
            src.x_s.expand(batch, -1, -1)
            + 0.03 * torch.randn(batch, r.num_kp, 3, device=setup.device, generator=seeded(setup, s))
            for s in range(setup.rotation)
        ]
        run = lambda i: r.render(src, sets[i % len(sets)])  # noqa: E731
        if setup.compile:
            cw, cg = _compiled_module(r.warping_module), _compiled_module(r.spade_generator)

            def comp(i: int):
                with swapped(r, warping_module=cw, spade_generator=cg):
                    return r.render(src, sets[i % len(sets)])

            c: Provider | str = kernel_mode("reference", comp)
        else:
            c = compiled(setup, run)
        provs = _model_providers(run, c)
        provs["flashtalk-fast"] = fast_renderer_provider(setup, r, src, sets)
        out_side = 8 * f_s.shape[-1]
        return Built(
            provs,
            f"batch {batch}, f_s {'x'.join(map(str, f_s.shape[1:]))} -> {out_side}²",
            "fp32",
            flops=count_flops(lambda: run(0)),
            frames=batch,
            note="" if setup.cuda else "tiny preset, 16x16 volume",
        )

    return build


# ------------------------------------------------------------------------------------------------ pipeline


def _offline(setup: Setup) -> Built:
    """End to end, one stream: audio decode + encode, motion, render, paste-back off, watermark, H.264 mux."""
    import numpy as np

    from flashtalk.io.audio import AudioClip, load_audio
    from flashtalk.runtime.backends.network import NetworkBackend
    from flashtalk.runtime.engine import Engine
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

    provs: dict[str, Provider | str] = {"flashtalk": kernel_mode("auto", run)}
    if setup.cuda or not setup.quick:
        provs["eager"] = kernel_mode("reference", run)
    else:
        provs["eager"] = "not in --quick on CPU: the same code path as flashtalk (kernels run the reference here)"
    if setup.compile:
        r = nets.renderer
        cw, cg = _compiled_module(r.warping_module), _compiled_module(r.spade_generator)

        def comp(i: int):
            with swapped(r, warping_module=cw, spade_generator=cg):
                return run(i)

        provs["compile"] = kernel_mode("reference", comp)
    else:
        provs["compile"] = compiled(setup, run)
    return Built(
        provs,
        f"{clip.num_frames} frames ({clip.audio.duration:.2f} s speech), batch {batch}, "
        f"{clip.size[0]}x{clip.size[1]} H.264 + AAC",
        "fp32",
        frames=clip.num_frames,
        note="includes audio encode, motion, render, watermark, H.264 encode and mux (seeded weights)",
        extra={"cleanup": tmp.cleanup},
    )


def model_cases() -> list[BenchCase]:
    stages = ["source_encode", "audio_encode", "motion_window", "warping", "decoder"]
    cases = [BenchCase(f"stage/{k}", "stage", _stage(k)) for k in stages]
    cases += [BenchCase(f"stage/{k}", "stage", _frame_stage(k)) for k in ("paste_back", "watermark", "video_encode")]
    cases += [BenchCase(f"renderer/B{b}", "renderer", _renderer(b), quick=b in (1, 8)) for b in (1, 2, 8, 16, 32)]
    cases += [BenchCase("pipeline/offline_fps", "pipeline", _offline)] + batch_cases() + stream_cases()
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
            if (
                c.group == "kernel"
                and c.name.split("/")[0] in ("dense_motion_input", "deform_warp")
                and not c.name.endswith("B1")
            ):
                continue
        elif setup.quick and not c.quick:
            continue
        if groups and c.group not in groups:
            continue
        if match and not any(m in c.name for m in match):
            continue
        out.append(c)
    return out
