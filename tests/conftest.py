"""Shared fixtures. Kernel tests take the `kernel_device` fixture (or `on_kernel_device`, which also makes it
the default device): each runs once on the CPU under the Triton interpreter and once on CUDA with compiled
Triton (that copy carries the `gpu` marker and skips, with the reason, where no GPU is visible).
`TRITON_INTERPRET` is set for that one test only. `clips` and `raw_frames` (speech excerpts and the preview
engine's frames of one) serve the offline-rendering tests of tests/cli/ and tests/runtime/."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
# $FLASHTALK_GOLDEN: another golden folder, e.g. the subset `flashtalk lease prepare` carries to a lent GPU
GOLDEN = Path(os.environ["FLASHTALK_GOLDEN"]) if os.environ.get("FLASHTALK_GOLDEN") else SHARED / "golden"


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


def _triton_below(major: int, minor: int) -> bool:
    try:
        import triton
    except ImportError:
        return False
    return tuple(int(p) for p in triton.__version__.split(".")[:2]) < (major, minor)


INTERPRETER_BUG = (
    "triton < 3.7's interpreter fails here with recent numpy (TypeError: only 0-dimensional arrays can be "
    "converted to Python scalars, from int() of a 1-element array in triton/runtime/interpreter.py; fixed in "
    "later Triton): an interpreter bug, not one of the compiled kernels (CUDA copies of kernel tests never skip)"
)


def _interpreter_bug(item, exc: BaseException) -> bool:
    """The known triton < 3.7 interpreter failure (raised in triton/runtime/interpreter.py, possibly wrapped
    by Triton's InterpreterError or torch's opcheck) in a test on the interpreter: the CPU copy of a
    kernel_device test, or a test taking the `interpreter` fixture."""
    params = getattr(getattr(item, "callspec", None), "params", {})
    on_interpreter = params.get("kernel_device") == "cpu" or "interpreter" in getattr(item, "fixturenames", ())
    if not on_interpreter or not _triton_below(3, 7):
        return False
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, TypeError) and "only 0-dimensional arrays can be converted" in str(exc):
            tb = exc.__traceback__
            while tb is not None and tb.tb_next is not None:
                tb = tb.tb_next  # the frame that raised it
            name = tb.tb_frame.f_code.co_filename.replace(os.sep, "/") if tb is not None else ""
            return name.endswith("triton/runtime/interpreter.py")
        exc = exc.__cause__ or exc.__context__
    return False


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    """Two known absences become skips with their reason, nothing else: the triton < 3.7 interpreter bug (CPU
    copies only; CUDA copies never skip), and a golden file left out of a carried subset (FLASHTALK_GOLDEN)."""
    try:
        return (yield)
    except FileNotFoundError as exc:
        subset = GOLDEN / "SUBSET"
        if subset.is_file() and exc.filename and Path(exc.filename).resolve().is_relative_to(GOLDEN.resolve()):
            pytest.skip(f"{exc.filename} is not in the carried golden subset ({subset} lists what is)")
        raise
    except Exception as exc:
        if _interpreter_bug(item, exc):
            pytest.skip(INTERPRETER_BUG)
        raise


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
