"""`flashtalk animate PORTRAIT AUDIO -o OUT.mp4`: a talking-head video from a photo and a speech file."""

from __future__ import annotations

import argparse
import logging
import sys
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from flashtalk.constants import DEFAULT_SAMPLER, PRESETS, SAMPLERS
from flashtalk.errors import FlashTalkError

if TYPE_CHECKING:
    from flashtalk.runtime.engine import EngineSpec

DEMO_PORTRAIT = "portrait.jpg"
DEMO_AUDIO = "speech.ogg"
CONTROL_FLAGS = ("yaw", "pitch", "roll", "expression_scale", "eye_open", "lip_open", "pose_smoothing")
WEIGHTS_HINT = "for the real model pass --weights DIR_OR_BUNDLE (see the README, 'Weights')"


def demo_assets() -> tuple[Path, Path]:
    """Paths of the bundled demo portrait and speech clip."""
    root = resources.files("flashtalk") / "assets"
    return Path(str(root / DEMO_PORTRAIT)), Path(str(root / DEMO_AUDIO))


def _ratio(text: str) -> float | str:
    if text == "driving":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a ratio in [0, 0.8] or driving, got {text!r}") from None


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("portrait", nargs="?", help="portrait photo (JPEG, PNG or WebP)")
    p.add_argument("audio", nargs="?", help="speech (WAV, FLAC, OGG, MP3, M4A, ...)")
    p.add_argument("-o", "--output", required=True, help="output .mp4 (or a folder with --frames-dir)")
    p.add_argument("--demo", action="store_true", help="use the bundled portrait and speech clip")
    p.add_argument(
        "--weights",
        metavar="DIR_OR_BUNDLE",
        help="network weights: a folder, a bundle, or hf (what `flashtalk download` "
        "put in the Hugging Face cache); default: weights-free preview",
    )
    p.add_argument(
        "--seeded-weights",
        action="store_true",
        help="the network with deterministic seeded weights (for tests; the picture is noise)",
    )
    p.add_argument(
        "--preset",
        choices=PRESETS,
        help="network size with --seeded-weights (default liveportrait; tiny is fast on CPU)",
    )
    p.add_argument(
        "--driving",
        metavar="VIDEO",
        help="drive the portrait with a video's head motion and expressions instead of speech "
        "(audio from the video; needs the network)",
    )
    net = p.add_argument_group("network options (with --weights / --seeded-weights)")
    net.add_argument(
        "--sampler",
        choices=SAMPLERS,
        default=DEFAULT_SAMPLER,
        help="motion sampler (default dpmpp: DPM-Solver++(2M); ddpm: the original 50 steps)",
    )
    net.add_argument("--steps", type=int, default=10, help="sampler steps per motion window (default 10)")
    net.add_argument("--cfg", type=float, default=2.0, help="classifier-free guidance on audio (default 2.0)")
    net.add_argument(
        "--precision",
        metavar="fp32|bf16|fp16",
        help="renderer precision (default bf16 on CUDA, fp32 on CPU; not fp32 or on CUDA: the fast path)",
    )
    for angle in ("yaw", "pitch", "roll"):
        net.add_argument(f"--{angle}", type=float, default=None, metavar="DEG", help=f"head {angle} offset in degrees")
    net.add_argument(
        "--expression-scale",
        type=float,
        default=None,
        metavar="K",
        help="scale of the expression change (default 1; 0 keeps the source expression)",
    )
    net.add_argument(
        "--eye-open",
        type=_ratio,
        default=None,
        metavar="R",
        help="target eye-open ratio 0..0.8 (eye-retargeting MLP), or driving: each driving frame's",
    )
    net.add_argument(
        "--lip-open",
        type=_ratio,
        default=None,
        metavar="R",
        help="target lip-open ratio 0..0.8 (lip-retargeting MLP), or driving: each driving frame's",
    )
    net.add_argument(
        "--pose-smoothing",
        type=float,
        default=None,
        metavar="S",
        help="EMA smoothing of head pose, 0 (none) .. <1 (default 0.99, JoyVASA's)",
    )
    net.add_argument("--gaze", metavar="X,Y", help="gaze offset in eyeball units (LivePortrait's), e.g. 5,-3")
    net.add_argument(
        "--head-distance",
        type=float,
        default=None,
        metavar="K",
        help="head scale multiplier 0.5..2 (> 1 closer; guarded to keep the face in the crop)",
    )
    net.add_argument(
        "--emotion",
        metavar="IMAGE_OR_PRESET",
        help="emotion offset: a preset (.json/.safetensors) or a photo (relative to the portrait)",
    )
    net.add_argument("--emotion-weight", type=float, default=None, metavar="W", help="weight of --emotion (default 1)")
    net.add_argument(
        "--controls", metavar="TRACK.json", help='keyframed controls: {"keyframes": {time: {name: value}}}'
    )
    net.add_argument(
        "--control",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="any other control (smile, mouth_open, blink, intensity, region, ...); repeatable",
    )
    net.add_argument("--no-auto-blink", action="store_true", help="no natural automatic blinks")
    p.add_argument(
        "--crop",
        default="auto",
        metavar="auto|center|X,Y,W,H",
        help="face crop: detect the face (default), the centred square, or a box in pixels",
    )
    p.add_argument("--paste-back", action="store_true", help="paste the animated crop back into the photo")
    p.add_argument("--fps", type=float, default=25.0, help="output frame rate (default 25)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the motion (default 0)")
    p.add_argument("--batch-size", type=int, default=16, help="frames rendered per batch (default 16)")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--frames-dir", action="store_true", help="write numbered PNGs into the -o folder instead")
    p.add_argument("--no-watermark", action="store_true", help="do not embed the provenance watermark")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar or notices")


def _extra_controls(args: argparse.Namespace) -> dict:
    """--gaze, --head-distance, --emotion(-weight), --controls and --control NAME=VALUE as control names."""
    out: dict = {}
    if args.gaze:
        parts = args.gaze.split(",")
        try:
            out["gaze_x"], out["gaze_y"] = (float(p) for p in parts)
        except ValueError:
            raise FlashTalkError(f"--gaze takes X,Y (two numbers), got {args.gaze!r}") from None
    for flag, name in (
        ("head_distance", "head_distance"),
        ("emotion", "emotion"),
        ("emotion_weight", "emotion_weight"),
        ("controls", "controls"),
    ):
        if getattr(args, flag) is not None:
            out[name] = getattr(args, flag)
    for item in args.control:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise FlashTalkError(f"--control takes NAME=VALUE, got {item!r}")
        out[name.strip()] = {"true": True, "false": False}.get(value.strip().lower(), value.strip())
    return out


def engine_spec(args: argparse.Namespace) -> "EngineSpec":
    """The engine the weights options ask for (`animate` and `batch` share them; --seeded-weights is `seeded`)."""
    from dataclasses import fields

    from flashtalk.runtime.engine import EngineSpec

    return EngineSpec(
        **{f.name: getattr(args, {"seeded": "seeded_weights"}.get(f.name, f.name)) for f in fields(EngineSpec)}
    )


def run(args: argparse.Namespace) -> int:
    from flashtalk.io.media import check_output
    from flashtalk.runtime.engine import Engine
    from flashtalk.runtime.offline import render

    if args.driving:
        if args.demo:
            raise FlashTalkError("--driving takes PORTRAIT [AUDIO], not --demo")
        if not args.portrait:
            raise FlashTalkError("give PORTRAIT with --driving VIDEO (AUDIO is optional: default the video's)")
        portrait, audio = Path(args.portrait), (Path(args.audio) if args.audio else None)
    elif args.demo:
        if args.portrait or args.audio:
            raise FlashTalkError("--demo uses the bundled portrait and speech; give no PORTRAIT / AUDIO with it")
        portrait, audio = demo_assets()
    elif not (args.portrait and args.audio):
        raise FlashTalkError("give PORTRAIT and AUDIO (or --demo for the bundled ones)")
    else:
        portrait, audio = Path(args.portrait), Path(args.audio)
    check_output(args.output, overwrite=args.overwrite)
    logging.basicConfig(level=logging.ERROR if args.quiet else logging.WARNING, format="flashtalk: %(message)s")
    controls = {name: getattr(args, name) for name in CONTROL_FLAGS if getattr(args, name) is not None}
    controls.update(_extra_controls(args))
    if args.preset and not args.seeded_weights:
        raise FlashTalkError("--preset applies to --seeded-weights only (a weights file fixes its own shapes)")
    if args.weights or args.seeded_weights:
        controls.setdefault("auto_blink", not args.no_auto_blink)
        engine = engine_spec(args).build()
        if args.seeded_weights and not args.quiet:
            preset = args.preset or "liveportrait"
            note = "flashtalk: seeded weights: deterministic test weights; the output is NOT a face"
            if engine.backend.device.type == "cpu" and preset == "liveportrait":
                note += (
                    "; the full liveportrait preset takes ~8 s per frame on a CPU: pass --preset tiny for a quick run"
                )
            print(note, file=sys.stderr)
    else:
        if controls or args.driving or args.precision:
            given = sorted(controls) + (["driving"] if args.driving else []) + (["precision"] if args.precision else [])
            raise FlashTalkError(f"{', '.join(given)} need(s) the network; {WEIGHTS_HINT} (or --seeded-weights)")
        engine = Engine.preview(args.device)
        if not args.quiet:
            from flashtalk.models.preview import NOTICE

            print(f"flashtalk: {NOTICE}; {WEIGHTS_HINT}", file=sys.stderr)
    clip = engine.prepare(
        portrait,
        audio,
        crop=args.crop,
        seed=args.seed,
        fps=args.fps,
        paste_back=args.paste_back,
        watermark=not args.no_watermark,
        driving=args.driving,
        **controls,
    )
    stats = render(
        clip,
        args.output,
        frames_dir=args.frames_dir,
        overwrite=args.overwrite,
        batch_size=args.batch_size,
        progress=False if args.quiet else None,
    )
    if not args.quiet:
        w, h = clip.size
        print(
            f"wrote {args.output}: {stats.frames} frames {w}x{h} at {float(clip.fps):g} FPS "
            f"({clip.audio.duration:.2f} s of audio) in {stats.seconds:.1f} s ({stats.fps:.1f} FPS)",
            file=sys.stderr,
        )
    return 0
