"""Fuzz family `checkpoints`: bundles, their configs, published checkpoints, HF folders and pickles.

Inputs, all derived from the tiny seeded model: the safetensors bundle with mutated configuration
fields (inf, NaN, 0, negative, huge, strings, lists, unknown / missing fields, 50,000-deep nesting,
sizes that ask for gigabytes from a 4 MB file), NaN weights, byte mutations of its header and body;
JoyVASA checkpoints (`torch.save`) with mutated training args, byte mutations, and pickles naming
forbidden globals; `.pth` renderer checkpoints; motion-template pickles, byte-mutated or crafted to
expand (huge shapes, dtypes, frames, byte strings); Hugging Face audio folders with mutated
config.json and index files (no weight_map, names outside the folder).
Targets: `load_bundle`, `load_checkpoint`, `read_checkpoint`, `load_motion_template`,
`load_hf_audio_encoder`. Anything accepted must be finite.
"""

from __future__ import annotations

import argparse
import io
import json
import pickle
import struct
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchmarks.fuzz.core import Case, Mutator, Wrong, deep_json, json_dumps, run_cases

MOD = "benchmarks.fuzz.checkpoints"
HUGE = {
    "audio_encoder": {
        "hidden_size": 8192,
        "intermediate_size": 65536,
        "num_hidden_layers": 128,
        "num_attention_heads": 8,
        "num_conv_pos_embedding_groups": 8,
    },
    "motion_generator": {"feature_dim": 8192, "ffn_dim": 65536, "n_layers": 128, "n_heads": 8},
}


def warm(_: Any) -> str:
    """One-time costs (imports, the meta device's decompositions, torch.load's set-up) before any timed case."""
    import torch

    from flashtalk.models.hubert import AudioEncoder
    from flashtalk.models.joyvasa.denoiser import MotionGenerator
    from flashtalk.weights.presets import Preset

    with torch.device("meta"):
        MotionGenerator(Preset.from_name("tiny").motion)
        AudioEncoder(Preset.from_name("tiny").audio)
    buf = io.BytesIO()
    torch.save({"args": argparse.Namespace(a=1), "model": {"w": torch.ones(2)}}, buf)
    buf.seek(0)
    with torch.serialization.safe_globals([argparse.Namespace]):
        torch.load(buf, weights_only=True)
    return "warm"


def _finite(module_or_state) -> None:
    import torch

    state = module_or_state.state_dict() if hasattr(module_or_state, "state_dict") else module_or_state
    for k, v in state.items():
        if torch.is_tensor(v) and v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise Wrong(f"accepted non-finite weights in {k}")


def bundle(arg: dict) -> str:
    from flashtalk.weights.bundle import load_bundle

    nets = load_bundle(arg["path"])
    for m in (nets.renderer, nets.motion, nets.audio):
        _finite(m)
    return nets.preset


def joyvasa(arg: dict) -> str:
    from flashtalk.models.joyvasa.denoiser import MotionGenerator
    from flashtalk.weights.joyvasa import load_checkpoint, load_motion_state
    from flashtalk.weights.presets import Preset

    ckpt = load_checkpoint(arg["path"], base_config=Preset.from_name("tiny").motion)
    motion = MotionGenerator(ckpt.config).eval()
    load_motion_state(motion, ckpt.motion_state, source=ckpt.path)
    return "loaded"


def pth(arg: dict) -> str:
    from flashtalk.weights.liveportrait import read_checkpoint

    return f"{len(read_checkpoint(arg['path'], arg['network']))} tensors"


def template(arg: dict) -> str:
    from flashtalk.weights.joyvasa import load_motion_template

    t = load_motion_template(arg["path"])
    _finite({"mean_exp": t.mean_exp, "std_exp": t.std_exp})
    return "loaded"


def hf(arg: dict) -> str:
    from flashtalk.weights.hubert import load_hf_audio_encoder

    _finite(load_hf_audio_encoder(arg["path"]))
    return "loaded"


# --------------------------------------------------------------------------------------------- inputs


def st_split(data: bytes) -> tuple[dict, bytes]:
    n = struct.unpack("<Q", data[:8])[0]
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def st_join(header: dict, body: bytes) -> bytes:
    h = json_dumps(header).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + body


class Bases:
    """The unmutated files, made once per campaign from the tiny seeded model."""

    def __init__(self, folder: Path) -> None:
        import numpy as np
        import torch
        from safetensors.torch import save_file

        from flashtalk.weights.bundle import seeded_networks, write_bundle

        nets = seeded_networks("tiny")
        self.bundle = write_bundle(nets, folder / "base.safetensors").read_bytes()
        motion = {k: v.clone() for k, v in nets.motion.state_dict().items()}
        audio = {f"audio_encoder.{k}": v.clone() for k, v in nets.audio.state_dict().items()}
        cfg = nets.motion.cfg
        self.args = {
            "motion_feat_dim": cfg.motion_feat_dim,
            "n_motions": cfg.n_motions,
            "n_prev_motions": cfg.n_prev_motions,
            "feature_dim": cfg.feature_dim,
            "n_diff_steps": cfg.n_diff_steps,
            "fps": cfg.fps,
            "pad_mode": cfg.pad_mode,
        }
        self.joyvasa_state = {**motion, **audio}
        buf = io.BytesIO()
        torch.save({"args": argparse.Namespace(**self.args), "model": self.joyvasa_state, "iter": 3}, buf)
        self.joyvasa = buf.getvalue()
        buf = io.BytesIO()
        torch.save(nets.renderer.stitching_retargeting_module.state_dict(), buf)
        self.pth = buf.getvalue()
        t = nets.template
        self.template_dict = {
            "mean_exp": t.mean_exp.numpy(),
            "std_exp": t.std_exp.numpy(),
            **{
                k: getattr(t, k).numpy()
                for k in (
                    "min_scale",
                    "max_scale",
                    "min_t",
                    "max_t",
                    "min_pitch",
                    "max_pitch",
                    "min_yaw",
                    "max_yaw",
                    "min_roll",
                    "max_roll",
                )
            },
            "abs_max_t": np.float32(3.0),
        }
        self.template = pickle.dumps(self.template_dict, protocol=4)
        hub = folder / "hub"
        hub.mkdir()
        save_file({k: v.contiguous() for k, v in nets.audio.state_dict().items()}, str(hub / "model.safetensors"))
        self.hf_weights = (hub / "model.safetensors").read_bytes()
        a = nets.audio.cfg
        self.hf_config = {
            "model_type": "hubert",
            "hidden_size": a.hidden_size,
            "num_hidden_layers": a.num_hidden_layers,
            "num_attention_heads": a.num_attention_heads,
            "intermediate_size": a.intermediate_size,
            "conv_dim": list(a.conv_dim),
            "conv_kernel": list(a.conv_kernel),
            "conv_stride": list(a.conv_stride),
            "num_conv_pos_embeddings": a.num_conv_pos_embeddings,
            "num_conv_pos_embedding_groups": a.num_conv_pos_embedding_groups,
        }


def _bundle_case(m: Mutator, bases: Bases) -> tuple[bytes, str]:
    header, body = st_split(bases.bundle)
    meta = header["__metadata__"]
    configs = json.loads(meta["flashtalk_configs"])
    r = m.rng.random()
    if r < 0.45:
        configs, what = m.json_value(configs)
        meta["flashtalk_configs"] = json_dumps(configs)
    elif r < 0.55:
        net = m.choice(sorted(HUGE))
        configs[net].update(HUGE[net])
        meta["flashtalk_configs"] = json_dumps(configs)
        what = f"{net} asks for gigabytes"
    elif r < 0.62:
        depth = m.choice((1000, 50_000, 200_000))
        if m.rng.random() < 0.5:
            meta["flashtalk_configs"] = deep_json(depth)
        else:
            meta["networks"] = deep_json(depth)
        what = f"nesting {depth} deep"
    elif r < 0.7:
        key = m.choice(sorted(meta))
        del meta[key]
        what = f"no metadata {key}"
    elif r < 0.8:  # NaN / inf weights in one float tensor
        name = m.choice(sorted(k for k, v in header.items() if k != "__metadata__" and v["dtype"] == "F32"))
        lo, hi = header[name]["data_offsets"]
        pattern = m.choice((b"\x00\x00\xc0\x7f", b"\x00\x00\x80\x7f", b"\x00\x00\x80\xff"))
        n = m.choice((1, (hi - lo) // 4))
        body = body[:lo] + pattern * n + body[lo + 4 * n :]
        return st_join(header, body), f"non-finite {name} x{n}"
    elif r < 0.85:  # a tensor whose shape disagrees with its bytes
        name = m.choice(sorted(k for k in header if k != "__metadata__"))
        header[name]["shape"] = [m.choice((1 << 20, 1 << 31, 0, 3))] * 2
        return st_join(header, body), f"{name} shape {header[name]['shape']}"
    else:
        data, how = m.bytes(bases.bundle)
        return data, f"bytes {how}"
    return st_join(header, body), what


def _template_case(m: Mutator, bases: Bases) -> tuple[bytes, str]:
    r = m.rng.random()
    if r < 0.3:
        crafted = {
            "huge-shape": b"\x80\x02cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n\x8a\x05"
            + (10**11).to_bytes(5, "little")
            + b"\x85cnumpy\ndtype\nX\x02\x00\x00\x00f8\x89\x88\x87R\x87R.",
            "huge-dtype": b"\x80\x02cnumpy\ndtype\nX\x0b\x00\x00\x00V1000000000\x89\x88\x87R.",
            "bytes8": b"\x80\x04\x8e" + struct.pack("<Q", 1 << 40) + b"abc",
            "frame": b"\x80\x04\x95" + struct.pack("<Q", 1 << 40) + b"}.",
            "evil": b"cos\nsystem\n(S'true'\ntR.",
            "deep": b"\x80\x02" + b"]" * 100_000 + b".",
        }
        name = m.choice(sorted(crafted))
        return crafted[name], f"crafted {name}"
    if r < 0.5:
        import numpy as np

        d = dict(bases.template_dict)
        key = m.choice(sorted(d))
        d[key] = m.choice(
            (np.full_like(d[key], np.nan), np.zeros(0, np.float32), "text", None, np.ones((1000,), np.float32))
        )
        return pickle.dumps(d), f"template {key} replaced"
    data, how = m.bytes(bases.template)
    return data, f"bytes {how}"


def _joyvasa_case(m: Mutator, bases: Bases) -> tuple[bytes, str]:
    import torch

    r = m.rng.random()
    if r < 0.6:
        args = dict(bases.args)
        key = m.choice(sorted(args))
        args[key] = m.number() if m.rng.random() < 0.8 else m.choice((8192, 10**6, 4096))
        buf = io.BytesIO()
        torch.save(
            {
                "args": argparse.Namespace(**args),
                "model": bases.joyvasa_state,
                "iter": m.choice((3, float("inf"), "x", None)),
            },
            buf,
        )
        return buf.getvalue(), f"args {key}={args[key]!r}"[:80]
    if r < 0.7:

        class Evil:
            def __reduce__(self):
                return (print, ("pwned",))

        buf = io.BytesIO()
        torch.save({"args": Evil(), "model": {}}, buf)
        return buf.getvalue(), "forbidden global"
    data, how = m.bytes(bases.joyvasa)
    return data, f"bytes {how}"


def _hf_case(m: Mutator, bases: Bases, folder: Path) -> str:
    folder.mkdir()
    cfg_text = json_dumps(bases.hf_config)
    weights = bases.hf_weights
    r = m.rng.random()
    what = "unmutated"
    if r < 0.5:
        cfg, what = m.json_value(bases.hf_config)
        cfg_text = json_dumps(cfg)
    elif r < 0.6:
        cfg_text, what = deep_json(m.choice((1000, 60_000))), "deep config.json"
    elif r < 0.8:
        index = m.choice(
            (
                {"metadata": {}},
                {"weight_map": {"a": "../../etc/passwd"}},
                {"weight_map": []},
                {"weight_map": {"a": "missing.safetensors"}},
                [1],
                {"weight_map": {"a": 5}},
            )
        )
        (folder / "model.safetensors.index.json").write_text(json_dumps(index))
        weights = None
        what = f"index {json_dumps(index)[:60]}"
    elif r < 0.9:
        cfg = dict(bases.hf_config, **HUGE["audio_encoder"])
        cfg_text, what = json_dumps(cfg), "config asks for gigabytes"
    else:
        weights, what = m.bytes(bases.hf_weights)
        what = f"weights bytes {what}"
    (folder / "config.json").write_text(cfg_text)
    if weights is not None:
        (folder / "model.safetensors").write_bytes(weights)
    return what


def cases(seed: int, n: int, folder: Path) -> Iterator[Case]:
    import shutil

    m = Mutator(seed)
    bases = Bases(folder)
    controls = [
        ("bundle", bases.bundle, "bundle"),
        ("joyvasa", bases.joyvasa, "joyvasa"),
        ("template", bases.template, "template"),
    ]
    for i in range(n):
        kind = i % 5
        path = folder / f"case{i}"
        if i % 20 == 19:  # an unmutated file: must load
            name, data, func = controls[(i // 20) % len(controls)]
            path.write_bytes(data)
            yield Case(f"control {name}", f"{MOD}:{func}", {"path": str(path), "expect_ok": True}, timeout=20.0)
        elif kind == 0:
            data, what = _bundle_case(m, bases)
            path = path.with_suffix(".safetensors")
            path.write_bytes(data)
            yield Case(f"bundle {what}", f"{MOD}:bundle", {"path": str(path)}, timeout=20.0)
        elif kind == 1:
            data, what = _joyvasa_case(m, bases)
            path.write_bytes(data)
            yield Case(f"joyvasa {what}", f"{MOD}:joyvasa", {"path": str(path)}, timeout=20.0)
        elif kind == 2:
            data, what = _template_case(m, bases)
            path.write_bytes(data)
            yield Case(f"template {what}", f"{MOD}:template", {"path": str(path)}, timeout=10.0)
        elif kind == 3:
            data, how = m.bytes(bases.pth)
            path.write_bytes(data)
            yield Case(
                f"pth {how}", f"{MOD}:pth", {"path": str(path), "network": "stitching_retargeting_module"}, timeout=10.0
            )
        else:
            what = _hf_case(m, bases, path)
            yield Case(f"hf {what}", f"{MOD}:hf", {"path": str(path)}, timeout=20.0)
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def campaign(seed: int, n: int, budget_s: float) -> dict:
    with tempfile.TemporaryDirectory(prefix="flashtalk-fuzz-checkpoints-") as tmp:
        return run_cases("checkpoints", cases(seed, n, Path(tmp)), budget_s, warm=f"{MOD}:warm")
