"""Package basics: lean import, kernel dispatch rules, `flashtalk info`, the seeded-weight rule."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from flashtalk.cli import main
from flashtalk.errors import FlashTalkError
from flashtalk.kernels import dispatch
from flashtalk.weights.seeded import liveportrait_weights, seed_module


def test_import_is_lean():
    code = (
        "import sys, flashtalk, flashtalk.kernels, flashtalk.cli\n"
        "bad = [m for m in ('triton', 'torch', 'numpy') if m in sys.modules]\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    # flashtalk.kernels imports torch for the dispatch types, but never triton; bare flashtalk imports neither.
    assert "triton" not in out
    out = subprocess.run(
        [sys.executable, "-c", "import sys, flashtalk; print('torch' in sys.modules)"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert out == "False"


def test_python_dash_m_runs_cli():
    proc = subprocess.run([sys.executable, "-m", "flashtalk", "--version"], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.startswith("flashtalk ")


def test_dispatch_modes(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setenv("FLASHTALK_KERNELS", "auto")
    c = dispatch.choose("attention", "cpu")
    assert c.backend == "reference" and "CUDA" in c.reason
    with dispatch.use_kernels("reference"):
        assert dispatch.choose("attention", "cuda").backend == "reference"
    with dispatch.use_kernels("triton"), pytest.raises(FlashTalkError, match="TRITON_INTERPRET"):
        dispatch.choose("attention", "cpu")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with dispatch.use_kernels("triton"):
        assert dispatch.choose("attention", "cpu").backend == "triton-interpreter"
        c = dispatch.choose("attention", "cpu", unsupported="head dim 80")
        assert c.backend == "reference" and "head dim 80" in c.reason
        assert dispatch.last_choice("attention") == c
    monkeypatch.setenv("FLASHTALK_KERNELS", "bogus")
    with pytest.raises(FlashTalkError, match="bogus"):
        dispatch.mode()


def test_info_lists_every_op(capsys):
    assert main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    from flashtalk.kernels import OPS

    assert set(info["ops"]) == set(OPS)
    assert info["torch"] == torch.__version__
    assert all(v["reason"] for v in info["ops"].values())


def test_unknown_command_fails(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["no-such-command"])
    assert exc.value.code == 2


def test_seeded_rule_matches_weights_check(lp_golden):
    """The weight rule against the golden folder's published checksums (sum, sum of squares, first, last)."""
    manifest = json.loads((lp_golden / "manifest.json").read_text())
    check = json.loads((lp_golden / "weights_check.json").read_text())
    for net, info in manifest["networks"].items():
        subs = info.get("sub_networks", {"": info})
        weights = {}
        for sub in subs.values():
            weights.update(
                liveportrait_weights([(e["seed_key"], e["shape"]) for e in sub["entries"]], 0, info["weight_gain"])
            )
        for key, (s, ss, first, last) in check["networks"][net].items():
            t = weights[key].double().flatten()
            got = (t.sum().item(), (t * t).sum().item(), t[0].item(), t[-1].item())
            assert got == pytest.approx((s, ss, first, last), rel=1e-9, abs=1e-12), key


def test_seed_module_is_deterministic_and_keyed():
    a, b = torch.nn.Linear(7, 5), torch.nn.Linear(7, 5)
    seed_module(a, base_seed=3)
    seed_module(b, base_seed=3)
    assert torch.equal(a.weight, b.weight)
    seed_module(b, base_seed=4)
    assert not torch.equal(a.weight, b.weight)
    assert a.weight.abs().max() <= 1 / 7**0.5 + 1e-7


def test_joyvasa_categories_match_manifest(jv_golden):
    from flashtalk.weights.seeded import joyvasa_category, joyvasa_weights

    manifest = json.loads((jv_golden / "manifest.json").read_text())
    for e in manifest["entries"]:
        assert joyvasa_category(e["key"], tuple(e["shape"])) == e["category"], e["key"]
    w = joyvasa_weights([(e["key"], e["shape"], e["category"]) for e in manifest["entries"]])
    assert "denoising_net.TE.pe" not in w
    assert w["start_audio_feat"].abs().max() <= 1 and w["start_audio_feat"].abs().max() > 0.9


def test_load_op_returns_each_op_and_its_reference():
    import importlib

    from flashtalk import kernels

    for op, module in kernels.OPS.items():
        mod = importlib.import_module(module)
        assert kernels.load_op(op) is getattr(mod, op), op
        assert kernels.load_op(op, reference=True) is getattr(mod, f"{op}_ref"), op
    with pytest.raises(KeyError, match="unknown kernel op 'nope'"):
        kernels.load_op("nope")


def test_jit_functions_pick_interpreter_or_compiler_per_launch(monkeypatch):
    """The kernel modules are imported once; TRITON_INTERPRET decides at each launch (so per test)."""
    pytest.importorskip("triton")
    from flashtalk.kernels.warp2d import _launch, warp2d_ref

    image = torch.randn(1, 2, 5, 6)
    grid = torch.rand(1, 3, 4, 2) * 2 - 1
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    out = _launch(image, grid, torch.full((1, 2, 3, 4), float("nan")), "zeros")
    assert (out - warp2d_ref(image, grid)).abs().max() < 1e-5
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # the compiled path: CPU tensors cannot run there
    with pytest.raises(Exception) as info:
        _launch(image, grid, torch.empty(1, 2, 3, 4), "zeros")
    assert "interpret" not in type(info.value).__name__.lower()
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # and back, in the same process
    assert torch.equal(_launch(image, grid, torch.empty(1, 2, 3, 4), "zeros"), out)
