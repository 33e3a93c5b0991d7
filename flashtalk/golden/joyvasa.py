"""verify-golden family `joyvasa`: our motion generator, samplers, audio encoder and motion pipeline on the
JoyVASA golden folder (synthetic weights from the README's rule; both positional-encoding modes)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from flashtalk.models.joyvasa.denoiser import MotionGenerator, MotionGeneratorConfig
from flashtalk.samplers import Schedule, ddpm_sample
from flashtalk.weights.joyvasa import load_motion_state
from flashtalk.weights.seeded import joyvasa_weights

PE_MODES = ("fixed", "buggy")


def _entries(folder: Path) -> list[dict]:
    return json.loads((folder / "manifest.json").read_text())["entries"]


def seeded_motion_generator(folder: Path, dtype: torch.dtype, device, base_seed: int = 0) -> MotionGenerator:
    """The released-checkpoint configuration with the golden weight rule; computed buffers (sinusoid tables,
    alignment mask, schedule) stay as the model computes them, in float64 before the cast."""
    entries = [
        (e["key"], e["shape"], e["category"]) for e in _entries(folder) if not e["key"].startswith("audio_encoder.")
    ]
    model = MotionGenerator(MotionGeneratorConfig(), device=device, dtype=dtype).eval()
    load_motion_state(model, joyvasa_weights(entries, base_seed), allow_missing_computed=True)
    return model


def seeded_audio_weights(folder: Path, base_seed: int = 0) -> dict[str, torch.Tensor]:
    """The golden rule's `audio_encoder.*` weights (float64), keys as in the manifest."""
    return joyvasa_weights(
        [(e["key"], e["shape"], e["category"]) for e in _entries(folder) if e["key"].startswith("audio_encoder.")],
        base_seed,
    )


def _t(a: np.ndarray, dtype: torch.dtype, device) -> torch.Tensor:
    return torch.from_numpy(np.asarray(a)).to(device=device, dtype=dtype)


def _denoiser(model: MotionGenerator, g, dtype, device) -> dict[str, torch.Tensor]:
    net = model.denoising_net
    m, a = _t(g["motion_feat"], dtype, device), _t(g["audio_feat"], dtype, device)
    pm, pa = _t(g["prev_motion_feat"], dtype, device), _t(g["prev_audio_feat"], dtype, device)
    step = torch.from_numpy(g["step"]).to(device)
    out = {"t_emb": net.time_embedding(step), "h_proj": net.feature_proj(torch.cat([pm, m], dim=1))}
    memory = torch.cat([pa, a], dim=1)
    for mode in PE_MODES:
        net.pe_mode = mode
        h = out[f"h_in_{mode}"] = net.input_tokens(m, pm, step)
        for i, layer in enumerate(net.transformer.layers):
            h = layer(h, memory, net.memory_mask())
            if i in (0, len(net.transformer.layers) - 1):
                out[f"layer{i}_{mode}"] = h
        out[f"out_{mode}"] = net.motion_dec(h)
    return out


def _schedule(g, prefix: str, dtype, device) -> Schedule:
    return Schedule(*(_t(g[prefix + n], dtype, device) for n in Schedule._fields))


def _raw_first_step(model: MotionGenerator, x_T, audio, prev_m, prev_a) -> torch.Tensor:
    N, W, _ = audio.shape
    T = model.cfg.n_diff_steps
    step = torch.full((2 * N,), T, device=x_T.device, dtype=torch.long)
    return model.denoising_net(
        torch.cat([x_T, x_T]),
        torch.cat([model.null_audio_feat.expand(N, W, -1), audio]),
        torch.cat([prev_m, prev_m]),
        torch.cat([prev_a, prev_a]),
        step,
    )


def _sampler_t50(model: MotionGenerator, g, dtype, device) -> dict[str, torch.Tensor]:
    sched = model.schedule()
    keep = [model.cfg.n_diff_steps - int(t) for t in g["traj_t"]]  # trajectory index of x_t is T - t
    x_T = _t(g["x_T"], dtype, device)
    out = {}
    for mode in PE_MODES:
        model.denoising_net.pe_mode = mode
        prev_m, prev_a = model.start_context(x_T.shape[0])
        for w in (0, 1):
            audio = _t(g[f"audio_feat_w{w}"], dtype, device)
            x0_fn = model.guided_x0_fn(audio, prev_m, prev_a, float(g["cfg_scale"]))
            traj = ddpm_sample(x0_fn, x_T, sched, noise=_t(g[f"z_w{w}"], dtype, device), trajectory=True)
            out[f"traj_{mode}_w{w}"] = traj[keep]
            out[f"out_{mode}_w{w}"] = traj[-1]
            out[f"denoiser_raw_first_step_{mode}_w{w}"] = _raw_first_step(model, x_T, audio, prev_m, prev_a)
            prev_m, prev_a = traj[-1][:, -model.cfg.n_prev_motions :], audio[:, -model.cfg.n_prev_motions :]
    return out


def _sampler_t5(model: MotionGenerator, g, dtype, device) -> dict[str, torch.Tensor]:
    sched = _schedule(g, "sched_", dtype, device)
    x_T = _t(g["x_T"], dtype, device)
    audio, pm, pa = (_t(g[k], dtype, device) for k in ("audio_feat", "prev_motion_feat", "prev_audio_feat"))
    out = {}
    for mode in PE_MODES:
        model.denoising_net.pe_mode = mode
        x0_fn = model.guided_x0_fn(audio, pm, pa, float(g["cfg_scale"]))
        out[f"traj_{mode}"] = ddpm_sample(x0_fn, x_T, sched, noise=_t(g["z"], dtype, device), trajectory=True)
    return out


def _seeded_audio_encoder(folder: Path, dtype, device, base_seed: int):
    from flashtalk.weights.hubert import load_joyvasa_audio_encoder

    return load_joyvasa_audio_encoder(seeded_audio_weights(folder, base_seed), dtype=dtype, device=device)


def _audio_encoder(folder: Path, model: MotionGenerator, g, dtype, device, base_seed: int) -> dict[str, torch.Tensor]:
    from flashtalk.models.hubert import joyvasa_audio_features

    enc = _seeded_audio_encoder(folder, dtype, device, base_seed)
    out = joyvasa_audio_features(enc, _t(g["audio"], dtype, device), model.cfg.n_motions, intermediates=True)
    out["projected"] = out["projected"][:, :4]  # the golden keeps the first 4 frames
    out["audio_feat"] = model.audio_feature_map(out["hubert_resampled"])
    return out


def _pipeline(folder: Path, model: MotionGenerator, g, dtype, device, base_seed: int) -> dict[str, torch.Tensor]:
    from flashtalk.models.hubert import joyvasa_audio_features
    from flashtalk.models.joyvasa.pipeline import MotionTemplate, generate_motion, motion_to_renderer

    enc = _seeded_audio_encoder(folder, dtype, device, base_seed)
    template = MotionTemplate.from_dict({k[len("template_") :]: g[k] for k in g.files if k.startswith("template_")})
    audio = _t(g["audio"], dtype, device)
    cache: dict[bytes, torch.Tensor] = {}

    def features(win: torch.Tensor) -> torch.Tensor:  # both PE modes see the same windows: encode each once
        key = win.detach().cpu().numpy().tobytes()
        if key not in cache:
            cache[key] = joyvasa_audio_features(enc, win, model.cfg.n_motions)
        return cache[key]

    out = {}
    for mode in PE_MODES:
        model.denoising_net.pe_mode = mode
        coef = generate_motion(
            model,
            features,
            audio[None],
            cfg_scale=float(g["cfg_scale"]),
            x_T=_t(g["x_T"], dtype, device),
            noise=_t(g["z"], dtype, device),
        )[0]
        out[f"motion_coef_{mode}"] = coef
        for kind, alpha in (("raw", None), ("smooth", 0.01)):
            motion = motion_to_renderer(coef, template, ema_alpha=alpha)
            if kind == "raw":  # the EMA leaves exp alone: the golden stores raw_exp only
                out[f"raw_exp_{mode}"] = motion.exp[:, None]
            out[f"{kind}_R_{mode}"] = motion.R[:, None]
            out[f"{kind}_scale_{mode}"] = motion.scale[:, None]
            out[f"{kind}_t_{mode}"] = motion.t[:, None]
            for name in ("pitch", "yaw", "roll"):
                out[f"{kind}_{name}_{mode}"] = getattr(motion, name)[:, None, None]
    return out


def compute(
    folder, dtype: torch.dtype, device, base_seed: int, files: set[str], published_only: bool = False
) -> Iterator[tuple[str, dict]]:
    """Our outputs per gated file (one path each: `published_only` changes nothing here)."""
    folder = Path(folder)
    model = seeded_motion_generator(folder, dtype, device, base_seed)
    cases = {
        "denoiser_forward.npz": lambda g: _denoiser(model, g, dtype, device),
        "sampler_T50.npz": lambda g: _sampler_t50(model, g, dtype, device),
        "sampler_T5.npz": lambda g: _sampler_t5(model, g, dtype, device),
        "audio_encoder.npz": lambda g: _audio_encoder(folder, model, g, dtype, device, base_seed),
        "pipeline.npz": lambda g: _pipeline(folder, model, g, dtype, device, base_seed),
    }
    for file in sorted(files):
        if file not in cases:
            continue
        with np.load(folder / file) as g:
            yield file, cases[file](g)
