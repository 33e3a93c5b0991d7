"""Device recognition (`flashtalk.profiling.devices`): GPU names and SM counts to their peak figures; an unknown device
(or SM count) has none."""

from __future__ import annotations

import pytest

from flashtalk.profiling.devices import lookup


@pytest.mark.parametrize(
    "name, sms, expected",
    [
        ("NVIDIA H100 80GB HBM3", 132, "NVIDIA H100 SXM"),
        ("NVIDIA H100 PCIe", 114, "NVIDIA H100 PCIe"),
        ("NVIDIA H100 NVL", 132, "NVIDIA H100 NVL"),
        ("NVIDIA H200", 132, "NVIDIA H200"),
        ("NVIDIA A100-SXM4-80GB", 108, "NVIDIA A100"),
        ("NVIDIA A10", 72, "NVIDIA A10"),
        ("NVIDIA L4", 58, "NVIDIA L4"),
        ("NVIDIA L40S", 142, "NVIDIA L40S"),
        ("NVIDIA GeForce RTX 4090", 128, "NVIDIA GeForce RTX 4090"),
    ],
)
def test_device_lookup(name, sms, expected):
    peak = lookup(name, sms)
    assert peak is not None and peak.name == expected
    assert peak.tflops("bf16") > peak.tflops("fp32") > 0 and peak.mem_gbps > 0


def test_unknown_device_has_no_peak():
    assert lookup("Some Future GPU", 200) is None
    assert lookup("NVIDIA H100 80GB HBM3", 100) is None  # an H100 with an SM count we do not know
