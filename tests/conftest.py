"""Shared fixtures. Kernel tests run under the Triton interpreter on CPU: set it before anything imports
a kernel module (triton decides interpreter vs compiler when a kernel is decorated)."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("TRITON_INTERPRET", "0" if os.environ.get("FLASHTALK_TEST_DEVICE") == "cuda" else "1")

import pytest  # noqa: E402
import torch  # noqa: E402

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
