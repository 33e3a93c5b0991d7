"""The golden model outputs still match with the Triton kernels enabled (interpreter on CPU; on CUDA compiled,
`verify-golden --device cuda`): the warping network through dense_motion_input / deform_warp, and the motion
transformer through attention; on CUDA also the renderer's fast path with the fused warping tail (warp_tail).
On the CPU `--published-only`: the fused tail over the whole golden volume takes ~3 min under the interpreter
(run by hand: README); test_warp_tail.py checks the kernel at the golden size and weights at one depth, and
test_verify_golden.py the fast path's rows through its reference."""

from __future__ import annotations

import pytest

from flashtalk.cli import main
from flashtalk.kernels import last_choice


@pytest.mark.slow
@pytest.mark.parametrize(
    "family, only, ops",
    [
        ("liveportrait", "warping_module", ("dense_motion_input", "deform_warp")),
        ("joyvasa", "denoiser_forward", ("attention",)),
    ],
)
def test_verify_golden_with_triton_kernels(family, only, ops, capsys, kernel_device):
    from tests.conftest import golden_dir, triton_backend

    folder = golden_dir(family)
    published_only = kernel_device == "cpu"
    code = main(
        ["verify-golden", str(folder), "--kernels", "triton", "--only", only, "--device", kernel_device]
        + ["--published-only"] * published_only
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert "0 failed" in out and "kernels=triton" in out
    if family == "liveportrait":
        assert ("@fast+fused-tail" in out) != published_only, out
        ops += () if published_only else ("warp_tail",)
    for op in ops:  # the kernels really ran (no silent fallback to the reference)
        assert last_choice(op).backend == triton_backend(kernel_device), (op, last_choice(op))
