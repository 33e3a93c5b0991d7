"""`flashtalk info --json`: every kernel op listed, each with the reason for its backend."""

from __future__ import annotations

import json

import torch

from flashtalk.cli import main


def test_info_lists_every_op(capsys):
    assert main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    from flashtalk.kernels import OPS

    assert set(info["ops"]) == set(OPS)
    assert info["torch"] == torch.__version__
    assert all(v["reason"] for v in info["ops"].values())
