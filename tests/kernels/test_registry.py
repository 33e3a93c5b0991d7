"""The implementation registry and the one dispatch path: register / resolve / use_impl / FLASHTALK_KERNELS,
refusals, contract checks on outputs, entry points (a broken one is listed with its error), the contracts on
the docs page, and the conformance runner on a right and a wrong implementation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from flashtalk.errors import FlashTalkError
from flashtalk.kernels import OPS, Unsupported, last_choice, load_op, register, registry, use_impl
from flashtalk.kernels.attention import attention, attention_ref
from flashtalk.kernels.conformance import verify_op
from flashtalk.kernels.warp2d import warp2d_ref

DOCS = Path(__file__).resolve().parents[2] / "docs" / "kernels.md"


def _qkv():
    return torch.randn(1, 2, 5, 16), torch.randn(1, 2, 7, 16), torch.randn(1, 2, 7, 16)


def test_registered_impl_runs_through_the_op_and_says_so():
    calls = []

    def mine(q, k, v, **kw):
        calls.append(kw)
        return attention_ref(q, k, v, **kw)

    register("attention", "test-mine", mine)
    q, k, v = _qkv()
    with use_impl("attention", "test-mine") as impl:
        out = attention(q, k, v, causal=True)
        assert last_choice("attention").impl == "test-mine" and impl.calls == 1
    assert calls == [dict(causal=True)]  # the call's own arguments, as given
    torch.testing.assert_close(out, attention_ref(q, k, v, causal=True), rtol=0, atol=0)
    attention(q, k, v)
    assert last_choice("attention").impl == "flashtalk"


def test_environment_selects_and_a_typo_is_named(monkeypatch):
    q, k, v = _qkv()
    monkeypatch.setenv("FLASHTALK_KERNELS", "reference,attention=reference")
    attention(q, k, v)
    assert last_choice("attention").impl == "reference"
    assert registry.in_use()["attention"] == "reference" and registry.in_use()["warp2d"] == "flashtalk"
    monkeypatch.setenv("FLASHTALK_KERNELS", "attention=nope")
    with pytest.raises(FlashTalkError, match="no implementation named 'nope'"):
        registry.check_environment()
    monkeypatch.setenv("FLASHTALK_KERNELS", "attention=no_such_module:fn")
    with pytest.raises(FlashTalkError, match="cannot import no_such_module:fn"):
        attention(q, k, v)


def test_refusal_runs_the_reference_with_the_reason():
    def picky(q, k, v, **kw):
        raise Unsupported("only D=64")

    register("attention", "test-picky", picky)
    q, k, v = _qkv()
    with use_impl("attention", "test-picky"):
        out = attention(q, k, v)
    choice = last_choice("attention")
    assert choice.backend == "reference" and "only D=64" in choice.reason and choice.impl == "test-picky"
    torch.testing.assert_close(out, attention_ref(q, k, v), rtol=0, atol=0)


def test_output_against_the_contract_and_bad_inputs_before_the_call():
    register("attention", "test-short", lambda q, k, v, **kw: q[:, :, :-1])
    q, k, v = _qkv()
    with use_impl("attention", "test-short"):
        with pytest.raises(FlashTalkError, match=r"test-short: the output is float32 \[1, 2, 4, 16\], the contract"):
            attention(q, k, v)
        with pytest.raises(FlashTalkError, match="shapes disagree"):  # our input check runs first
            attention(q, k[:, :1], v)


def test_module_function_and_unknown_names():
    impl = registry.resolve("warp2d", "flashtalk.kernels.warp2d:warp2d_ref")
    assert impl.fn is warp2d_ref and impl.origin == "import"
    with pytest.raises(FlashTalkError, match="unknown kernel op 'nope'"):
        registry.resolve("nope", "x")
    with pytest.raises(FlashTalkError, match=r"expected OP=IMPL"):
        registry.parse_specs(["attention"])
    assert registry.parse_specs(["attention=a,b"], several=True) == [("attention", "a"), ("attention", "b")]


def test_entry_points_listed_and_a_broken_one_named(tmp_path, monkeypatch):
    dist = tmp_path / "ft_test_eps-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ft-test-eps\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[flashtalk.kernels]\nwarp2d.fine = flashtalk.kernels.warp2d:warp2d_ref\n"
        "attention.broken = no_such_module_xyz:attention\nnot_an_op.x = a:b\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "_entry_points", None)
    impls = {(i.op, i.name): i for i in registry.implementations()}
    assert impls[("warp2d", "fine")].fn is warp2d_ref and impls[("warp2d", "fine")].package == "ft-test-eps"
    assert "no_such_module_xyz" in impls[("attention", "broken")].error
    assert "not OP.NAME" in impls[("not_an_op", "x")].error
    assert ("attention", "flashtalk") in impls and ("attention", "reference") in impls
    with pytest.raises(FlashTalkError, match="entry point no_such_module_xyz:attention is broken"):
        registry.resolve("attention", "broken")
    monkeypatch.setattr(registry, "_entry_points", None)


def test_every_contract_is_on_the_docs_page():
    text = DOCS.read_text()
    for op in OPS:
        assert load_op(op).contract.markdown() in text, f"docs/kernels.md lacks the contract of {op}"


def test_conformance_passes_the_reference_and_names_a_wrong_answer():
    rows = verify_op(registry.resolve("warp2d", "reference"))
    assert rows and all(r.passed for r in rows), [r for r in rows if not r.passed]
    register("warp2d", "test-flipped", lambda image, grid, **kw: warp2d_ref(image, grid.flip(1), **kw))
    rows = verify_op(registry.resolve("warp2d", "test-flipped"), timeout=10)
    bad = [r for r in rows if not r.passed]
    assert bad and all("max error" in r.note and r.max_error > r.bound for r in bad)
