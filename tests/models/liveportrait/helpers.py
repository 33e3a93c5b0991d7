"""Golden-data helpers of the LivePortrait network tests: manifest entries and gates, networks with the golden seeded
weights (F and W cast first, so fp64 gets unrounded weights; M, G and the stitching MLPs from a float64 state cached
per module, dropped by conftest.py), channel-mean hooks and the golden check."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from flashtalk.models.liveportrait.appearance import AppearanceConfig, AppearanceFeatureExtractor
from flashtalk.models.liveportrait.renderer import build_network
from flashtalk.models.liveportrait.warping import WarpingConfig, WarpingNetwork
from flashtalk.weights.liveportrait import seeded_state_dict
from flashtalk.weights.seeded import seed_module
from tests.utils import mismatch_report

NETWORKS = {
    "appearance_feature_extractor": (AppearanceFeatureExtractor, AppearanceConfig),
    "warping_module": (WarpingNetwork, WarpingConfig),
}

FP64_ABS_GATE = 1e-9  # float64-stored golden arrays (dbg_chanmean_*) on our fp64 path

FP32_DBG_GATE = 1e-5  # dbg_chanmean_* on our fp32 path (diagnostics; the gated outputs use tolerances.json)

PRECISIONS = {"fp32": torch.float32, "fp64": torch.float64}


def manifest(folder: Path, network: str) -> dict:
    return json.loads((folder / "manifest.json").read_text())["networks"][network]


def gate(folder: Path, npz: str, array: str, precision: str) -> tuple[float, float]:
    for g in json.loads((folder / "tolerances.json").read_text())["gates"]:
        if g["file"] == npz and g["array"] == array:
            return g[precision]["atol"], g[precision]["rtol"]
    raise KeyError(f"no gate for {npz}:{array}")


def seeded(network: str, folder: Path, dtype: torch.dtype) -> torch.nn.Module:
    """Full-size network in `dtype` with the golden weights (cast first, so fp64 gets unrounded weights)."""
    cls, _ = NETWORKS[network]
    net = cls().to(dtype)
    base_seed = json.loads((folder / "golden.json").read_text())["base_seed"]
    seed_module(net, base_seed, manifest(folder, network)["weight_gain"])
    return net


def run_with_chanmeans(net: torch.nn.Module, names: list[str], *args):
    """net(*args) plus, per sub-module name, the mean of its output over batch and space (one per channel)."""
    means: dict[str, torch.Tensor] = {}

    def hook(name):
        return lambda _m, _i, out: means.__setitem__(name, out.detach().double().mean(dim=(0, *range(2, out.dim()))))

    handles = [net.get_submodule(n).register_forward_hook(hook(n)) for n in names]
    try:
        with torch.no_grad():
            out = net(*args)
    finally:
        for h in handles:
            h.remove()
    return out, means


def check_golden(
    folder: Path, npz: str, ours: dict[str, torch.Tensor], means: dict[str, torch.Tensor], ref, precision: str
):
    failures = []
    for array, value in ours.items():
        atol, rtol = gate(folder, npz, array, precision)
        expected = torch.from_numpy(ref[array]).double()
        limit = atol + rtol * expected.abs().max().item()
        report = mismatch_report(value, expected, limit, 0.0)
        if report:
            failures.append(f"{npz}:{array} ({precision}, limit {limit:.3g}): {report}")
    dbg_gate = FP64_ABS_GATE if precision == "fp64" else FP32_DBG_GATE
    for name, value in means.items():
        key = f"dbg_chanmean_{name}"
        assert ref[key].dtype == np.float64
        report = mismatch_report(value, torch.from_numpy(ref[key]), dbg_gate, 0.0)
        if report:
            failures.append(f"{npz}:{key} ({precision}): {report}")
    assert not failures, "\n".join(failures)


DTYPES = [pytest.param(torch.float32, id="fp32"), pytest.param(torch.float64, id="fp64")]


def _tol(dtype: torch.dtype, fp32: float = 1e-5) -> float:
    return fp32 if dtype == torch.float32 else 1e-9


def _load(folder, name: str, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    with np.load(folder / name) as npz:
        return {k: torch.from_numpy(npz[k]).to(dtype) for k in npz.files}


@functools.cache
def _seeded_state(folder, network: str) -> dict[str, torch.Tensor]:
    """float64 golden-rule weights, generated once per network for the whole module (M: 28 M, G: 55 M)."""
    return seeded_state_dict(network, json.loads((folder / "manifest.json").read_text()), 0)


def _seeded(folder, network: str, dtype: torch.dtype) -> torch.nn.Module:
    module = build_network(network).to(dtype)
    module.load_state_dict(_seeded_state(folder, network), strict=True)
    return module
