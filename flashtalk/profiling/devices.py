"""Peak throughput of the GPUs we report against, for "% of peak" figures.

Figures are the vendors' datasheet numbers for dense math (no 2:4 sparsity) at boost clock: tensor-core
bf16/fp16 with fp32 accumulation, tf32, plain fp32 (CUDA cores), and HBM/GDDR bandwidth. A device is
recognised from its name and SM count (the H100 SXM and PCIe differ in both); an unknown device gets no
peak rather than a guessed one.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DevicePeak:
    name: str
    sm_count: int
    bf16_tflops: float  # dense tensor-core, fp32 accumulate (fp16 is the same on all listed parts)
    tf32_tflops: float
    fp32_tflops: float  # CUDA cores
    mem_gbps: float  # GB/s (1e9 bytes)

    def tflops(self, dtype: str) -> float:
        return {"bf16": self.bf16_tflops, "fp16": self.bf16_tflops, "tf32": self.tf32_tflops, "fp32": self.fp32_tflops}[
            dtype
        ]


# (substring that must appear in the device name, SM count or None for any) -> peak
PEAKS: list[tuple[str, int | None, DevicePeak]] = [
    ("H200", None, DevicePeak("NVIDIA H200", 132, 989.4, 494.7, 66.9, 4800.0)),
    ("H100 NVL", None, DevicePeak("NVIDIA H100 NVL", 132, 835.0, 417.5, 60.0, 3900.0)),
    ("H100 PCIe", None, DevicePeak("NVIDIA H100 PCIe", 114, 756.5, 378.0, 51.2, 2000.0)),
    ("H100", 114, DevicePeak("NVIDIA H100 PCIe", 114, 756.5, 378.0, 51.2, 2000.0)),
    ("H100", 132, DevicePeak("NVIDIA H100 SXM", 132, 989.4, 494.7, 66.9, 3350.0)),
    ("A100", None, DevicePeak("NVIDIA A100", 108, 312.0, 156.0, 19.5, 2039.0)),
    ("L40S", None, DevicePeak("NVIDIA L40S", 142, 362.1, 183.0, 91.6, 864.0)),
    ("L4", None, DevicePeak("NVIDIA L4", 58, 121.0, 60.0, 30.3, 300.0)),
    ("RTX 4090", None, DevicePeak("NVIDIA GeForce RTX 4090", 128, 165.2, 82.6, 82.6, 1008.0)),
    ("A10", None, DevicePeak("NVIDIA A10", 72, 125.0, 62.5, 31.2, 600.0)),
]


def lookup(name: str, sm_count: int | None = None) -> DevicePeak | None:
    """The peak entry for a device name (as torch.cuda.get_device_name reports it) and SM count."""
    for key, sms, peak in PEAKS:
        if key in name and (sms is None or sms == sm_count):
            if key == "A10" and "A100" in name:
                continue
            if key == "L4" and "L40" in name:
                continue
            return peak
    return None


def current(device: int | None = None) -> DevicePeak | None:
    """The peak entry of the current CUDA device, or None on CPU / an unknown GPU."""
    import torch

    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(device if device is not None else torch.cuda.current_device())
    return lookup(props.name, props.multi_processor_count)
