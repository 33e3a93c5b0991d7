"""The golden model outputs still match with the Triton kernels enabled (interpreter on CPU; on CUDA compiled,
`verify-golden --device cuda`): the warping network through dense_motion_input / deform_warp, and on the
renderer's fast path through the fused tail (warp_tail); the motion transformer through attention."""

from __future__ import annotations

import re

import pytest

from flashtalk.cli import main
from flashtalk.kernels import last_choice


@pytest.mark.slow
@pytest.mark.parametrize(
    "family, only, ops",
    [("liveportrait", "warping_module", ("dense_motion_input", "deform_warp", "warp_tail")), ("joyvasa", "denoiser_forward", ("attention",))],
)
def test_verify_golden_with_triton_kernels(family, only, ops, capsys, kernel_device):
    from tests.conftest import golden_dir, triton_backend

    folder = golden_dir(family)
    code = main(["verify-golden", str(folder), "--kernels", "triton", "--only", only, "--device", kernel_device])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "0 failed" in out and "kernels=triton" in out
    if family == "liveportrait":  # the fast path's rows are there and gated
        assert re.search(r"^warping_module.npz:out_out@fast\+fused-tail\s.*\sok$", out, re.M), out
    for op in ops:  # the kernels really ran (no silent fallback to the reference)
        assert last_choice(op).backend == triton_backend(kernel_device), (op, last_choice(op))
