"""The seeded-weight rule (`flashtalk.weights.seeded`) against the golden folders' published checksums and categories;
`seed_module` is deterministic and keyed by its base seed."""

from __future__ import annotations

import json

import pytest
import torch

from flashtalk.weights.seeded import liveportrait_weights, seed_module


@pytest.mark.slow
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
