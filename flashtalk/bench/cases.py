"""What every benchmark case is made of, shared by the registry and the `*_cases` modules.

A `BenchCase` builds, for a `Setup` (device, dtype, preset, quick), a `Built`: providers (name -> a callable
`fn(i)` that runs iteration i on inputs[i % rotation], or a string saying why that provider cannot run),
the shape it runs at, and the work it does (FLOPs, bytes, frames) for throughput figures. The helpers below
(kernel modes, rotating inputs, seeded generators, the seeded networks) are the ones every case uses; this
module imports nothing else of `flashtalk.bench`, so each `*_cases` module imports it at module level.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

Provider = Callable[[int], object]
ASSETS = Path(__file__).resolve().parents[1] / "assets"
GROUPS = ("kernel", "stage", "renderer", "pipeline", "stream")
NO_COMPILE = "torch.compile is off (--quick, or over the suite's budget: inductor takes minutes; --compile forces it)"


@dataclass(frozen=True)
class Setup:
    device: str = "cpu"
    preset: str = "tiny"  # renderer / motion / audio preset of the model cases
    quick: bool = True
    compile: bool = True  # build torch.compile providers (else they are reported as skipped)
    rotation: int = 3  # input sets each case cycles through
    sessions: int = 2  # concurrent sessions of the aggregate streaming case
    dtype: torch.dtype | None = None  # kernel dtype override (attention / warp ops)

    @property
    def cuda(self) -> bool:
        return self.device.startswith("cuda")

    @classmethod
    def for_device(
        cls,
        device: str,
        *,
        quick: bool,
        compile: bool | None = None,
        sessions: int | None = None,
        dtype: torch.dtype | None = None,
    ) -> "Setup":
        cuda = device.startswith("cuda")
        if (
            compile is None
        ):  # inductor takes minutes (on two shared CPU cores, or compiling every GPU case): not in --quick
            compile = not quick
        return cls(
            device,
            "liveportrait" if cuda else "tiny",
            quick,
            compile,
            4 if cuda else 3,
            sessions or (8 if cuda else 2),
            dtype,
        )


@dataclass
class Built:
    providers: dict[str, Provider | str]
    shape: str
    dtype: str
    flops: float | None = None  # per call
    bytes: float | None = None  # unavoidable memory traffic per call
    frames: int | None = None  # frames produced per call (FPS figures)
    note: str = ""
    samples_key: str | None = None  # streaming cases: the provider returns latency samples (ms) itself
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class BenchCase:
    name: str
    group: str  # one of GROUPS
    build: Callable[[Setup], Built]
    quick: bool = True  # part of --quick
    gpu_only: bool = False


def dtype_name(dtype: torch.dtype) -> str:
    return {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.uint8: "uint8"}.get(
        dtype, str(dtype).removeprefix("torch.")
    )


def kernel_mode(mode: str, fn: Callable) -> Callable:
    """`fn` run with the kernels in `mode` ("auto": Triton on CUDA; "reference": the pure-PyTorch ops)."""
    from flashtalk.kernels import use_kernels

    def run(*args, **kwargs):
        with use_kernels(mode):
            return fn(*args, **kwargs)

    return run


def compiled(setup: Setup, fn: Callable) -> Callable | str:
    """torch.compile of a reference function, run with the kernels in reference mode; or why not."""
    return kernel_mode("reference", torch.compile(fn)) if setup.compile else NO_COMPILE


def rotating(inputs: list[tuple], fn: Callable) -> Provider:
    return lambda i: fn(*inputs[i % len(inputs)])


def seeded(setup: Setup, seed: int) -> torch.Generator:
    """A generator on the case's device, seeded."""
    return torch.Generator(device=setup.device).manual_seed(seed)


def tensor_bytes(*tensors: torch.Tensor) -> float:
    return float(sum(t.numel() * t.element_size() for t in tensors))


def kernel_providers(setup: Setup, op: Callable, ref: Callable, inputs: list[tuple]) -> dict[str, Provider | str]:
    """flashtalk / eager / compile of one op over rotating inputs."""
    comp = compiled(setup, ref)
    return {
        "flashtalk": rotating(inputs, kernel_mode("auto", op)),
        "eager": rotating(inputs, kernel_mode("reference", ref)),
        "compile": comp if isinstance(comp, str) else rotating(inputs, comp),
    }


@functools.lru_cache(maxsize=2)
def networks(preset: str, device: str):
    """Seeded networks of a preset (golden weight rule: not a face, same cost), on `device`, eval mode."""
    from flashtalk.weights.bundle import seeded_networks

    return seeded_networks(preset).to(torch.device(device))
