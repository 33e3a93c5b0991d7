"""Shared fixtures. Kernel tests take the `kernel_device` fixture (or `on_kernel_device`, which also makes it
the default device): each runs once on the CPU under the Triton interpreter and once on CUDA with compiled
Triton (that copy carries the `gpu` marker and skips, with the reason, where no GPU is visible).
`TRITON_INTERPRET` is set for that one test only. `clips` and `raw_frames` (speech excerpts and the preview
engine's frames of one) serve the offline-rendering tests of tests/cli/ and tests/runtime/."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
GOLDEN = SHARED / "golden"


def golden_dir(family: str) -> Path:
    """The golden folder of `family`, or a skip naming why it is absent (a user's clone has no ../shared)."""
    path = GOLDEN / family
    if not (path / "golden.json").is_file():
        pytest.skip(f"golden data not found at {path} (it lives in the project's shared folder beside the repo)")
    return path


@pytest.fixture
def lp_golden() -> Path:
    return golden_dir("liveportrait")


@pytest.fixture
def jv_golden() -> Path:
    return golden_dir("joyvasa")


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


def devices() -> list[str]:
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


GPU = torch.cuda.is_available()
NO_GPU = "needs a CUDA device and none is visible (run `pytest -m gpu` on a GPU machine)"


def pytest_collection_modifyitems(config, items):
    """Tests marked `gpu` skip, with the reason, where CUDA is not available."""
    if GPU:
        return
    skip = pytest.mark.skip(reason=NO_GPU)
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def kernel_device(request, monkeypatch) -> str:
    """Where this test's Triton kernels run: "cpu" under the interpreter (TRITON_INTERPRET=1), or "cuda"
    compiled (TRITON_INTERPRET=0)."""
    monkeypatch.setenv("TRITON_INTERPRET", "1" if request.param == "cpu" else "0")
    return request.param


@pytest.fixture
def on_kernel_device(kernel_device):
    """`kernel_device`, with the tensors the test creates without a device landing there (kernel-level test
    files; model-level tests pass the device explicitly, as production code does)."""
    if kernel_device == "cpu":  # already the default: no device mode pushed
        yield kernel_device
        return
    torch.set_default_device(kernel_device)
    try:
        yield kernel_device
    finally:
        torch.set_default_device(None)


@pytest.fixture
def interpreter(monkeypatch) -> None:
    """A CPU test that runs Triton kernels: the interpreter for this test only."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")


def triton_backend(device: str) -> str:
    """The dispatch backend a kernel reports on `device` in a `kernel_device` test."""
    return "triton-interpreter" if device == "cpu" else "triton"


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    """2 s and 0.4 s WAV excerpts of the bundled speech (16 kHz), and a 44.1-kHz stereo 0.4 s one."""
    import soundfile as sf

    from flashtalk.cli.animate import demo_assets
    from flashtalk.io.audio import load_audio

    folder = tmp_path_factory.mktemp("clips")
    speech = load_audio(demo_assets()[1]).samples
    out = {}
    for name, start, seconds in (("2s", 0.0, 2.0), ("short", 1.0, 0.4)):
        path = folder / f"{name}.wav"
        sf.write(path, speech[int(start * 16000) : int((start + seconds) * 16000)], 16000)
        out[name] = path
    return out


@pytest.fixture(scope="module")
def raw_frames(clips) -> np.ndarray:
    """Frames of the short clip (seed 0) straight from the engine, before encoding."""
    from flashtalk.cli.animate import demo_assets
    from flashtalk.runtime.engine import Engine

    clip = Engine.preview("cpu").prepare(demo_assets()[0], clips["short"], seed=0, watermark=False)
    assert clip.num_frames == 10
    return np.concatenate(list(clip.batches(4)))
