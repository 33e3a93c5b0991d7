"""The one tolerance table of the kernel ops, and the accuracy rule every implementation is held to (our
kernel tests and `flashtalk kernels verify` use the same table and rule).

Rule "dtype" (float outputs): the implementation's max abs error against the op's reference computed in
fp64 (from the same rounded inputs) must be at most

    2 × (the reference's own max abs error when run in the inputs' dtype) + atol[dtype] + rtol[dtype] · max|expected|

i.e. at most about twice PyTorch's own error in that dtype, plus the table's slack. Rule "uint8" (8-bit
outputs, where one rounding at an exact .5 may differ): at most 1 level apart from the reference, on at most
0.1% of the values. Rule "exact": equal to the reference, value for value.
"""

from __future__ import annotations

import torch

# (atol, rtol) for comparing a kernel's output with an fp64 reference of the same math, per input dtype.
TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    torch.float64: (1e-10, 1e-10),
    torch.float32: (1e-5, 1e-5),
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (1.6e-2, 1.6e-2),
}
UINT8_LEVELS, UINT8_SHARE = 1, 1e-3

RULES = {
    "dtype": "max abs error vs the fp64 reference <= 2 x the reference's own error in the input dtype "
    "+ atol + rtol x max|expected|, (atol, rtol) = "
    + ", ".join(f"{str(d).removeprefix('torch.')} ({a:g}, {r:g})" for d, (a, r) in TOLERANCES.items()),
    "uint8": f"at most {UINT8_LEVELS} level from the reference, on at most {UINT8_SHARE:.1%} of the values",
    "exact": "equal to the reference, value for value",
}


def dtype_bound(dtype: torch.dtype, reference_error: float, peak: float) -> float:
    """The "dtype" rule's bound on the max abs error, for inputs of `dtype`."""
    atol, rtol = TOLERANCES.get(dtype, TOLERANCES[torch.float32])
    return 2 * reference_error + atol + rtol * peak
