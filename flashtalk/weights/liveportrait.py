"""LivePortrait checkpoints: read the published files unchanged, check them against our modules, and
convert a weights folder into one safetensors bundle.

Published layout under a weights folder (docs/specs/liveportrait.md §11):

    liveportrait/base_models/{appearance_feature_extractor,motion_extractor,warping_module,spade_generator}.pth
    liveportrait/retargeting_models/stitching_retargeting_module.pth

The four base files are plain state dicts; the stitching file is a dict of three state dicts
(`retarget_shoulder`, `retarget_mouth`, `retarget_eye`) whose keys carry a DDP `module.` prefix. We flatten
it to `retarget_shoulder.mlp.0.weight`, … (the keys of `StitchingRetargeting`). `.pth` files are read with
`checkpoint.safe_load` (torch.load(weights_only=True)) only, so no arbitrary object is ever unpickled.

Bundle: one safetensors file of `{network}.{key}` tensors, metadata {"format": "flashtalk-weights",
"version": "1", "networks": JSON list}. Other networks (JoyVASA, HuBERT) go into the same format under
their own names; `read_bundle` returns every network it finds.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from flashtalk.errors import FlashTalkError
from flashtalk.weights.checkpoint import check_keys, read_safetensors, safe_load, tensor_dict, write_safetensors
from flashtalk.weights.seeded import liveportrait_weights, seed_module

if TYPE_CHECKING:
    from flashtalk.models.liveportrait.renderer import Renderer, RendererConfig

# network name -> (published path relative to the weights folder, what it is)
NETWORKS: dict[str, tuple[str, str]] = {
    "appearance_feature_extractor": (
        "liveportrait/base_models/appearance_feature_extractor.pth",
        "appearance feature extractor (F)",
    ),
    "motion_extractor": ("liveportrait/base_models/motion_extractor.pth", "motion extractor (M)"),
    "warping_module": ("liveportrait/base_models/warping_module.pth", "warping module (W)"),
    "spade_generator": ("liveportrait/base_models/spade_generator.pth", "SPADE generator (G)"),
    "stitching_retargeting_module": (
        "liveportrait/retargeting_models/stitching_retargeting_module.pth",
        "stitching/retargeting module",
    ),
}
STITCHING_PARTS = ("retarget_shoulder", "retarget_mouth", "retarget_eye")
WEIGHT_GAIN = {"warping_module": math.sqrt(6)}  # golden rule: √6 for W, 1 for every other network
BUNDLE_FORMAT = "flashtalk-weights"
BUNDLE_VERSION = "1"
_OPTIONAL_LEAVES = ("*.num_batches_tracked", "num_batches_tracked")


def weight_gain(network: str) -> float:
    return WEIGHT_GAIN.get(network, 1.0)


def seeded_state_dict(network: str, manifest: dict, base_seed: int = 0) -> dict[str, torch.Tensor]:
    """The golden-rule weights of `network` from a LivePortrait manifest (its seed keys), keyed like our
    module's state dict (stitching keys get their sub-dict name in front). float64 / int64 tensors."""
    nets = manifest.get("networks", {})
    if network not in nets:
        raise FlashTalkError(f"manifest has no network {network!r} (has: {', '.join(nets)})")
    net = nets[network]
    if "sub_networks" in net:
        entries = [
            (f"{part}.{e['key']}", e["seed_key"], e["shape"])
            for part, sub in net["sub_networks"].items()
            for e in sub["entries"]
        ]
    else:
        entries = [(e["key"], e["seed_key"], e["shape"]) for e in net["entries"]]
    values = liveportrait_weights(((seed, tuple(shape)) for _, seed, shape in entries), base_seed, weight_gain(network))
    return {key: values[seed] for key, seed, _ in entries}


def guess_network(keys) -> str | None:
    """Which LivePortrait network a set of state-dict keys most likely belongs to, from tell-tale prefixes."""
    keys = list(keys)
    tells = {
        "motion_extractor": lambda k: k.startswith("detector."),
        "warping_module": lambda k: k.startswith("dense_motion_network."),
        "appearance_feature_extractor": lambda k: k.startswith("resblocks_3d."),
        "spade_generator": lambda k: k.startswith(("G_middle_", "up_0.")),
        "stitching_retargeting_module": lambda k: k.startswith(STITCHING_PARTS),
    }
    scores = {net: sum(map(tell, keys)) for net, tell in tells.items()}
    best = max(scores, key=scores.get)
    return best if scores[best] else None


def read_checkpoint(path: str | Path, network: str) -> dict[str, torch.Tensor]:
    """Read one published `.pth` file as our module's keys (the stitching file flattened and de-prefixed)."""
    path = Path(path)
    obj = safe_load(path, what=f"LivePortrait {NETWORKS[network][1]} checkpoint")
    if network != "stitching_retargeting_module":
        if isinstance(obj, dict) and set(obj) & set(STITCHING_PARTS):
            raise FlashTalkError(
                f"{path}: this looks like a stitching/retargeting checkpoint, not a {NETWORKS[network][1]} one"
            )
        return tensor_dict(obj, where=str(path))
    if not isinstance(obj, dict) or not set(STITCHING_PARTS) <= set(obj):
        found = list(obj)[:5] if isinstance(obj, dict) else type(obj).__name__
        guess = guess_network(obj) if isinstance(obj, dict) and all(isinstance(k, str) for k in obj) else None
        hint = f"; this looks like a {NETWORKS[guess][1]} checkpoint" if guess and guess != network else ""
        raise FlashTalkError(
            f"{path}: a stitching/retargeting checkpoint is a dict with {', '.join(STITCHING_PARTS)}; "
            f"found {found}{hint}"
        )
    state: dict[str, torch.Tensor] = {}
    for part in STITCHING_PARTS:
        for key, value in tensor_dict(obj[part], where=f"{path}[{part!r}]").items():
            state[f"{part}.{key.replace('module.', '')}"] = value
    return state


def check_state_dict(
    module: torch.nn.Module, state: dict[str, torch.Tensor], network: str, source: str
) -> dict[str, torch.Tensor]:
    """Return `state` ready for `module.load_state_dict(strict=True)`, or raise the toolkit's mismatch
    report (`check_keys`). A missing `num_batches_tracked` is filled from the module."""
    expected = module.state_dict()
    guess = guess_network(state)
    hint = f"this looks like a {NETWORKS[guess][1]} checkpoint" if guess and guess != network else None
    state = check_keys(
        expected,
        state,
        where=source,
        fits=NETWORKS.get(network, (None, network))[1],
        optional=_OPTIONAL_LEAVES,
        hint=hint,
    )
    return {**{k: v.clone() for k, v in expected.items() if k not in state}, **state}


def read_folder(folder: str | Path) -> dict[str, dict[str, torch.Tensor]]:
    """All five networks of a published LivePortrait weights folder -> {network: state dict}."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FlashTalkError(f"weights folder {folder} does not exist")
    missing = [rel for rel, _ in NETWORKS.values() if not (folder / rel).is_file()]
    if missing:
        raise FlashTalkError(f"{folder} is not a LivePortrait weights folder: missing {', '.join(missing)}")
    return {net: read_checkpoint(folder / rel, net) for net, (rel, _) in NETWORKS.items()}


def write_bundle(
    states: dict[str, dict[str, torch.Tensor]],
    path: str | Path,
    *,
    metadata: dict[str, str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Save {network: state dict} as one safetensors file of `{network}.{key}` tensors plus the bundle
    metadata (and `metadata`), atomically; an existing file is replaced only with `overwrite`."""
    flat = {f"{net}.{key}": t for net, sd in states.items() for key, t in sd.items()}
    meta = {
        "format": BUNDLE_FORMAT,
        "version": BUNDLE_VERSION,
        "networks": json.dumps(sorted(states)),
        **(metadata or {}),
    }
    return write_safetensors(flat, path, metadata=meta, overwrite=overwrite)


def convert_folder(folder: str | Path, path: str | Path) -> Path:
    """Published weights folder -> one safetensors bundle at `path`."""
    return write_bundle(read_folder(folder), path)


def read_bundle_with_metadata(path: str | Path) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, str]]:
    """A safetensors bundle -> ({network: state dict}, metadata); no pickle involved."""
    path = Path(path)
    tensors, meta = read_safetensors(path, what="FlashTalk weights bundle")
    if meta.get("format") != BUNDLE_FORMAT:
        raise FlashTalkError(
            f"{path}: not a FlashTalk weights bundle (metadata format "
            f"{meta.get('format')!r}, expected {BUNDLE_FORMAT!r})"
        )
    if meta.get("version") != BUNDLE_VERSION:
        raise FlashTalkError(
            f"{path}: bundle version {meta.get('version')!r} is not supported (expected {BUNDLE_VERSION})"
        )
    try:
        networks = json.loads(meta.get("networks", "[]"))
    except (ValueError, RecursionError) as exc:
        raise FlashTalkError(f"{path}: metadata 'networks' is not valid JSON: {str(exc)[:80]}") from None
    if not isinstance(networks, list) or not all(isinstance(n, str) for n in networks):
        raise FlashTalkError(f"{path}: metadata 'networks' must be a JSON list of network names")
    states: dict[str, dict[str, torch.Tensor]] = {net: {} for net in networks}
    for name, tensor in tensors.items():
        net, _, key = name.partition(".")
        if net not in states:
            raise FlashTalkError(f"{path}: tensor {name!r} belongs to no listed network ({', '.join(networks)})")
        states[net][key] = tensor
    return states, meta


def read_bundle(path: str | Path) -> dict[str, dict[str, torch.Tensor]]:
    """A safetensors bundle -> {network: state dict}; no pickle involved."""
    return read_bundle_with_metadata(path)[0]


def read_weights(path: str | Path) -> dict[str, dict[str, torch.Tensor]]:
    """A published weights folder or a safetensors bundle -> {network: state dict}."""
    path = Path(path)
    if path.is_dir():
        return read_folder(path)
    if path.suffix == ".safetensors":
        return read_bundle(path)
    raise FlashTalkError(f"{path}: expected a LivePortrait weights folder or a .safetensors bundle")


def load_renderer(path: str | Path, cfg: "RendererConfig | None" = None) -> "Renderer":
    """A `Renderer` from a published LivePortrait weights folder or a safetensors bundle."""
    from flashtalk.models.liveportrait.renderer import Renderer

    renderer = Renderer(cfg)
    states = read_weights(path)
    for name in NETWORKS:
        if name not in states:
            raise FlashTalkError(f"{path}: holds no {name} weights (has: {', '.join(states) or 'nothing'})")
        source = str(Path(path) / NETWORKS[name][0]) if Path(path).is_dir() else f"{path} [{name}]"
        module = getattr(renderer, name)
        module.load_state_dict(check_state_dict(module, states[name], name, source), strict=True)
    return renderer


def seeded_renderer(cfg: "RendererConfig | str | None" = None, base_seed: int = 0) -> "Renderer":
    """A `Renderer` with deterministic golden-rule weights (docs/specs/liveportrait.md §12.1): gain √6 for W,
    1 elsewhere; any preset."""
    from flashtalk.models.liveportrait.renderer import Renderer, RendererConfig

    cfg = RendererConfig.from_name(cfg) if isinstance(cfg, str) else cfg
    renderer = Renderer(cfg)
    for name in NETWORKS:
        seed_module(getattr(renderer, name), base_seed, weight_gain(name))
    return renderer
